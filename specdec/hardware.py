"""``--dtype auto``: bfloat16 only where the hardware runs it natively, float32 otherwise.

On a CPU without native bfloat16 (no AVX512-BF16, no AMX), torch emulates
bfloat16 matmuls: a verify pass over k+1 tokens then costs several one-token
steps (5.6 against 2 in float32 over 9 tokens, measured on an AVX2 machine),
which turns speculation into a loss. So ``auto`` picks bfloat16 on a GPU that
supports it and on CPUs with ``avx512_bf16`` or ``amx_bf16``; float32 elsewhere.

:func:`choose_dtype` is pure (the facts come in as arguments, so tests fake
them); :func:`auto_dtype` reads the facts from this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DtypeChoice", "auto_dtype", "choose_dtype", "cpu_flags"]

#: cpuinfo flags that mean the CPU has native bfloat16 matmul instructions.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # "bfloat16" or "float32"
    reason: str  # one line for ``--verbose``


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def choose_dtype(
    device_type: str,
    *,
    cpu_capability: str = "",
    flags: frozenset[str] = frozenset(),
    torch_native_bf16: bool = False,
    cuda_bf16: bool = False,
) -> DtypeChoice:
    """The ``auto`` dtype for a device, from facts about it.

    ``cpu_capability``: ``torch.backends.cpu.get_cpu_capability()`` (e.g.
    ``AVX2``, ``AVX512``); ``flags``: cpuinfo flags; ``torch_native_bf16``:
    torch's own AVX512-BF16/AMX check; ``cuda_bf16``:
    ``torch.cuda.is_bf16_supported()``.
    """
    if device_type == "cuda":
        if cuda_bf16:
            return DtypeChoice("bfloat16", "auto: a CUDA GPU with bfloat16 support")
        return DtypeChoice("float32", "auto: this CUDA GPU does not support bfloat16")
    if device_type != "cpu":
        return DtypeChoice("float32", f"auto: float32 on {device_type}")
    native = sorted(flags.intersection(NATIVE_BF16_FLAGS))
    if native or torch_native_bf16:
        found = ", ".join(native) or "torch reports AVX512-BF16/AMX"
        return DtypeChoice("bfloat16", f"auto: CPU capability {cpu_capability or '?'} with native bfloat16 ({found})")
    return DtypeChoice(
        "float32",
        f"auto: CPU capability {cpu_capability or '?'} without native bfloat16 (no avx512_bf16/amx_bf16), "
        "where bfloat16 matmuls are emulated and a verify pass costs several one-token steps",
    )


def auto_dtype(device_type: str) -> DtypeChoice:
    """:func:`choose_dtype` with the facts read from this machine (imports torch)."""
    import torch

    if device_type == "cuda":
        return choose_dtype("cuda", cuda_bf16=bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()))
    native = False
    try:  # torch's own check of the instructions its kernels use; private, so guarded
        native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        pass
    return choose_dtype(
        device_type,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        flags=cpu_flags(),
        torch_native_bf16=native,
    )
