"""Which library runs a compiled step's float32 products on this CPU: MKL or oneDNN, by measurement.

With ``freezing``, inductor packs every linear layer's weight once at compile
time and calls a packed product in the step. For bfloat16 and float16 it
always uses oneDNN (``mkldnn._linear_pointwise``); for float32 it uses MKL
(``mkl._mkl_linear``) whenever torch is built with MKL. Which of the two is
faster depends on the CPU and on the rows of the product, and not by a
little. Measured on one AMD EPYC (AVX-512, one thread) over SmolLM2-135M's
products, weights streamed from memory as in a step: MKL 43 ms at 1 row and
118 ms at 9 rows; oneDNN flat from 1 to 9 rows. On the Intel Xeon the
project ran on before, MKL was the flatter one. So the choice is measured on
the machine it runs on, per row count, never assumed:

- :func:`measure_products` times a model's products alone (q|k|v and
  gate|up concatenated, as inductor's ``cpp.enable_concat_linear`` runs
  them; the output projection included) with each library's prepacked
  weights, at a given number of rows;
- :func:`choose_library` picks the faster;
- :func:`packing` is the context under which a compile packs for the chosen
  library. oneDNN for float32 is not a switch inductor offers: the context
  replaces, while it is open, the two methods of inductor's CPU weight-pack
  pass that pick MKL (``CpuMkldnnDeviceOp.pack_linear_weight`` and
  ``pack_linear``) with ones that pick oneDNN. Where this torch lacks them,
  :func:`onednn_packing_available` says so and MKL stays;
- :func:`cache_tag` keeps the two apart in inductor's disk cache.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch

__all__ = [
    "Library", "cache_tag", "choose_library", "measure_products", "median_seconds", "onednn_packing_available",
    "packing",
]

Library = Literal["mkl", "onednn"]

_CONCATENATED = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's linear weights as a compiled step multiplies them: q|k|v and gate|up concatenated."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            parent, _, leaf = name.rpartition(".")
            groups.setdefault(f"{parent}.{_CONCATENATED.get(leaf, leaf)}", []).append(module.weight.detach())
    return [torch.cat(ws) if len(ws) > 1 else ws[0] for ws in groups.values()]


def onednn_packing_available() -> bool:
    """Whether this torch has what :func:`packing` needs for oneDNN float32 products."""
    try:
        from torch._inductor.fx_passes import mkldnn_fusion
    except Exception:  # noqa: BLE001 - no inductor, no choice
        return False
    ops = getattr(mkldnn_fusion, "CpuMkldnnDeviceOp", None)
    return (
        torch._C._has_mkldnn
        and ops is not None
        and all(hasattr(ops, name) for name in ("pack_linear_weight", "pack_linear"))
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


@torch.inference_mode()
def measure_products(model: torch.nn.Module, rows: int, library: Library, *, repeats: int = 3) -> float:
    """Median seconds of one pass over the model's float32 products at ``rows`` rows with ``library``."""
    weights = _weights(model)
    inputs = {int(w.shape[1]): torch.randn(rows, int(w.shape[1]), dtype=w.dtype) for w in weights}
    if library == "mkl":
        packed = [(torch.ops.mkl._mkl_reorder_linear_weight(w, rows), w) for w in weights]

        def run() -> None:
            for p, w in packed:
                torch.ops.mkl._mkl_linear(inputs[int(w.shape[1])], p, w, None, rows)

    else:
        packed = [(torch.ops.mkldnn._reorder_linear_weight(w, rows), w) for w in weights]

        def run() -> None:
            for p, w in packed:
                torch.ops.mkldnn._linear_pointwise(inputs[int(w.shape[1])], p, None, "none", [], "")

    return median_seconds(run, repeats)


def median_seconds(run: Callable[[], None], repeats: int = 3) -> float:
    """Median wall seconds of ``repeats`` calls of ``run``, after one untimed call (caches and packing warm)."""
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def choose_library(model: torch.nn.Module, rows: int) -> tuple[Library, dict[Library, float]]:
    """The faster library for the model's float32 products at ``rows`` rows, and both times (seconds).

    MKL when oneDNN packing is not available here, or when torch has no MKL the other way round.
    """
    if not torch._C.has_mkl:
        return "onednn", {}
    if not onednn_packing_available():
        return "mkl", {}
    times: dict[Library, float] = {lib: measure_products(model, rows, lib) for lib in ("mkl", "onednn")}
    return min(times, key=lambda lib: times[lib]), times


@functools.cache
def cache_tag(library: Library) -> Any:
    """An inductor option value that puts ``library`` into inductor's cache key (``None`` for MKL).

    The library is not part of what inductor hashes, so a graph packed for one would be loaded from the
    disk cache for the other. A post-grad pass that does nothing but has the library in its ``uuid`` is.
    One instance per library (cached): inductor is imported only when a compile asks for it.
    """
    if library == "mkl":
        return None
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class _Tag(CustomGraphPass):
        def __call__(self, graph: torch.fx.graph.Graph) -> None:
            return None

        def uuid(self) -> str:
            return f"specdec-float32-products-{library}"

    return _Tag()


@contextlib.contextmanager
def packing(library: Library) -> Iterator[None]:
    """Compiles inside pack float32 linear weights for ``library`` (MKL: inductor's own choice, unchanged)."""
    if library == "mkl" or not onednn_packing_available():
        yield
        return
    from unittest import mock

    from torch._inductor.fx_passes.mkldnn_fusion import CpuMkldnnDeviceOp

    def pack_linear_weight(self, graph, is_lp_weight, transpose_weight_node, batch_size):
        return graph.create_node(
            "call_function", torch.ops.mkldnn._reorder_linear_weight, args=(transpose_weight_node, batch_size)
        )

    def pack_linear(self, graph, is_lp_weight, batch_size, input, packed_weight_node, bias):
        args: tuple[Any, ...] = (input, packed_weight_node, bias, "none", [], "")
        return graph.create_node("call_function", torch.ops.mkldnn._linear_pointwise.default, args)

    with (
        mock.patch.object(CpuMkldnnDeviceOp, "pack_linear_weight", pack_linear_weight),
        mock.patch.object(CpuMkldnnDeviceOp, "pack_linear", pack_linear),
    ):
        yield
