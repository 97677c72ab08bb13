"""The KV cache specdec owns: static per-row buffers with per-row write pointers.

Layout
------
Every attention layer keeps two preallocated tensors
``keys, values: [max_rows, kv_heads, max_len + 1, head_dim]``. Row ``r`` of the
buffer holds one sequence; slot ``j`` of that row holds the keys and values
of the token at *logical position* ``j`` of that sequence. The extra slot at
index ``max_len`` is a scratch slot that padding queries write to.

A forward pass runs either a rectangle of ``rows x width`` query tokens, or,
in the *packed* layout (:mod:`specdec.packed`), only the real tokens of all
rows as one sequence ``[1, T]``; the slots, masks and positions are the same.
In the rectangle, row ``r``
brings ``n_r <= width`` tokens (a prefill chunk, or the newest committed
token and its drafts) that start at its position ``start_r``; the rest of its
columns are padding. :class:`SlotPlan` tells every layer where to write
(``start_r + i`` for real tokens, the scratch slot for padding; a packed pass
writes token ``t`` at ``(token_rows[t], token_slots[t])``), and the model
gets, through ``position_ids`` and a 4-D additive attention mask
``[rows, 1, width, read_len]``, the logical positions and which slots each
query may see: slot ``j`` is visible to the query at position ``p`` of the
same row iff ``j <= p`` (and ``j > p - window`` for sliding-window layers).

Why this layout
---------------
- **Ragged acceptance without copying.** Each row keeps exactly what it
  accepted: a rollback is the caller moving that row's position back; the
  slots after it are simply overwritten by the next pass, and never seen
  before that because the mask only shows slots up to each query's position.
- **Rows are independent.** A row's rollback, admission or retirement writes
  nothing in any other row. A row may start from a copy of another row's
  slots (:meth:`RowKVCache.copy_prefix`, when their sequences begin alike);
  the copy only reads the other row.
- **Static shapes.** The buffers never change shape while rows come and go;
  a forward reads the first ``rows`` rows and the first ``read_len`` slots
  (rounded up to a multiple of :data:`READ_QUANTUM`), which is a view, so the
  set of shapes a compiled step meets stays small.
- **No holes, no compaction.** Because positions are slots, a row never has
  invalid slots below its position. The price: a row's capacity is reserved
  up front (``max_len`` slots per row), which :meth:`RowKVCache.ensure`
  grows, by a copy, when a longer request arrives.

The models get the mask already built, so transformers' mask creation returns
it as it is (``masking_utils._preprocess_mask_arguments`` exits early on a 4-D
mask; models with several layer types take a ``{layer_type: mask}`` dict).
Eager and SDPA attention add such a mask to their scores; flash attention and
flex attention cannot take it, and those models are refused (see
:mod:`specdec.batch_target`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["READ_QUANTUM", "RowKVCache", "SlotPlan", "build_plan"]

#: Slots read by attention are rounded up to a multiple of this (fewer distinct shapes).
READ_QUANTUM = 32


@dataclass
class SlotPlan:
    """Where the current forward pass writes and what it reads; shared by all layers."""

    rows: int = 0  # buffer rows taking part: rows [0, rows)
    write_index: torch.Tensor | None = None  # LongTensor [rows, width]: slot of each query token
    read_len: int = 0  # slots [0, read_len) are returned to attention
    positions: torch.Tensor | None = None  # LongTensor [rows, width]: logical positions (0 for padding)
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict)  # window -> additive [rows, 1, width, read_len]
    # A packed pass (:mod:`specdec.packed`): the T real tokens as one sequence; None for a rectangle pass.
    token_rows: torch.Tensor | None = None  # LongTensor [T]: buffer row of each packed token
    token_slots: torch.Tensor | None = None  # LongTensor [T]: its slot, which is its logical position


class RowKVLayer(CacheLayerMixin):
    """One attention layer's buffers; writes and reads follow the shared :class:`SlotPlan`."""

    is_compileable = True
    is_sliding = False

    def __init__(self, plan: SlotPlan, max_rows: int, max_len: int) -> None:
        super().__init__()
        self.plan = plan
        self.max_rows = max_rows
        self.max_len = max_len

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        heads = key_states.shape[1]
        shape = (self.max_rows, heads, self.max_len + 1)
        self.keys = key_states.new_zeros(*shape, key_states.shape[-1])
        self.values = value_states.new_zeros(*shape, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``key_states``/``value_states`` at the plan's slots; return the read view [rows, heads, read_len, dim].

        A rectangle pass brings [rows, heads, width, dim]; a packed pass [1, heads, T, dim], token ``t``
        going to slot ``plan.token_slots[t]`` of row ``plan.token_rows[t]``.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self.plan
        if plan.token_rows is not None:  # packed: token t -> (token_rows[t], token_slots[t])
            row_ids, slots = plan.token_rows, cast(torch.Tensor, plan.token_slots)  # [T]
            new_keys, new_values = key_states[0].transpose(0, 1), value_states[0].transpose(0, 1)  # [T, heads, dim]
        else:  # rectangle: column c of row r -> (r, write_index[r, c])
            slots = cast(torch.Tensor, plan.write_index)  # [rows, width]
            row_ids = torch.arange(plan.rows, device=slots.device)[:, None].expand_as(slots)
            new_keys, new_values = key_states.transpose(1, 2), value_states.transpose(1, 2)  # [rows, width, heads, dim]
        # One index_put_ on the whole buffer (not a scatter_ on a row slice): compiled, it stays in place
        # and writes only the pass's slots; a scatter_ on a slice of a graph input copied the whole slice.
        keys, values = cast(torch.Tensor, self.keys), cast(torch.Tensor, self.values)  # set by lazy_initialization
        keys[row_ids, :, slots] = new_keys.to(keys.dtype)
        values[row_ids, :, slots] = new_values.to(values.dtype)
        return keys[: plan.rows, :, : plan.read_len], values[: plan.rows, :, : plan.read_len]

    def grow(self, max_rows: int, max_len: int) -> None:
        """Reallocate for more rows or slots, keeping what is stored (the scratch slot moves to the end)."""
        if self.is_initialized:
            for name in ("keys", "values"):
                old = getattr(self, name)
                new = old.new_zeros(max_rows, old.shape[1], max_len + 1, old.shape[-1])
                new[: self.max_rows, :, : self.max_len] = old[:, :, : self.max_len]
                setattr(self, name, new)
        self.max_rows, self.max_len = max_rows, max_len

    def copy_prefix(self, source: int, row: int, length: int) -> None:
        """Slots ``[0, length)`` of buffer row ``source`` into buffer row ``row``."""
        if self.is_initialized:
            for buffer in (self.keys, self.values):
                cast(torch.Tensor, buffer)[row, :, :length] = cast(torch.Tensor, buffer)[source, :, :length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.plan.read_len, 0

    def get_seq_length(self) -> int:
        return 0  # positions are per row; models get them as position_ids

    def get_max_length(self) -> int:
        return self.max_len


class RowKVCache(Cache):
    """A transformers ``Cache`` made of :class:`RowKVLayer` s, one per decoder layer."""

    def __init__(self, num_layers: int, max_rows: int, max_len: int) -> None:
        self.plan = SlotPlan()
        self.max_rows = max_rows
        self.max_len = max_len
        super().__init__(layers=[RowKVLayer(self.plan, max_rows, max_len) for _ in range(num_layers)])

    def ensure(self, max_rows: int, max_len: int) -> None:
        """Make room for ``max_rows`` rows of ``max_len`` slots (a copy, only when it grows)."""
        if max_rows <= self.max_rows and max_len <= self.max_len:
            return
        self.max_rows, self.max_len = max(max_rows, self.max_rows), max(max_len, self.max_len)
        for layer in self.layers:
            cast(RowKVLayer, layer).grow(self.max_rows, self.max_len)

    def copy_prefix(self, source: int, row: int, length: int) -> None:
        """Give buffer row ``row`` the keys and values of positions ``[0, length)`` of buffer row ``source``.

        For a row whose sequence starts with tokens another row has cached (prefix sharing,
        :mod:`specdec.engine`): a copy of ``length`` slots per layer instead of a prefill. ``source`` is
        only read.
        """
        if source == row or not 0 <= length <= self.max_len:
            raise ValueError(f"copy_prefix: source {source}, row {row}, length {length} (max_len {self.max_len})")
        for layer in self.layers:
            cast(RowKVLayer, layer).copy_prefix(source, row, length)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def build_plan(
    plan: SlotPlan,
    starts: list[int],
    lengths: list[int],
    *,
    max_len: int,
    windows: set[int | None],
    dtype: torch.dtype,
    device: torch.device,
    width: int | None = None,
    read_len: int | None = None,
    packed: bool = False,
) -> None:
    """Fill ``plan`` for a pass where row ``r`` brings ``lengths[r]`` tokens starting at position ``starts[r]``.

    Rows with length 0 take part with padding only. ``windows``: the attention
    windows the model's layers use (``None`` = full attention); one mask is
    built per window. ``width`` and ``read_len`` fix the pass's columns and the
    slots it reads (the static path's padded shapes); by default the widest
    row and the end of the longest row rounded up to :data:`READ_QUANTUM`.
    ``packed``: the pass sends the rows' real tokens as one sequence, row after
    row (:mod:`specdec.packed`); the plan then also says where each token goes.
    """
    rows = len(starts)
    width = max(max(lengths), 1, width or 0)
    start = torch.tensor(starts, dtype=torch.long, device=device)[:, None]  # [rows, 1]
    length = torch.tensor(lengths, dtype=torch.long, device=device)[:, None]  # [rows, 1]
    column = torch.arange(width, device=device)[None, :]  # [1, width]
    real = column < length  # [rows, width]
    positions = torch.where(real, start + column, torch.zeros_like(column))  # [rows, width]
    end = max(s + n for s, n in zip(starts, lengths, strict=False))
    if read_len is None:
        read_len = min(-(-max(end, 1) // READ_QUANTUM) * READ_QUANTUM, max_len)
    elif not end <= read_len <= max_len:
        raise ValueError(f"read_len {read_len} must cover the rows' ends ({end}) and fit the cache ({max_len})")
    plan.rows = rows
    plan.positions = positions
    plan.write_index = torch.where(real, positions, torch.full_like(positions, max_len))
    plan.read_len = read_len
    plan.token_rows = plan.token_slots = None
    if packed:
        taking = [(r, s, n) for r, (s, n) in enumerate(zip(starts, lengths, strict=True)) if n > 0]
        plan.token_rows = torch.tensor([r for r, _, n in taking for _ in range(n)], dtype=torch.long, device=device)
        plan.token_slots = torch.tensor(
            [p for _, s, n in taking for p in range(s, s + n)], dtype=torch.long, device=device
        )
    slot = torch.arange(read_len, device=device)[None, None, :]  # [1, 1, read_len]
    query = positions[:, :, None]  # [rows, width, 1]
    minimum = torch.finfo(dtype).min
    plan.masks = {}
    for window in windows:
        visible = slot <= query
        if window is not None:
            visible &= slot > query - window
        # A padding query sees slot 0 only: every query sees something, so no softmax over nothing (NaN).
        visible = torch.where(real[:, :, None], visible, slot == 0)
        mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, minimum)
        plan.masks[window] = mask[:, None]  # [rows, 1, width, read_len]
