"""SmolLM2's output projection (49152 x 576, float32) alone: eager vs inductor with each GEMM backend.

A measurement, not a test: ``python benchmarks/probe_output_projection.py`` (one thread; compiles four
tiny graphs). It checks what the compiled path's GEMM choice is worth on the CPU at hand: with freezing and
``max_autotune``, ``max_autotune_gemm_backends="CPP"`` forces inductor's C++ micro-GEMM template,
``"ATEN,CPP"`` lets the autotuner choose. Prints compile seconds and the best of two medians of 15 calls.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch._inductor.config as inductor_config

from specdec.bench import environment
from specdec.bench.report import machine_line


def median_ms(function, x: torch.Tensor, calls: int = 15) -> float:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        function(x)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    print(machine_line(environment("cpu")))
    projection = torch.nn.Linear(576, 49152, bias=False).eval().requires_grad_(False)
    for backends in ("CPP", "ATEN,CPP"):
        for rows in (1, 16):
            x = torch.randn(rows, 576)
            torch._dynamo.reset()
            with inductor_config.patch(freezing=True, max_autotune=True, max_autotune_gemm_backends=backends):
                compiled = torch.compile(projection, dynamic=False)
                started = time.time()
                with torch.no_grad():
                    compiled(x)
                compile_s = time.time() - started
            with torch.no_grad():
                eager = min(median_ms(projection, x), median_ms(projection, x))
                fast = min(median_ms(compiled, x), median_ms(compiled, x))
            print(f"{backends} rows={rows}: compile {compile_s:.0f} s, eager {eager:.2f} ms, compiled {fast:.2f} ms")


if __name__ == "__main__":
    main()
