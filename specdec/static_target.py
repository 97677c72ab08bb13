"""The target on fixed shapes, optionally compiled: the engine's runner for ``compile=True``.

:class:`StaticTarget` runs the passes :class:`~specdec.batch_target.BatchedTarget`
runs, over the same cache (:mod:`specdec.kv`), but pads each to one of a few
shapes (:class:`StepShape`):

- rows: the next power of two (a padding row brings no tokens and writes only
  the scratch slot);
- columns: the next of ``widths`` (default 1, 9, 16: the one-token step,
  verify passes of up to 8 and up to 15 drafts, and the prefill chunks fused
  with them; with prepacked weights a 9-token pass costs little more than a
  3-token one, so fewer shapes mean less compile time for little loss; a
  longer prefill alone runs in one eager pass, where a wide product is
  compute-bound);
- slots read: the cache's whole capacity (fixed per process unless a longer
  request grows it), so the slots read never add a shape;
- logits kept: every column when a segment wants logits, else one.

Each shape is compiled once per process (``torch.compile(dynamic=False)``)
and reported once on stderr; inductor's FX graph and autotuning caches live
under ``~/.cache/specdec/inductor`` (or ``$TORCHINDUCTOR_CACHE_DIR``), so a
later process loads them instead of compiling again. A step's inputs (token
ids, positions, write slots, masks) are copied into buffers fixed per shape,
so the compiled step allocates nothing and, on CUDA, replays one CUDA graph
per shape. Rollback stays a pointer move: the engine starts a row's next
segment where its accepted tokens end, and the slots after it are
overwritten; the one host sync per step is reading the logits back to verify.

Kernels. CPU: inductor with ``freezing``: the weights become constants, so
every product runs on prepacked weights (packed once per shape at compile
time), and products that share their input (q, k, v; gate and up) are
concatenated into one (``cpp.enable_concat_linear``): fewer, wider products
read the weights closer to the memory bandwidth. float32 products run on MKL
or oneDNN, whichever :mod:`specdec.cpu_gemm` measures faster on this CPU at
the shape's row count (bfloat16 always on oneDNN). On MKL shapes
``max_autotune`` (without CUDA graphs) lets inductor try its C++ micro-GEMM
template against MKL for each product. The price of freezing is memory: each
compiled shape holds its own packed copy of the weights. CUDA: the same with
CUDA graphs and without GEMM autotuning (minutes per shape on a large model).

Attention reads the cache where it lies: a pass writes its keys and values
with one in-place ``index_put_`` per layer, and grouped-query models fold
their query heads into rows of the shared key/value heads
(:func:`specdec.packed.grouped_attention`) instead of repeating the keys and
values per head. Both were copies of every slot read, in every layer and step
(on SmolLM2-135M at 512 slots, fp32: 67.8 -> 48.9 ms per one-token step).

Fallbacks, each said once on stderr: a pass wider than the widest static
width runs eagerly on the same cache; passes that capture hidden states (an
EAGLE head's) run eagerly; a shape whose compile fails turns compilation off
for the process and the pass runs eagerly. The output never depends on which
path ran (the tests compare it with the target's own ``generate``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from . import cpu_gemm
from .batch_target import BatchedTarget, Segment
from .errors import InvalidArgumentError
from .kv import build_plan

__all__ = ["VERIFY_WIDTH_LIMIT", "StaticConfig", "StaticTarget", "StepShape", "default_cache_dir"]

DEFAULT_WIDTHS = (1, 9, 16)
#: Widths up to this are timed as verify passes (every column's logits); wider ones as prefill chunks.
VERIFY_WIDTH_LIMIT = 16


def default_cache_dir() -> Path:
    """Where inductor keeps compiled graphs and autotuning results across processes."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "specdec" / "inductor"


@dataclass(frozen=True)
class StaticConfig:
    """How :class:`StaticTarget` runs: ``SpeculativeGenerator(compile=StaticConfig(...))``.

    ``compile``: compile each shape (False: the same padded passes, eagerly; for
    tests and for measuring the compiler's share). ``widths``: the columns a
    pass is padded to; wider passes run eagerly. ``max_len``: slots reserved
    per row at construction (every pass reads them all; a longer request
    grows the cache, a copy, and compiles its shapes again). ``autotune``:
    inductor's GEMM autotuning on CPU. ``warmup``: compile and time every
    width for one row when the generator is built, and price ``"auto"`` draft
    lengths with those times. ``gemm``: the library of the float32 products
    on CPU (:mod:`specdec.cpu_gemm`): ``"auto"`` measures MKL against oneDNN
    per shape on this machine and takes the faster.
    """

    compile: bool = True
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    max_len: int = 512
    autotune: bool = True
    warmup: bool = True
    cache_dir: Path | None = field(default=None)
    gemm: Literal["auto", "mkl", "onednn"] = "auto"

    def __post_init__(self) -> None:
        widths = self.widths
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise InvalidArgumentError(f"StaticConfig.widths must be integers >= 1, got {widths!r}")
        if tuple(sorted(set(widths))) != tuple(widths):
            raise InvalidArgumentError(f"StaticConfig.widths must be increasing without repeats, got {widths!r}")
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            raise InvalidArgumentError(f"StaticConfig.max_len must be an integer >= 1, got {self.max_len!r}")
        if self.gemm not in ("auto", "mkl", "onednn"):
            raise InvalidArgumentError(f"StaticConfig.gemm must be 'auto', 'mkl' or 'onednn', got {self.gemm!r}")


@dataclass(frozen=True)
class StepShape:
    """The fixed shape of one compiled step."""

    rows: int  # buffer rows [0, rows)
    width: int  # query columns per row
    read_len: int  # cache slots attention reads (the capacity)
    keep: int  # logits columns computed: width, or 1 for a pass without logits


class _StepInputs:
    """Buffers fixed per shape that a step's inputs are copied into (static addresses for CUDA graphs)."""

    def __init__(self, shape: StepShape, windows: set[int | None], dtype: torch.dtype, device: torch.device) -> None:
        size = (shape.rows, shape.width)
        self.input_ids = torch.zeros(size, dtype=torch.long, device=device)
        self.positions = torch.zeros(size, dtype=torch.long, device=device)
        self.write_index = torch.zeros(size, dtype=torch.long, device=device)
        self.masks: dict[int | None, torch.Tensor] = {
            w: torch.zeros(shape.rows, 1, shape.width, shape.read_len, dtype=dtype, device=device) for w in windows
        }

    def tensors(self) -> list[torch.Tensor]:
        return [self.input_ids, self.positions, self.write_index, *self.masks.values()]


def _power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class StaticTarget:
    """A :class:`BatchedTarget` whose passes run on fixed, compiled shapes (see the module docstring).

    It offers the engine the same interface (``forward``, ``ensure``, ``capture``
    ...), so the one decode loop runs on it unchanged.
    """

    def __init__(self, target: BatchedTarget, config: StaticConfig | None = None, *, log=None) -> None:
        self.target = target
        self.config = config or StaticConfig()
        self.widths = self.config.widths
        self.device = target.device
        self.vocab_size = target.vocab_size
        self.context_length = target.context_length
        self.log: Callable[[str], Any] = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.compiled = self.config.compile
        self.fallback_reason: str | None = None
        self.compile_s: dict[StepShape, float] = {}  # first call of each compiled shape, compile included
        self.passes = {"static": 0, "eager": 0}
        self._said: set[str] = set()
        self._inputs: dict[StepShape, _StepInputs] = {}
        self._started: set[StepShape] = set()
        self._capturing = False
        self._graphs = self.device.type == "cuda"
        self._step: Callable[..., torch.Tensor] = self._run
        self._inductor_options: dict[str, Any] = {}
        self.libraries: dict[int, cpu_gemm.Library] = {}  # float32 CPU products: rows -> library (measured)
        self.library_times: dict[int, dict[cpu_gemm.Library, float]] = {}  # rows -> seconds per library
        self.cache_dir: Path | None = None
        if self.compiled:
            reason = _compile_unsupported()
            if reason is not None:
                self._fall_back(reason)
            else:
                self._step = self._compile()
        length = self.config.max_len
        if self.context_length is not None:
            length = min(length, self.context_length)
        self.ensure(1, length)

    # -- the engine's interface (as BatchedTarget) ---------------------------------------------------

    @property
    def model(self) -> Any:
        return self.target.model

    @property
    def cache(self) -> Any:
        return self.target.cache

    @property
    def max_rows(self) -> int:
        return self.target.max_rows

    @property
    def max_len(self) -> int:
        return self.target.max_len

    def copy_prefix(self, source: int, row: int, length: int) -> None:
        """Buffer row ``row`` takes the cached positions ``[0, length)`` of buffer row ``source`` (in place)."""
        self.target.copy_prefix(source, row, length)

    def ensure(self, max_rows: int, max_len: int) -> None:
        """Room for ``max_rows`` rows of ``max_len`` positions, both rounded up to powers of two (fewer shapes)."""
        self.target.ensure(_power_of_two(max_rows), _power_of_two(max(max_len, 1)))
        if self._graphs and self.compiled:
            for layer in self.target.cache.layers:  # CUDA graphs read the cache where it lies: no copy per replay
                for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                    if isinstance(tensor, torch.Tensor):
                        torch._dynamo.mark_static_address(tensor)

    def check_layers(self, layers: tuple[int, ...]) -> None:
        self.target.check_layers(layers)

    def capture(self, layers: tuple[int, ...] | None) -> None:
        """Hidden states are captured by hooks, which compiled steps do not run: capturing passes run eagerly."""
        self.target.capture(layers)
        self._capturing = layers is not None
        if self._capturing and self.compiled:
            self._say("capture", "specdec: passes that capture hidden states for the drafter run eagerly")

    def hidden_states(self, row: int, length: int) -> torch.Tensor:
        return self.target.hidden_states(row, length)

    # -- passes ------------------------------------------------------------------------------------

    def shape_for(self, segments: list[Segment]) -> StepShape | None:
        """The padded shape of a pass over ``segments``; ``None`` when it runs eagerly."""
        width = max(int(s.token_ids.shape[0]) for s in segments)
        padded = next((w for w in self.widths if w >= width), None)
        rows = _power_of_two(max(s.row for s in segments) + 1)
        end = max(s.start + int(s.token_ids.shape[0]) for s in segments)
        cache = self.target.cache
        if padded is None or rows > cache.max_rows or end > cache.max_len:
            return None
        keep = padded if any(s.logits for s in segments) else 1
        return StepShape(rows=rows, width=padded, read_len=cache.max_len, keep=keep)

    @torch.inference_mode()
    def forward(self, segments: list[Segment]) -> list[torch.Tensor | None]:
        """One pass over ``segments`` (distinct rows); per segment FloatTensor [n, vocab], or None without logits."""
        shape = None if self._capturing else self.shape_for(segments)
        if shape is None:
            self.passes["eager"] += 1
            return self.target.forward(segments)
        self.passes["static"] += 1
        target = self.target
        starts, lengths = [0] * shape.rows, [0] * shape.rows
        ids = torch.zeros(shape.rows, shape.width, dtype=torch.long)
        for s in segments:
            n = int(s.token_ids.shape[0])
            starts[s.row], lengths[s.row] = s.start, n
            ids[s.row, :n] = s.token_ids
        plan = target.cache.plan
        build_plan(
            plan,
            starts,
            lengths,
            max_len=target.cache.max_len,
            windows=set(target.windows.values()),
            dtype=target.dtype,
            device=self.device,
            width=shape.width,
            read_len=shape.read_len,
        )
        inputs = self._inputs_for(shape)
        inputs.input_ids.copy_(ids, non_blocking=True)
        assert plan.positions is not None and plan.write_index is not None  # build_plan set them
        inputs.positions.copy_(plan.positions)
        inputs.write_index.copy_(plan.write_index)
        for window, mask in plan.masks.items():
            inputs.masks[window].copy_(mask)
        plan.positions, plan.write_index, plan.masks = inputs.positions, inputs.write_index, inputs.masks
        logits = self._call(shape, inputs)  # [rows, keep, vocab]
        out: list[torch.Tensor | None] = []
        for s in segments:
            if not s.logits:
                out.append(None)
                continue
            row = logits[s.row, : int(s.token_ids.shape[0])]
            out.append(row.clone() if self._graphs else row)  # a CUDA graph's output is rewritten by its next replay
        return out

    def warmup(self, rows: int = 1, repeats: int = 3) -> dict[int, float]:
        """Compile (or load) and time every width for ``rows`` rows; seconds per pass by width.

        Call it before any request runs: it writes dummy tokens into the first
        ``rows`` rows' slots. Widths above 16 are timed without logits (a
        prefill chunk); the others with every column's logits (a verify pass).
        """
        times: dict[int, float] = {}
        for width in self.widths:
            logits = width <= VERIFY_WIDTH_LIMIT
            segments = [Segment(r, 0, torch.zeros(width, dtype=torch.long), logits=logits) for r in range(rows)]
            self.ensure(rows, width)
            self.forward(segments)  # compiles, or loads from the disk cache
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                self.forward(segments)
                samples.append(time.perf_counter() - started)
            times[width] = statistics.median(samples)
        return times

    # -- compiling ---------------------------------------------------------------------------------

    def _run(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: Any, keep: int) -> torch.Tensor:
        """The model's forward over the cache: the function that gets compiled."""
        target = self.target
        kwargs: dict[str, Any] = {target.cache_kwarg: target.cache, "use_cache": True, **target.attention_kwargs}
        if target.keeps_logits:
            kwargs["logits_to_keep"] = keep
        return target.model(input_ids=input_ids, position_ids=positions, attention_mask=mask, **kwargs).logits

    def _compile(self) -> Callable[..., torch.Tensor]:
        import torch._dynamo.config as dynamo_config
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default

        # Inductor reads this variable at every cache access (and sets it to its /tmp default when unset):
        # a directory the user chose wins; otherwise ours, which survives reboots.
        chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if self.config.cache_dir is not None or chosen in (None, inductor_default()):
            cache_dir = self.config.cache_dir or default_cache_dir()
            cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
        self.cache_dir = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
        # One graph per shape: room for every width x row count without dynamo giving up on recompiling.
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        options: dict[str, Any] = {"freezing": True}
        if self.device.type == "cpu":
            options["cpp.enable_concat_linear"] = True
        if self._graphs:
            options["triton.cudagraphs"] = True
        elif self.config.autotune:
            options["max_autotune"] = True
        self._inductor_options = options  # applied by _compiling at every call: a compile happens at a shape's first
        return torch.compile(self._run, dynamic=False, options=options)

    def _call(self, shape: StepShape, inputs: _StepInputs) -> torch.Tensor:
        mask = self.target.attention_mask(inputs.masks)
        if not self.compiled:
            return self._run(inputs.input_ids, inputs.positions, mask, shape.keep)
        if shape in self._started:
            with self._compiling(shape):  # a recompile (a guard failed) compiles as the first did
                return self._step(inputs.input_ids, inputs.positions, mask, shape.keep)
        started = time.perf_counter()
        try:
            with self._compiling(shape):
                logits = self._step(inputs.input_ids, inputs.positions, mask, shape.keep)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: say it once, run eagerly from now on
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            self._fall_back(f"compiling {type(self.target.model).__name__} failed ({type(exc).__name__}: {first})")
            return self._run(inputs.input_ids, inputs.positions, mask, shape.keep)  # rewrites the same slots
        seconds = time.perf_counter() - started
        self._started.add(shape)
        self.compile_s[shape] = seconds
        times = self.library_times.get(shape.rows * shape.width)
        products = ""
        if times:
            measured = ", ".join(f"{lib} {t * 1e3:.1f} ms" for lib, t in times.items())
            products = f"; float32 products on {self.library_for(shape)}, measured here: {measured}"
        self.log(
            f"specdec: compiled the target's step rows={shape.rows} width={shape.width} slots={shape.read_len} "
            f"logits={shape.keep} in {seconds:.1f} s (cache: {self.cache_dir}{products})"
        )
        return logits

    def library_for(self, shape: StepShape) -> cpu_gemm.Library:
        """The library of this shape's float32 products on CPU: configured, or measured here once per row count."""
        if self.device.type != "cpu" or self.target.dtype != torch.float32:
            return "mkl"  # inductor's own choice: oneDNN for bfloat16 and float16, cuBLAS/Triton on a GPU
        if self.config.gemm != "auto":
            return self.config.gemm
        rows = shape.rows * shape.width
        if rows not in self.libraries:
            chosen, times = cpu_gemm.choose_library(self.target.model, rows)
            self.libraries[rows] = chosen
            self.library_times[rows] = times
        return self.libraries[rows]

    @contextlib.contextmanager
    def _compiling(self, shape: StepShape) -> Iterator[None]:
        """What a compile of ``shape`` runs under: freezing and the other options, the products' library.

        `torch.compile(options=...)` does not reach the freezing switch (compile_fx reads
        `config.freezing` outside the options' scope), so every call runs inside the patch: without
        it the weights stay graph inputs and no product gets prepacked weights. A shape packed for
        oneDNN compiles without GEMM autotuning (the autotuner times products on weights hot in the
        caches, where a step streams them from memory), and with the library in inductor's cache key.
        """
        from torch._inductor import config as inductor_config

        library = self.library_for(shape)
        options = self._inductor_options
        if library == "onednn":
            options = {k: v for k, v in options.items() if k != "max_autotune"}
            options["post_grad_custom_pre_pass"] = cpu_gemm.cache_tag(library)
        with inductor_config.patch(options), cpu_gemm.packing(library):
            yield

    def _inputs_for(self, shape: StepShape) -> _StepInputs:
        inputs = self._inputs.get(shape)
        if inputs is None:
            inputs = _StepInputs(shape, set(self.target.windows.values()), self.target.dtype, self.device)
            if self._graphs and self.compiled:
                for tensor in inputs.tensors():
                    torch._dynamo.mark_static_address(tensor)
            self._inputs[shape] = inputs
        return inputs

    def _fall_back(self, reason: str) -> None:
        self.compiled = False
        self.fallback_reason = reason
        self._say("fallback", f"specdec: compile=True falls back to eager passes: {reason}")

    def _say(self, key: str, line: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log(line)


def _compile_unsupported() -> str | None:
    """Why ``torch.compile`` cannot run here, or ``None``."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    try:
        import importlib

        importlib.import_module("torch._inductor")
    except Exception as exc:  # noqa: BLE001
        return f"torch's inductor does not import ({exc})"
    return None
