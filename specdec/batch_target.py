"""The target model over many rows at once, on the cache specdec owns (:mod:`specdec.kv`).

:class:`BatchedTarget` runs one forward pass over a set of *segments* (row,
first position, token ids) and returns, per segment, the logits of the
positions it asked for. Each row's positions go to the model as
``position_ids`` and its visibility as a 4-D additive attention mask, so rows
of different lengths, prefill chunks and verify blocks share the pass.

Models are checked at construction: besides :func:`~specdec.cache.check_rollback_support`,
the model's forward must take ``position_ids``, ``attention_mask`` and a cache,
and its attention implementation must accept a 4-D mask (``eager`` and
``sdpa`` do; ``flash_attention_*`` and ``flex_attention`` do not). A probe
then runs a short sequence through the cache in two pieces and compares it
with one plain forward: a model that ignores the mask or the positions is
refused with the measured difference.

Layouts
-------
``layout="packed"`` (:mod:`specdec.packed`) sends only the rows' real tokens
through the model, as one sequence ``[1, T]``; ``layout="rectangle"`` pads
every row to the widest segment ``[rows, width]``. The default, ``"auto"``,
takes the packed layout where the model allows it (SDPA attention, and the
probe passes on it) and the rectangle otherwise; :attr:`BatchedTarget.layout`
says which was taken and :attr:`BatchedTarget.layout_reason` why (also logged
at debug level). Both give the same tokens; the packed layout costs what its
real tokens cost, which matters on a CPU where a pass is compute-bound.

Products
--------
``products`` picks the kernel of the model's linear products in these passes
(:mod:`specdec.products`): ``"auto"`` (measured once per machine: packed oneDNN
weights where they are faster than torch's own products, as on CPUs where
MKL's small-row products are slow), ``"torch"`` or ``"onednn"``.
:attr:`BatchedTarget.products` says what was chosen and why.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import torch
from transformers import PreTrainedModel

from .cache import CausalLMAdapter, text_config
from .errors import UnsupportedModelError
from .kv import READ_QUANTUM, RowKVCache, build_plan
from .packed import GROUPED_KWARG, SPANS_KWARG, PackedSpans, enable_packed_attention, packed_refusal
from .products import LinearProducts, Products

__all__ = ["BatchedTarget", "Layout", "Segment", "TargetRunner"]

_MASKABLE_ATTENTION = ("eager", "sdpa")
_log = logging.getLogger(__name__)

#: How a pass lays out its tokens (see the module docstring).
Layout = Literal["packed", "rectangle"]


@dataclass(frozen=True)
class Segment:
    """Tokens one row brings to a forward pass."""

    row: int  # buffer row
    start: int  # logical position of token_ids[0]
    token_ids: torch.Tensor  # LongTensor [n], n >= 1
    logits: bool = True  # False: a prefill chunk, no logits wanted


class TargetRunner(Protocol):
    """What the engine runs its passes on: :class:`BatchedTarget`, or the static path's
    :class:`~specdec.static_target.StaticTarget` (the same passes on fixed, compiled shapes)."""

    device: torch.device
    vocab_size: int
    context_length: int | None

    @property
    def max_rows(self) -> int: ...

    def ensure(self, max_rows: int, max_len: int) -> None: ...

    def copy_prefix(self, source: int, row: int, length: int) -> None: ...

    def forward(self, segments: list[Segment]) -> list[torch.Tensor | None]: ...

    def capture(self, layers: tuple[int, ...] | None) -> None: ...

    def hidden_states(self, row: int, length: int) -> torch.Tensor: ...


class BatchedTarget:
    """A causal LM whose forward passes run over ragged rows of :class:`RowKVCache`."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        max_rows: int = 1,
        max_len: int = 256,
        layout: Literal["auto", "packed", "rectangle"] = "auto",
        products: Products = "auto",
    ) -> None:
        if layout not in ("auto", "packed", "rectangle"):
            raise ValueError(f"layout must be 'auto', 'packed' or 'rectangle', got {layout!r}")
        self.single = CausalLMAdapter(model)  # the checks, device, vocabulary and context length
        self.model = model
        self.device = self.single.device
        self.vocab_size = self.single.vocab_size
        self.context_length = self.single.context_length
        name = type(model).__name__
        params = inspect.signature(model.forward).parameters
        for needed in ("position_ids", "attention_mask"):
            if needed not in params:
                raise UnsupportedModelError(f"{name}.forward takes no `{needed}`: specdec passes positions and masks")
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.keeps_logits = "logits_to_keep" in params
        config = text_config(model)
        attention = getattr(model.config, "_attn_implementation", None) or "eager"
        if attention not in _MASKABLE_ATTENTION:
            raise UnsupportedModelError(
                f"{name} uses attn_implementation={attention!r}, which cannot take a custom 4-D attention mask; "
                f"load it with attn_implementation='sdpa' or 'eager'"
            )
        layer_types = getattr(config, "layer_types", None)
        window = getattr(config, "sliding_window", None)
        if layer_types is not None:
            # Models with per-layer attention types take a {layer_type: mask} dict.
            self.windows = {kind: (window if kind == "sliding_attention" else None) for kind in set(layer_types)}
        else:
            self.windows = {None: window if isinstance(window, int) and window > 0 else None}
        self.dtype = next(model.parameters()).dtype
        # The kernel of the linear products in our passes (specdec.products): measured per machine by default.
        self.products = LinearProducts.shared(model, products)
        self.cache = RowKVCache(int(config.num_hidden_layers), max_rows, max_len)
        self._offsets: dict[int, int] = {}  # row -> offset of its tokens in the last packed pass
        # Packed attention runs one padded SDPA call when rows x width <= attention_gather x real tokens, else
        # one call per row (None: always per row).
        self.attention_gather: float | None = 2.0
        sdpa_refusal = packed_refusal(model)
        refusal = sdpa_refusal if layout != "rectangle" else "the rectangle layout was asked for"
        if refusal is not None and layout == "packed":
            raise UnsupportedModelError(f"{name} cannot take the packed layout: {refusal}")
        self.layout: Layout = "rectangle" if refusal is not None else "packed"
        self.layout_reason = refusal or "the model runs SDPA attention through transformers' AttentionInterface"
        # Keywords for the model's attention in rectangle passes (eager and compiled): grouped-query
        # attention without repeated keys and values (specdec.packed.grouped_attention), for SDPA models.
        self.attention_kwargs: dict[str, Any] = {}
        if sdpa_refusal is None:
            enable_packed_attention()
            groups = int(getattr(config, "num_attention_heads", 1) or 1) // int(
                getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", 1) or 1
            )
            if groups > 1:
                self.attention_kwargs[GROUPED_KWARG] = True
        if self.layout == "packed":
            try:
                self._probe()
            except UnsupportedModelError as exc:
                if layout == "packed":
                    raise
                self.layout, self.layout_reason = "rectangle", f"the packed layout failed its probe: {exc}"
        if self.layout == "rectangle":
            try:
                self._probe()
            except (UnsupportedModelError, TypeError):
                if not self.attention_kwargs:
                    raise
                self.attention_kwargs = {}  # a model that does not pass the keyword on: repeated keys and values
                self._probe()
        _log.debug("%s: %s layout (%s)", name, self.layout, self.layout_reason)

    @property
    def max_rows(self) -> int:
        return self.cache.max_rows

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    def check_layers(self, layers: tuple[int, ...]) -> None:
        """Raise unless the hidden states of ``layers`` (HF ``output_hidden_states`` ids) can be captured."""
        self.single.check_layers(layers)

    def capture(self, layers: tuple[int, ...] | None) -> None:
        """Record ``layers``' hidden states in every forward from now on (``None``: stop, remove the hooks)."""
        self.single.capture(layers)

    def hidden_states(self, row: int, length: int) -> torch.Tensor:
        """``[length, layers, hidden]``: buffer row ``row``'s first ``length`` positions in the last forward."""
        if self.layout == "packed":
            offset = self._offsets[row]
            return self.single.captured(0)[offset : offset + length]
        return self.single.captured(row)[:length]

    def ensure(self, max_rows: int, max_len: int) -> None:
        """Room for ``max_rows`` rows of ``max_len`` positions each (rounded up)."""
        quantum = 4 * READ_QUANTUM
        self.cache.ensure(max_rows, -(-max_len // quantum) * quantum)

    def copy_prefix(self, source: int, row: int, length: int) -> None:
        """Buffer row ``row`` takes the cached positions ``[0, length)`` of buffer row ``source`` (a copy)."""
        with torch.inference_mode():
            self.cache.copy_prefix(source, row, length)

    @torch.inference_mode()
    def forward(self, segments: list[Segment]) -> list[torch.Tensor | None]:
        """One pass over ``segments`` (distinct rows); per segment FloatTensor [n, vocab], or None without logits."""
        if self.layout == "packed":
            return self._forward_packed(segments)
        rows = max(s.row for s in segments) + 1
        starts, lengths = [0] * rows, [0] * rows
        for s in segments:
            starts[s.row], lengths[s.row] = s.start, int(s.token_ids.shape[0])
        width = max(lengths)
        input_ids = torch.zeros(rows, width, dtype=torch.long, device=self.device)
        for s in segments:
            input_ids[s.row, : lengths[s.row]] = s.token_ids.to(self.device)
        plan = self.cache.plan
        build_plan(
            plan, starts, lengths, max_len=self.cache.max_len, windows=set(self.windows.values()),
            dtype=self.dtype, device=self.device,
        )
        mask = self.attention_mask(plan.masks)
        kwargs = {self.cache_kwarg: self.cache, "use_cache": True, **self.attention_kwargs}
        wanted = max((lengths[s.row] for s in segments if s.logits), default=0)
        if self.keeps_logits:
            kwargs["logits_to_keep"] = torch.arange(max(wanted, 1), device=self.device)
        with self.products.scope(rows * width):
            outputs = self.model(input_ids=input_ids, position_ids=plan.positions, attention_mask=mask, **kwargs)
        logits = outputs.logits  # [rows, width or wanted, vocab]
        return [logits[s.row, : lengths[s.row]] if s.logits else None for s in segments]

    def _forward_packed(self, segments: list[Segment]) -> list[torch.Tensor | None]:
        """The pass with only real tokens through the model: ``input_ids [1, T]``, rows one after another."""
        rows = max(s.row for s in segments) + 1
        starts, lengths = [0] * rows, [0] * rows
        for s in segments:
            starts[s.row], lengths[s.row] = s.start, int(s.token_ids.shape[0])
        plan = self.cache.plan
        build_plan(
            plan, starts, lengths, max_len=self.cache.max_len, windows=set(self.windows.values()),
            dtype=self.dtype, device=self.device, packed=True,
        )
        order = sorted(segments, key=lambda s: s.row)  # the packed sequence's order (build_plan's too)
        spans, offset, kept = [], 0, []
        for s in order:
            n = lengths[s.row]
            spans.append((s.row, offset, n, s.start + n))
            self._offsets[s.row] = offset
            if s.logits:
                kept.append(torch.arange(offset, offset + n))
            offset += n
        input_ids = torch.cat([s.token_ids for s in order]).to(self.device)[None]  # [1, T]
        positions = cast(torch.Tensor, plan.token_slots)[None]  # [1, T]
        kwargs: dict[str, Any] = {self.cache_kwarg: self.cache, "use_cache": True}
        kwargs[SPANS_KWARG] = self._spans(spans, rows, max(lengths))  # for specdec.packed.packed_attention
        keep = torch.cat(kept).to(self.device) if kept else torch.zeros(1, dtype=torch.long, device=self.device)
        if self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        mask = self.attention_mask(plan.masks)
        with self.products.scope(int(input_ids.shape[1])):
            logits = self.model(input_ids=input_ids, position_ids=positions, attention_mask=mask, **kwargs).logits[0]
        if not self.keeps_logits:
            logits = logits[keep]  # [kept, vocab]
        out: dict[int, torch.Tensor] = {}
        at = 0
        for s in order:
            if s.logits:
                out[s.row] = logits[at : at + lengths[s.row]]
                at += lengths[s.row]
        return [out[s.row] if s.logits else None for s in segments]

    def _spans(self, spans: list[tuple[int, int, int, int]], rows: int, width: int) -> PackedSpans:
        """The spans for attention; with the index tensors that make it one padded call when padding is cheap."""
        tokens = sum(n for _, _, n, _ in spans)
        if self.attention_gather is None or rows * width > self.attention_gather * tokens:
            return PackedSpans(tuple(spans))  # a loop over rows
        token_rows = torch.tensor([r for r, _, n, _ in spans for _ in range(n)], device=self.device)
        columns = torch.tensor([c for _, _, n, _ in spans for c in range(n)], device=self.device)
        return PackedSpans(tuple(spans), token_rows, columns)

    def attention_mask(self, masks: dict[int | None, torch.Tensor]) -> torch.Tensor | dict[Any, torch.Tensor]:
        """The ``attention_mask`` argument for the model from a plan's masks (one per window)."""
        if list(self.windows) == [None]:
            return masks[self.windows[None]]
        return {kind: masks[window] for kind, window in self.windows.items()}

    def _probe(self) -> None:
        """Check on a short sequence that pieces through the cache equal one plain forward."""
        length = 12
        window = max((w for w in self.windows.values() if w is not None), default=None)
        if window is not None and window + 4 <= 64:
            length = max(length, window + 4)
        if self.context_length is not None:
            length = min(length, self.context_length)
        vocab = self.vocab_size
        ids = (torch.arange(length, device=self.device) * 7 + 3) % vocab  # LongTensor [length]
        with torch.inference_mode():
            plain = self.model(input_ids=ids[None]).logits[0].float()  # [length, vocab]
            self.ensure(2, length + 1)
            split = length // 2
            first = self.forward([Segment(0, 0, ids[:split]), Segment(1, 0, ids[: split + 1])])
            second = self.forward([Segment(0, split, ids[split:]), Segment(1, split + 1, ids[split + 1 :])])
        ours = torch.cat([cast(torch.Tensor, first[0]), cast(torch.Tensor, second[0])]).float()
        other = torch.cat([cast(torch.Tensor, first[1]), cast(torch.Tensor, second[1])]).float()
        scale = plain.abs().max().clamp(min=1e-6)
        error = float(max((ours - plain).abs().max(), (other - plain).abs().max()) / scale)
        tolerance = 1e-3 if self.dtype in (torch.float32, torch.float64) else 5e-2
        if not error <= tolerance:
            raise UnsupportedModelError(
                f"{type(self.model).__name__} does not honour position_ids and a custom 4-D attention mask "
                f"(a probe through specdec's cache differs from a plain forward by {error:.2e} relative)"
            )
