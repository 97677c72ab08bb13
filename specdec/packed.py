"""The packed layout: only real tokens go through the linear layers.

A rectangle pass (:mod:`specdec.kv`) runs ``rows x width`` tokens through
every projection and MLP, so a row with 8 drafts makes every row 9 wide. A
*packed* pass sends the tokens of all segments as one sequence::

    input_ids, position_ids: [1, T]     T = the real tokens of all rows, row after row
                                        position_ids: each token's logical position in its own row

Only attention needs to know which row a token belongs to:

- **cache writes**: :class:`~specdec.kv.RowKVLayer` scatters token ``t``'s keys
  and values (``[1, kv_heads, T, dim]``) into slot ``(token_rows[t], token_slots[t])``
  of the row buffers (:class:`~specdec.kv.SlotPlan`);
- **attention**: :func:`packed_attention`, registered with transformers'
  ``AttentionInterface`` under :data:`PACKED_ATTENTION`, runs SDPA once per
  row: that row's queries (a slice ``[1, heads, n_r, dim]`` of the packed
  queries) against that row's slots ``[0, end_r)`` with that row's part of the
  4-D mask the model was given, and concatenates the outputs back to
  ``[1, T, heads, dim]``. The spans (row, offset, tokens, slots) reach it as the
  forward keyword :data:`SPANS_KWARG` (transformers forwards the model's extra
  keywords to the attention function);
- **logits**: only for the positions asked for (``logits_to_keep`` as an index tensor).

A loop over rows was chosen over gathering the queries into a padded
``[rows, heads, width, dim]`` rectangle: with a 512-token prefill chunk in one
row and one-token verify blocks in seven others, the rectangle would run 8 x
512 queries against every row's slots; the loop runs 519. Its cost is one
SDPA call per row and layer (tens of microseconds each on a CPU).

How the function gets in: transformers' models look their attention function
up by name at every call (``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation)``).
:func:`enable_packed_attention` registers :func:`packed_attention` under the
name ``"sdpa"``, wrapping the function that was registered there: a call that
carries no spans keyword (the model's own ``generate``, ``generate_batch``, the
rectangle and compiled paths, any other model in the process) goes to that
function unchanged, so no output of any model changes and no model's
configuration is touched. (Switching the model to a new attention name instead
would change its ``config._attn_implementation``, which transformers checks by
name elsewhere: ``generate_batch`` refuses any name but ``sdpa`` and
``paged|eager``.) Only models whose attention implementation is ``"sdpa"`` take
the packed layout; the others (``eager``, e.g. a model with attention logit
soft-capping) keep the rectangle layout: :func:`packed_refusal` says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = [
    "GROUPED_KWARG",
    "SPANS_KWARG",
    "PackedSpans",
    "enable_packed_attention",
    "grouped_attention",
    "packed_attention",
    "packed_refusal",
]

#: The forward keyword that carries a pass's :class:`PackedSpans` to the attention function.
SPANS_KWARG = "specdec_spans"
#: The forward keyword of specdec's rectangle passes (eager and compiled): attention may run grouped.
GROUPED_KWARG = "specdec_grouped"
#: Attention keywords that change what SDPA computes: a call carrying one is left to the wrapped function.
_NOT_GROUPED = ("softcap", "position_bias", "s_aux", "sinks")


@dataclass(frozen=True)
class PackedSpans:
    """Where each row's tokens lie in a packed pass."""

    # (buffer row, offset of its first token in the packed sequence, its tokens n, slots it reads = start + n)
    spans: tuple[tuple[int, int, int, int], ...]
    # Set when attention gathers the queries into the padded rectangle (one SDPA call) instead of a loop over rows.
    token_rows: torch.Tensor | None = None  # LongTensor [T]: row of each packed token
    token_columns: torch.Tensor | None = None  # LongTensor [T]: its column in the rectangle (0..n_r - 1)


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention for a packed pass, or the wrapped ``sdpa`` function for any other call.

    query: [1, heads, T, dim] (packed); key, value: [rows, kv_heads, read_len, dim] (the row buffers'
    read view); attention_mask: additive [rows, 1, width, read_len] (row r's queries in columns 0..n_r-1).
    Returns [1, T, heads, dim], as transformers' attention functions do.
    """
    packed: PackedSpans | None = kwargs.pop(SPANS_KWARG, None)
    if packed is None:
        if kwargs.pop(GROUPED_KWARG, False):
            return grouped_attention(module, query, key, value, attention_mask, **kwargs)
        return _wrapped(module, query, key, value, attention_mask, **kwargs)
    assert attention_mask is not None and query.shape[0] == 1, "a packed pass brings its 4-D mask and one sequence"
    if packed.token_rows is not None and packed.token_columns is not None:
        rows, width = attention_mask.shape[0], attention_mask.shape[2]
        where = (packed.token_rows, slice(None), packed.token_columns)
        square = query.new_zeros(rows, query.shape[1], width, query.shape[-1])  # [rows, heads, width, dim]
        square[where] = query[0].transpose(0, 1)  # [T, heads, dim] into their (row, column)
        out, _ = grouped_attention(module, square, key, value, attention_mask, **kwargs)  # [rows, width, heads, dim]
        return out[packed.token_rows, packed.token_columns][None], None  # [1, T, heads, dim]
    outputs = []
    for row, offset, tokens, end in packed.spans:
        out, _ = grouped_attention(
            module,
            query[:, :, offset : offset + tokens],  # [1, heads, n, dim]
            key[row : row + 1, :, :end],  # [1, kv_heads, end, dim]
            value[row : row + 1, :, :end],
            attention_mask[row : row + 1, :, :tokens, :end],  # [1, 1, n, end]
            **kwargs,
        )
        outputs.append(out)  # [1, n, heads, dim]
    return torch.cat(outputs, dim=1), None


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA for grouped-query attention that reads each key/value head once, or the wrapped function.

    transformers' SDPA path repeats the keys and values of every group (``repeat_kv``: a copy of
    the slots read, once per query head sharing them) whenever a mask is given and more than one
    query token comes (always, once compiled). Here the query heads of a group become extra query
    rows of their key/value head instead: query ``[b, heads, t, dim]`` is viewed as
    ``[b, kv_heads, groups * t, dim]`` and the mask (shared by all heads) is repeated over the
    groups, which is the same arithmetic per query row. The call goes to the wrapped function
    unchanged when there are no groups, no 4-D mask shared by the heads, dropout, or a keyword
    that changes the attention (:data:`_NOT_GROUPED`).
    """
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    if (
        groups == 1
        or _wrapped is not sdpa_attention_forward
        or attention_mask is None
        or attention_mask.dim() != 4
        or attention_mask.shape[1] != 1
        or kwargs.get("dropout", 0.0)
        or kwargs.get("output_attentions")
        or any(kwargs.get(name) is not None for name in _NOT_GROUPED)
    ):
        return _wrapped(module, query, key, value, attention_mask, **kwargs)
    batch, heads, tokens, _ = query.shape
    rows, _, _, slots = attention_mask.shape
    grouped_query = query.reshape(batch, key.shape[1], groups * tokens, query.shape[-1])
    mask = attention_mask[:, :, None].expand(rows, 1, groups, tokens, slots).reshape(rows, 1, groups * tokens, slots)
    out = torch.nn.functional.scaled_dot_product_attention(
        grouped_query, key, value, attn_mask=mask, scale=kwargs.get("scaling")
    )  # [batch, kv_heads, groups * tokens, dim]
    return out.reshape(batch, heads, tokens, value.shape[-1]).transpose(1, 2).contiguous(), None


#: The function registered as ``"sdpa"`` before :func:`enable_packed_attention` (transformers' own).
_wrapped: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] = sdpa_attention_forward


def enable_packed_attention() -> None:
    """Register :func:`packed_attention` as transformers' ``"sdpa"`` attention, wrapping the one there (once)."""
    global _wrapped
    current = ALL_ATTENTION_FUNCTIONS.get("sdpa")
    if current is not packed_attention:
        _wrapped = current or sdpa_attention_forward
        AttentionInterface.register("sdpa", packed_attention)


def packed_refusal(model: PreTrainedModel) -> str | None:
    """Why the packed layout cannot serve ``model`` (``None``: it can)."""
    attention = getattr(model.config, "_attn_implementation", None)
    if attention != "sdpa":
        return f"its attention implementation is {attention!r}; the packed layout runs SDPA, so it needs 'sdpa'"
    return None
