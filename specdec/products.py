"""Which kernel multiplies by the model's linear weights in an eager pass on a CPU.

Most of a decoder's pass is its linear products. In eager mode torch runs them
with ``F.linear`` on the weights as they lie: MKL's SGEMM for float32 (where
torch has MKL), oneDNN re-laying the weight out on every call for bfloat16.
oneDNN can instead take a weight packed once into its own blocked layout
(``mkldnn._reorder_linear_weight``) and multiply by it directly
(``mkldnn._linear_pointwise``), which is what inductor's frozen graphs call.
Which is faster depends on the CPU, the dtype and the rows of the product, and
by a lot. One AMD EPYC (AVX-512, one thread), SmolLM2-135M's products in
float32: torch 113 ms at 8 rows and 299 at 72, packed oneDNN 55 and 199; in
bfloat16 one row costs 70 ms through torch and 28 packed. On the Intel Xeon the
project ran on before, MKL's small-row products were the flat ones.

:class:`LinearProducts` owns the packed weights of one model and the choice:

- ``"torch"``: ``F.linear`` as the model has it; nothing packed;
- ``"onednn"``: every ``nn.Linear`` of the model multiplies by its packed
  weight in our passes (refused with the reason where it cannot: not a CPU,
  a dtype oneDNN does not pack (float32 and bfloat16 only), no oneDNN in this
  torch, no ``nn.Linear`` layers);
- ``"auto"`` (the default of :class:`~specdec.batch_target.BatchedTarget`):
  measured on this machine, per size of pass (1, 16 and 64 tokens: a pass
  takes the nearest), with the model's own weights, once per machine, dtype,
  thread count, torch version and weight shapes (kept in a small JSON file
  under :func:`specdec.models.cache_dir`). "torch" without measuring where
  oneDNN cannot run, where the model's products are too small to matter
  (under 4 MiB of linear weights: test-sized models), or where a packed copy
  would not fit in half the memory available.

The packed weights are a second copy (as many bytes as the linear weights):
the model's own stay as they are, since the model may be used elsewhere.
:meth:`LinearProducts.scope` is the only place the packed products are used:
for the length of one of our passes, each ``nn.Linear`` of the model gets an
instance ``forward`` that multiplies by its packed weight; the attribute is
removed when the pass ends, also when it raises. A thread running the model
at that very moment would run the packed products too (the same values up to
float rounding, as any change of kernel gives). A torch function mode would
avoid that, but it intercepts every torch call of the pass (about 2,300 in one
SmolLM2 pass, ~10% of a one-token pass on the machine above); the swap costs
two attribute writes per layer.

Values: the same products summed in another order, so float32 logits differ
from torch's in the last bits (1e-4 absolute on SmolLM2's logits), like any
other kernel choice (MKL itself changes order with the rows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch

from .cpu_gemm import median_seconds
from .errors import InvalidArgumentError, UnsupportedModelError

__all__ = ["PRODUCTS", "Products", "LinearProducts", "check_products", "onednn_refusal"]

Products = Literal["auto", "torch", "onednn"]
PRODUCTS: tuple[str, ...] = ("auto", "torch", "onednn")

_log = logging.getLogger(__name__)

#: Pass sizes (tokens) measured by "auto"; a pass takes the library of the nearest (in log scale).
BUCKETS = (1, 16, 64)
#: "auto" leaves models with fewer bytes of linear weights on torch without measuring.
MIN_AUTO_BYTES = 4 << 20
#: The rows oneDNN is told to expect when it packs (it picks a blocked layout for them; any rows run).
PACK_ROWS = 16
_PACKABLE = (torch.float32, torch.bfloat16)
_SHARED: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, LinearProducts]] = weakref.WeakKeyDictionary()


def check_products(choice: object) -> None:
    """Raise :class:`~specdec.errors.InvalidArgumentError` unless ``choice`` is one of :data:`PRODUCTS`."""
    if choice not in PRODUCTS:
        raise InvalidArgumentError(f"products must be one of {', '.join(map(repr, PRODUCTS))}, got {choice!r}")


def _plain_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The model's ``nn.Linear`` layers whose forward is nn.Linear's own (not a quantized or adapter subclass's)."""
    return [
        m for m in model.modules()
        if isinstance(m, torch.nn.Linear) and type(m).forward is torch.nn.Linear.forward and "forward" not in m.__dict__
    ]


def onednn_refusal(model: torch.nn.Module) -> str | None:
    """Why packed oneDNN products cannot run on ``model`` (``None``: they can)."""
    linears = _plain_linears(model)
    if not linears:
        return "the model has no plain nn.Linear layers"
    weight = linears[0].weight
    if weight.device.type != "cpu":
        return f"packed oneDNN products run on the CPU; the model is on {weight.device}"
    if not torch._C._has_mkldnn:
        return "this torch is built without oneDNN (mkldnn)"
    if not (hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return "this torch lacks mkldnn._reorder_linear_weight / _linear_pointwise"
    dtypes = {m.weight.dtype for m in linears}
    if not dtypes <= set(_PACKABLE):
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return f"oneDNN packs float32 and bfloat16 weights; the model's linear weights are {names}"
    return None


def _bucket(tokens: int) -> int:
    """The measured pass size nearest to ``tokens`` in log scale (1, 16 or 64)."""
    if tokens <= 4:
        return 1
    if tokens <= 32:
        return 16
    return 64


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class LinearProducts:
    """The products of one model's ``nn.Linear`` layers in eager passes (see the module docstring).

    ``choice``: ``"auto"``, ``"torch"`` or ``"onednn"``. ``cache``: the folder
    for "auto"'s measurements (``None``: :func:`specdec.models.cache_dir` /
    ``products``). :attr:`libraries` maps each measured pass size to its
    library, :attr:`times` holds the measured seconds, :attr:`reason` says why
    the choice is what it is.
    """

    def __init__(self, model: torch.nn.Module, choice: str = "auto", *, cache: Path | None = None) -> None:
        check_products(choice)
        self.choice = choice
        self._linears = _plain_linears(model)
        self._packed: dict[int, torch.Tensor] = {}  # id(module) -> packed weight
        # (module, its forward on the packed weight), once packed
        self._forwards: list[tuple[torch.nn.Linear, Callable[[torch.Tensor], torch.Tensor]]] = []
        self._weights: list[torch.Tensor] = []  # the weights packed, and their version counters then
        self._versions: list[int] = []
        self._depth = 0
        self.times: dict[int, dict[str, float]] = {}
        refusal = onednn_refusal(model)
        if choice == "onednn":
            if refusal is not None:
                raise UnsupportedModelError(f"products='onednn' cannot run here: {refusal}")
            self.libraries = dict.fromkeys(BUCKETS, "onednn")
            self.reason = "asked for"
        elif choice == "torch" or refusal is not None:
            self.libraries = dict.fromkeys(BUCKETS, "torch")
            self.reason = "asked for" if choice == "torch" else refusal or ""
        else:
            self.libraries, self.reason = self._auto(cache)
        if "onednn" in self.libraries.values() and not self._forwards:  # "auto" packed already to measure
            self._pack()
        _log.debug("linear products %s (%s)", self.libraries, self.reason)

    @classmethod
    def shared(cls, model: torch.nn.Module, choice: str = "auto") -> LinearProducts:
        """The one :class:`LinearProducts` of ``model`` for ``choice`` in this process (one packed copy per model)."""
        per_model = _SHARED.setdefault(model, {})
        if choice not in per_model:
            per_model[choice] = cls(model, choice)
        return per_model[choice]

    @property
    def weight_bytes(self) -> int:
        """Bytes of the model's linear weights (what a packed copy costs; tied weights counted once)."""
        seen: dict[int, int] = {}
        for m in self._linears:
            seen[id(m.weight)] = m.weight.numel() * m.weight.element_size()
        return sum(seen.values())

    def library_for(self, tokens: int) -> str:
        """The library a pass of ``tokens`` tokens runs its products on."""
        return self.libraries[_bucket(tokens)]

    @contextlib.contextmanager
    def scope(self, tokens: int) -> Iterator[None]:
        """Inside, the model's linear layers multiply with the library chosen for a ``tokens``-token pass."""
        if self._depth or self.library_for(tokens) == "torch":
            yield
            return
        if self._stale():
            _log.info("the model's linear weights changed since they were packed: packing them again")
            self._pack()
        self._depth += 1
        try:
            for m, forward in self._forwards:
                m.forward = forward  # type: ignore[method-assign,assignment]
            yield
        finally:
            for m, _ in self._forwards:
                m.__dict__.pop("forward", None)
            self._depth -= 1

    def _forward_of(self, module: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        packed = self._packed[id(module)]

        def forward(x: torch.Tensor) -> torch.Tensor:  # the bias as it is now (it is not packed)
            return torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "")

        return forward

    def _stale(self) -> bool:
        """Whether a linear weight was written in place or replaced since it was packed (~0.2 ms for 200 layers)."""
        return any(w._version != v for w, v in zip(self._weights, self._versions, strict=True)) or not all(
            m.weight is w for m, w in zip(self._linears, self._weights, strict=True)
        )

    def _pack(self) -> None:
        self._weights = [m.weight for m in self._linears]
        self._versions = [w._version for w in self._weights]
        by_weight: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for m in self._linears:
                key = id(m.weight)
                if key not in by_weight:
                    by_weight[key] = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), PACK_ROWS)
                self._packed[id(m)] = by_weight[key]
        self._forwards = [(m, self._forward_of(m)) for m in self._linears]

    # -- "auto" -------------------------------------------------------------------------------------------------

    def _auto(self, cache: Path | None) -> tuple[dict[int, str], str]:
        size = self.weight_bytes
        if size < MIN_AUTO_BYTES:
            return dict.fromkeys(BUCKETS, "torch"), f"products too small to matter ({size} bytes of linear weights)"
        available = _available_bytes()
        if available is not None and size > available // 2:
            return dict.fromkeys(BUCKETS, "torch"), (
                f"a packed copy ({size >> 20} MiB) would not fit in half the available memory ({available >> 20} MiB)"
            )
        path = self._cache_path(cache)
        try:
            stored = json.loads(path.read_text())
            libraries = {int(k): str(v) for k, v in stored["libraries"].items()}
            self.times = {int(k): v for k, v in stored["times"].items()}
            if set(libraries) == set(BUCKETS) and set(libraries.values()) <= {"torch", "onednn"}:
                return libraries, f"measured on this machine before ({path})"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        self._pack()
        libraries = {}
        for rows in BUCKETS:
            self.times[rows] = {lib: self._measure(rows, lib) for lib in ("torch", "onednn")}
            libraries[rows] = min(self.times[rows], key=lambda lib: self.times[rows][lib])
        if "onednn" not in libraries.values():
            self._packed.clear()
            self._forwards = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"libraries": libraries, "times": self.times, "key": self._key()}, indent=1))
            tmp.replace(path)
        except OSError as exc:  # a read-only cache costs a measurement per process, nothing else
            _log.debug("could not keep the products measurement in %s: %s", path, exc)
        return libraries, "measured on this machine"

    def _key(self) -> dict[str, object]:
        shapes = sorted({(tuple(m.weight.shape), m.bias is not None) for m in self._linears})
        return {
            "cpu": _cpu_name(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "dtype": str(self._linears[0].weight.dtype),
            "layers": len(self._linears),
            "shapes": [list(s) + [b] for s, b in shapes],
        }

    def _cache_path(self, cache: Path | None) -> Path:
        if cache is None:
            from .models import cache_dir

            cache = cache_dir() / "products"
        digest = hashlib.sha256(json.dumps(self._key(), sort_keys=True).encode()).hexdigest()[:20]
        return cache / f"{digest}.json"

    @torch.inference_mode()
    def _measure(self, rows: int, library: str, repeats: int = 3) -> float:
        """Median seconds of one pass over every linear layer at ``rows`` rows with ``library``."""
        dtype = self._linears[0].weight.dtype
        inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=dtype) for m in self._linears}
        if library == "torch":
            calls = [(inputs[m.in_features], m.weight, m.bias) for m in self._linears]

            def run() -> None:
                for x, w, b in calls:
                    torch.nn.functional.linear(x, w, b)

        else:
            packed = [(inputs[m.in_features], self._packed[id(m)], m.bias) for m in self._linears]

            def run() -> None:
                for x, p, b in packed:
                    torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], "")

        return median_seconds(run, repeats)
