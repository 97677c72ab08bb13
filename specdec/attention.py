"""Attention as one opaque call for compiled passes: ATen's SDPA kernel, grouped-query heads unrepeated.

Compiled with inductor on a CPU, transformers' SDPA attention costs several
times its eager price in a one-token or verify step of specdec's cache: with
the 4-D mask specdec passes, transformers repeats the key/value heads for
grouped-query attention (``repeat_kv``) while dynamo traces, and inductor
lowers the masked attention into its own generated kernel. Measured on
SmolLM2-135M's shapes (9 query heads, 3 key/value heads, 512 slots, one
query; one thread, AVX512): eager ``repeat_kv`` + SDPA 754 us, eager SDPA with
``enable_gqa`` 212 us, the same two compiled 1404 us and 462 us. Thirty layers
of the compiled one made attention a third of the compiled one-token step.

:func:`enable_opaque_attention` wraps the attention function transformers
has registered as ``"sdpa"`` (the models look it up by name at every call)
with one that, for calls carrying the forward keyword :data:`OPAQUE_KWARG`,
runs ``specdec::sdpa``: a custom op (so inductor calls it as it is, like a
product) around ATen's ``scaled_dot_product_attention`` with ``enable_gqa``.
Any other call goes to the wrapped function unchanged, so no other model's
output changes and no model configuration is touched; a call with settings
the op does not model (dropout, soft-capping, attention sinks, ...) goes there
too. Grouped heads read the same keys as repeated ones, in the same order:
the outputs are the same numbers (the compiled path's tests compare tokens
with the model's own ``generate``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["OPAQUE_KWARG", "enable_opaque_attention", "opaque_attention"]

#: The forward keyword that asks for the opaque attention call (``True``).
OPAQUE_KWARG = "specdec_opaque_attention"

#: Keywords transformers' attention layers pass that the op either honours (``scaling``) or may ignore:
#: the 4-D mask specdec gives already encodes causality and sliding windows.
_IGNORABLE = {
    "scaling",
    "dropout",
    "is_causal",
    "sliding_window",
    "position_ids",
    "cache_position",
    "output_attentions",
    "use_cache",
    "output_hidden_states",
    "return_dict",
}


@torch.library.custom_op("specdec::sdpa", mutates_args=())
def _sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """[batch, heads, q, dim] attention of ``query`` over ``key``/``value`` ([batch, kv_heads, slots, dim])."""
    grouped = key.shape[1] != query.shape[1]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=grouped)


@_sdpa.register_fake
def _sdpa_shape(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float):
    return query.new_empty(*query.shape[:-1], value.shape[-1])


def opaque_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention-function signature; returns ``([batch, q, heads, dim], None)``."""
    wanted = bool(kwargs.pop(OPAQUE_KWARG, False))
    if not wanted or not _supported(query, key, attention_mask, kwargs):
        return _wrapped(module, query, key, value, attention_mask, **kwargs)
    assert attention_mask is not None  # _supported checked it
    scale = kwargs.get("scaling")
    scale = float(scale) if scale is not None else query.shape[-1] ** -0.5
    out = torch.ops.specdec.sdpa(query, key, value, attention_mask.to(query.dtype), scale)
    return out.transpose(1, 2).contiguous(), None


def _supported(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, kwargs: dict[str, Any]) -> bool:
    if mask is None or mask.dim() != 4 or mask.dtype == torch.bool:
        return False
    if query.shape[1] % key.shape[1] != 0 or float(kwargs.get("dropout") or 0.0) != 0.0:
        return False
    return all(value is None or name in _IGNORABLE for name, value in kwargs.items())


#: The function registered as ``"sdpa"`` before :func:`enable_opaque_attention` (transformers' own, or a
#: wrapper another part of specdec installed: calls are passed down the chain).
_wrapped: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] = sdpa_attention_forward
_enabled = False


def enable_opaque_attention() -> None:
    """Register :func:`opaque_attention` as transformers' ``"sdpa"`` attention, wrapping the one there.

    Once per process: a second call, even after another wrapper was registered on top, changes nothing
    (wrapping again would put this function below itself in the chain).
    """
    global _wrapped, _enabled
    if _enabled:
        return
    _wrapped = ALL_ATTENTION_FUNCTIONS.get("sdpa") or sdpa_attention_forward
    AttentionInterface.register("sdpa", opaque_attention)
    _enabled = True
