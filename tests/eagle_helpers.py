"""Random EAGLE checkpoints in each published format, and a reference forward written from the formats' docs.

The reference works from the raw weight dict with plain tensor math (its own RMSNorm, rotary
embedding and attention), independently of ``specdec.drafts.eagle.head``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

TARGET_HIDDEN, TARGET_VOCAB, TARGET_LAYERS = 32, 160, 2


def random_eagle3_weights(*, hidden=24, heads=4, kv_heads=2, head_dim=8, inter=40, draft_vocab=64,
                          n_layers=3, target_hidden=TARGET_HIDDEN, vocab=TARGET_VOCAB, seed=0, prefix="midlayer.",
                          with_embeddings=False):  # fmt: skip
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    target_ids = torch.sort(torch.randperm(vocab, generator=g)[:draft_vocab]).values
    weights = {
        "fc.weight": w(hidden, n_layers * target_hidden, scale=0.1),
        f"{prefix}input_layernorm.weight": 1 + w(hidden, scale=0.1),
        f"{prefix}hidden_norm.weight": 1 + w(hidden, scale=0.1),
        f"{prefix}post_attention_layernorm.weight": 1 + w(hidden, scale=0.1),
        f"{prefix}self_attn.q_proj.weight": w(heads * head_dim, 2 * hidden),
        f"{prefix}self_attn.k_proj.weight": w(kv_heads * head_dim, 2 * hidden),
        f"{prefix}self_attn.v_proj.weight": w(kv_heads * head_dim, 2 * hidden),
        f"{prefix}self_attn.o_proj.weight": w(hidden, heads * head_dim),
        f"{prefix}mlp.gate_proj.weight": w(inter, hidden),
        f"{prefix}mlp.up_proj.weight": w(inter, hidden),
        f"{prefix}mlp.down_proj.weight": w(hidden, inter),
        "norm.weight": 1 + w(hidden, scale=0.1),
        "lm_head.weight": w(draft_vocab, hidden),
        "d2t": target_ids - torch.arange(draft_vocab),
    }
    weights["t2d"] = torch.zeros(vocab, dtype=torch.bool)
    weights["t2d"][target_ids] = True
    if with_embeddings:
        weights["embed_tokens.weight"] = w(vocab, hidden)
    shape = dict(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                 intermediate_size=inter, vocab_size=vocab, rms_norm_eps=1e-5, rope_theta=5000.0)  # fmt: skip
    return weights, shape


def random_eagle1_weights(*, hidden=TARGET_HIDDEN, heads=4, kv_heads=2, head_dim=8, inter=40, vocab=TARGET_VOCAB,
                          seed=0):  # fmt: skip
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    p = "layers.0."
    weights = {
        "fc.weight": w(hidden, 2 * hidden, scale=0.1),
        "fc.bias": w(hidden, scale=0.1),
        f"{p}post_attention_layernorm.weight": 1 + w(hidden, scale=0.1),
        f"{p}self_attn.q_proj.weight": w(heads * head_dim, hidden),
        f"{p}self_attn.k_proj.weight": w(kv_heads * head_dim, hidden),
        f"{p}self_attn.v_proj.weight": w(kv_heads * head_dim, hidden),
        f"{p}self_attn.o_proj.weight": w(hidden, heads * head_dim),
        f"{p}mlp.gate_proj.weight": w(inter, hidden),
        f"{p}mlp.up_proj.weight": w(inter, hidden),
        f"{p}mlp.down_proj.weight": w(hidden, inter),
    }
    shape = dict(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                 intermediate_size=inter, vocab_size=vocab, rms_norm_eps=1e-5, rope_theta=5000.0)  # fmt: skip
    return weights, shape


def write_checkpoint(folder: Path, fmt: str, weights: dict, shape: dict, *, layer_ids=(0, 1, 2), bin_file=False,
                     target_hidden=TARGET_HIDDEN, norm_before_residual=False) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "eagle3":
        config = dict(shape, architectures=["LlamaForCausalLMEagle3"], model_type="llama",
                      draft_vocab_size=int(weights["lm_head.weight"].shape[0]), target_hidden_size=target_hidden,
                      norm_before_residual=norm_before_residual,
                      eagle_config={"eagle_aux_hidden_state_layer_ids": list(layer_ids)})  # fmt: skip
    elif fmt == "speculators":
        weights = {k.replace("midlayer.", "layers.0."): v for k, v in weights.items()}
        config = {
            "architectures": ["Eagle3Speculator"],
            "speculators_model_type": "eagle3",
            "draft_vocab_size": int(weights["lm_head.weight"].shape[0]),
            "norm_before_residual": norm_before_residual,
            "target_hidden_size": target_hidden,
            "eagle_aux_hidden_state_layer_ids": list(layer_ids),
            "transformer_layer_config": dict(shape, model_type="llama"),
            "speculators_config": {"algorithm": "eagle3", "verifier": {"name_or_path": "tiny"}},
        }
    elif fmt == "eagle1":
        config = dict(shape, architectures=["LlamaForCausalLM"], model_type="llama", bias=True)
    else:
        raise AssertionError(fmt)
    (folder / "config.json").write_text(json.dumps(config))
    if bin_file:
        torch.save(weights, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return folder


# ----------------------------------------------------------------------------- reference forward


def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, positions, theta):  # x [heads, n, d]
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * inv[None, :]  # [n, d/2]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _attention(x, w, p, positions, s):
    n, heads, kv, hd = x.shape[0], s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"]
    q = (x @ w[f"{p}self_attn.q_proj.weight"].T).view(n, heads, hd).transpose(0, 1)
    k = (x @ w[f"{p}self_attn.k_proj.weight"].T).view(n, kv, hd).transpose(0, 1)
    v = (x @ w[f"{p}self_attn.v_proj.weight"].T).view(n, kv, hd).transpose(0, 1)
    q, k = _rope(q, positions, s["rope_theta"]), _rope(k, positions, s["rope_theta"])
    k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
    scores = q @ k.transpose(1, 2) / math.sqrt(hd)
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # [heads, n, hd]
    return out.transpose(0, 1).reshape(n, heads * hd) @ w[f"{p}self_attn.o_proj.weight"].T


def _mlp(x, w, p):
    gate = x @ w[f"{p}mlp.gate_proj.weight"].T
    return (torch.nn.functional.silu(gate) * (x @ w[f"{p}mlp.up_proj.weight"].T)) @ w[f"{p}mlp.down_proj.weight"].T


def reference_eagle3(w, s, features, tokens, embed, *, prefix="midlayer.", norm_before_residual=False):
    """features [n, layers * target_hidden], tokens [n] (x_{i+1}), positions 0..n-1 -> (next_hidden, draft logits)."""
    p, eps = prefix, s["rms_norm_eps"]
    h = features @ w["fc.weight"].T
    e = _rms(embed[tokens], w[f"{p}input_layernorm.weight"], eps)
    hn = _rms(h, w[f"{p}hidden_norm.weight"], eps)
    residual = hn if norm_before_residual else h
    positions = torch.arange(features.shape[0])
    a = _attention(torch.cat([e, hn], -1), w, p, positions, s) + residual
    out = a + _mlp(_rms(a, w[f"{p}post_attention_layernorm.weight"], eps), w, p)
    return out, _rms(out, w["norm.weight"], eps) @ w["lm_head.weight"].T


def reference_eagle1(w, s, features, tokens, embed, lm_head):
    p, eps = "layers.0.", s["rms_norm_eps"]
    x = torch.cat([embed[tokens], features], -1) @ w["fc.weight"].T + w["fc.bias"]
    a = _attention(x, w, p, torch.arange(features.shape[0]), s) + x
    out = a + _mlp(_rms(a, w[f"{p}post_attention_layernorm.weight"], eps), w, p)
    return out, out @ lm_head.T
