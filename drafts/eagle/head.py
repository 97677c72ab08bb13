"""The EAGLE draft head: one decoder layer that drafts in the target's hidden-state space.

Two shapes of head share this module:

``eagle3``  (EAGLE-3, SpecForge, ``speculators``)
    The target's hidden states from a few layers (``target_layers``, each ``[target_hidden]``)
    are concatenated and projected by ``fc`` to one feature ``h`` of size ``hidden``. One
    decoder layer reads ``cat(input_layernorm(embed(token)), hidden_norm(h))`` (so its
    attention projections take ``2 * hidden`` inputs) and returns the next feature ``g``
    (before the final norm); ``lm_head(norm(g))`` gives logits over the *draft* vocabulary,
    mapped to target ids by ``d2t`` (see :mod:`.vocab`). The next draft step reads ``g`` in
    place of ``h``.
``eagle1``  (EAGLE-1)
    The feature is the target's last hidden state (after its final norm, what its LM head
    reads). ``fc`` maps ``cat(embed(token), feature)`` to ``hidden``; one decoder layer
    (without its input norm) returns the predicted next feature, read by the target's own
    LM head.

Positions: the head's step at feature position ``i`` reads the feature of token ``x_i`` and the
embedding of ``x_{i+1}`` and predicts ``x_{i+2}``; its rotary position is ``i`` (what vLLM and
SGLang use), and each later draft step adds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from specdec import InvalidArgumentError

__all__ = ["EagleHeadConfig", "EagleHead", "HeadKV"]

HeadKind = Literal["eagle3", "eagle1"]


@dataclass(frozen=True, kw_only=True)
class EagleHeadConfig:
    """The shape of a head and what it needs from its target."""

    kind: HeadKind
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int  # the target's vocabulary (rows of the token embedding)
    draft_vocab_size: int  # rows of the head's LM head (eagle1: the target's vocabulary)
    target_hidden_size: int
    target_layers: tuple[int, ...]  # hidden-state indices as in HF ``output_hidden_states`` (0 = embeddings)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    norm_before_residual: bool = False  # eagle3: the residual is taken after hidden_norm
    fc_bias: bool = False  # eagle1 heads carry a bias on fc
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in ("eagle3", "eagle1"):
            raise InvalidArgumentError(f"head kind must be 'eagle3' or 'eagle1', got {self.kind!r}")
        for name in (
            "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "draft_vocab_size", "target_hidden_size",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"head config {name} must be an integer >= 1, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InvalidArgumentError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.draft_vocab_size > self.vocab_size:
            raise InvalidArgumentError(
                f"draft_vocab_size ({self.draft_vocab_size}) exceeds the vocabulary ({self.vocab_size})"
            )
        layers = tuple(self.target_layers)
        if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise InvalidArgumentError(f"target_layers must be non-negative layer indices, got {self.target_layers!r}")
        object.__setattr__(self, "target_layers", layers)
        if self.kind == "eagle1":
            if len(layers) != 1:
                raise InvalidArgumentError(f"an eagle1 head reads one layer (the last), got {layers}")
            if self.target_hidden_size != self.hidden_size:
                raise InvalidArgumentError(
                    f"an eagle1 head's hidden size ({self.hidden_size}) must equal the target's "
                    f"({self.target_hidden_size})"
                )

    @property
    def feature_size(self) -> int:
        """Width of the concatenated target features the head reads."""
        return self.target_hidden_size * len(self.target_layers)

    def llama_config(self) -> LlamaConfig:
        """The layer hyper-parameters as a transformers ``LlamaConfig`` (for norms, MLP and rotary)."""
        return LlamaConfig(  # type: ignore[call-arg]  # LlamaConfig takes rope_theta; its annotations omit it
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            num_hidden_layers=1,
        )


@dataclass
class HeadKV:
    """Keys and values of the head's attention for positions ``0..length-1`` (position-indexed)."""

    keys: torch.Tensor  # [kv_heads, capacity, head_dim]
    values: torch.Tensor  # [kv_heads, capacity, head_dim]
    length: int = 0

    @staticmethod
    def empty(config: EagleHeadConfig, *, device, dtype, capacity: int = 256) -> HeadKV:
        shape = (config.num_key_value_heads, capacity, config.head_dim)
        return HeadKV(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``[kv_heads, n, head_dim]`` after the current length; return every stored key and value."""
        n = keys.shape[1]
        end = self.length + n
        if end > self.keys.shape[1]:
            grow = max(end, 2 * self.keys.shape[1])
            pad = (0, 0, 0, grow - self.keys.shape[1])
            self.keys, self.values = F.pad(self.keys, pad), F.pad(self.values, pad)
        self.keys[:, self.length : end] = keys
        self.values[:, self.length : end] = values
        self.length = end
        return self.keys[:, :end], self.values[:, :end]

    def truncate(self, length: int) -> None:
        """Keep positions ``0..length-1``; the rollback is a pointer move."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a head cache of {self.length} positions to {length}")
        self.length = length


class _Attention(nn.Module):
    def __init__(self, config: EagleHeadConfig, in_features: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.q_proj = nn.Linear(in_features, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(in_features, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(in_features, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries, keys and values of ``x [n, in]``: ``[heads, n, d]``, ``[kv_heads, n, d]`` twice."""
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.heads, self.head_dim).transpose(0, 1)
        k = self.k_proj(x).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=0)
        return q, k, v

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``q [heads, n, d]`` over ``keys/values [kv_heads, m, d]`` where ``mask [n, m]`` is True."""
        group = self.heads // self.kv_heads
        if group > 1:
            keys, values = keys.repeat_interleave(group, dim=0), values.repeat_interleave(group, dim=0)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [heads, n, d]
        return self.o_proj(out.transpose(0, 1).reshape(q.shape[1], self.heads * self.head_dim))


class _Layer(nn.Module):
    def __init__(self, config: EagleHeadConfig) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        wide = config.kind == "eagle3"
        self.self_attn = _Attention(config, 2 * hidden if wide else hidden)
        self.mlp = LlamaMLP(config.llama_config())
        self.input_layernorm = LlamaRMSNorm(hidden, eps=eps)  # eagle3: norms the token embedding
        self.post_attention_layernorm = LlamaRMSNorm(hidden, eps=eps)
        self.hidden_norm = LlamaRMSNorm(hidden, eps=eps) if wide else None


class EagleHead(nn.Module):
    """One EAGLE head. Token embeddings (and an eagle1 head's LM head) may be the target's own tensors.

    The head itself is stateless; :class:`HeadKV` holds one sequence's keys and values.
    """

    d2t: torch.Tensor  # a registered buffer
    norm: LlamaRMSNorm | None

    def __init__(self, config: EagleHeadConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        if config.kind == "eagle3":
            self.fc = nn.Linear(config.feature_size, hidden, bias=config.fc_bias)
            self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        else:
            self.fc = nn.Linear(2 * hidden, hidden, bias=config.fc_bias)
            self.norm = None
        self.layers = nn.ModuleList([_Layer(config)])
        self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
        self.rotary = LlamaRotaryEmbedding(config.llama_config())
        # target id of each draft id is draft_id + d2t[draft_id] (the published convention)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))

    @property
    def target_ids(self) -> torch.Tensor:
        """LongTensor [draft_vocab]: the target id of each draft id."""
        return torch.arange(self.d2t.shape[0], device=self.d2t.device) + self.d2t

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Target features ``[n, len(target_layers), target_hidden]`` -> head inputs ``[n, hidden]``."""
        flat = features.reshape(features.shape[0], -1).to(self.lm_head.weight.dtype)
        return self.fc(flat) if self.config.kind == "eagle3" else flat

    def step(
        self,
        hidden: torch.Tensor,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: HeadKV | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One head pass over ``n`` positions, causal over ``cache`` and themselves.

        Args:
            hidden: [n, hidden], projected target features or the head's own previous output.
            token_ids: LongTensor [n], the token after each feature's token (``x_{i+1}``).
            positions: LongTensor [n], rotary positions; ``cache`` must hold exactly the earlier ones.
            cache: the sequence's keys and values, extended in place (``None``: no history).

        Returns:
            ``(next_hidden [n, hidden], logits [n, draft_vocab])``.
        """
        layer = cast(_Layer, self.layers[0])
        q, k, v, residual, _ = self._attention_inputs(hidden, token_ids, positions)
        n = hidden.shape[0]
        past = cache.length if cache is not None else 0
        keys, values = cache.append(k, v) if cache is not None else (k, v)
        # query i sits at cache position past + i and sees every key up to it
        mask = torch.ones(n, past + n, dtype=torch.bool, device=hidden.device).tril(diagonal=past)
        return self.finish(layer.self_attn.attend(q, keys, values, mask), residual)

    def _attention_inputs(self, hidden: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor):
        layer = cast(_Layer, self.layers[0])
        embeds = self.embed_tokens(token_ids).to(hidden.dtype)  # [n, hidden]
        if self.config.kind == "eagle3":
            assert layer.hidden_norm is not None  # set for eagle3
            normed = layer.hidden_norm(hidden)
            residual = normed if self.config.norm_before_residual else hidden
            x = torch.cat([layer.input_layernorm(embeds), normed], dim=-1)  # [n, 2 * hidden]
        else:
            x = self.fc(torch.cat([embeds, hidden], dim=-1))  # [n, hidden]
            residual = x
        cos, sin = self.rotary(x, positions.unsqueeze(0))
        q, k, v = layer.self_attn.project(x, cos[0], sin[0])
        return q, k, v, residual, x

    def finish(self, attended: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual, MLP and LM head after attention: ``(next_hidden [n, hidden], logits [n, draft_vocab])``."""
        layer = cast(_Layer, self.layers[0])
        h = attended + residual
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, self.lm_head(self.norm(h) if self.norm is not None else h)

    def qkv(self, hidden: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor):
        """``(q, k, v, residual)`` for callers that arrange attention themselves (training's unrolled steps)."""
        q, k, v, residual, _ = self._attention_inputs(hidden, token_ids, positions)
        return q, k, v, residual

    def attend(self, q, keys, values, mask) -> torch.Tensor:
        return cast(_Layer, self.layers[0]).self_attn.attend(q, keys, values, mask)
