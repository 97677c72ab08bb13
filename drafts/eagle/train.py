"""Training an EAGLE-3 head for a target: ``train(target, tokenizer, prompts, out_dir)``.

1. Checks (before any long work): prompts, a target whose hidden states can be read and whose
   cache rolls back, layer ids, memory and disk for the data.
2. Data (:mod:`.shards`): the target answers the training prompts greedily, many at a time; its
   hidden states and top-k next-token log-probabilities go to disk in resumable shards and are
   streamed back one sequence at a time.
3. Training: at every position ``i`` the head reads the target's features of ``x_i`` and the token
   ``x_{i+1}`` and predicts ``x_{i+2}`` (soft cross-entropy against the target's distribution over
   the draft vocabulary: its stored top-k, or recomputed from the final hidden state), and its
   output is pulled towards the target's next projected feature
   (smooth L1, ``feature_weight``). ``unroll`` > 1 also trains the later draft steps, which read the
   head's own output instead of the target's (EAGLE-3's training-time test, with the attention
   pattern the drafter uses at inference).
4. Evaluation: greedy speculative decoding with :class:`EagleDrafter` on held-out prompts (the
   conditional acceptance per drafted token), then the head is saved in the ``speculators`` format
   with a model card. Checkpoints every ``checkpoint_every`` steps make a run resumable.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from specdec import InvalidArgumentError, SpecDecError, SpeculativeGenerator, check_rollback_support

from .card import write_card
from .data import capture_layers, encode_prompt, pad_token_id
from .drafter import EagleDrafter
from .formats import save_speculators, target_shape
from .head import EagleHead, EagleHeadConfig
from .shards import DataSettings, build_views
from .vocab import draft_vocab_from_counts

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "train", "evaluate", "default_train_layers"]


class TrainingError(SpecDecError):
    """Training cannot start or continue (memory, disk, an incompatible checkpoint)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train a head; every field has a default that suits a small target on a CPU."""

    target_layers: tuple[int, ...] | None = None  # None: a low, a middle and a high layer
    draft_vocab_size: int | None = None  # None: min(target vocabulary, 32768), the most frequent ids
    intermediate_size: int | None = None  # None: the target's MLP width
    max_new_tokens: int = 64  # length of the target's answers (training data)
    held_out: int = 4  # prompts kept out of training, for the acceptance measurement
    epochs: int = 2
    batch_size: int = 4  # sequences per optimizer step
    learning_rate: float = 2e-3
    warmup_steps: int = 10
    unroll: int = 2  # draft steps trained per position (>= 1)
    feature_weight: float = 0.1
    seed: int = 0
    checkpoint_every: int = 50
    num_draft_tokens: int = 4  # k for the evaluation and written into the speculators config
    chat: bool | None = None  # apply the tokenizer's chat template (None: when it has one)
    save_dtype: str = "float32"  # or "float16", "bfloat16"
    answer_batch_size: int = 16  # prompts the target answers at once (left-padded) while building data
    shard_size: int = 64  # prompts per data shard (the unit an interrupted data build resumes from)
    topk: int = 32  # the target's next-token log-probabilities stored per position
    sampled_views: int = 0  # extra answers per prompt sampled at sample_temperature (more data per prompt)
    sample_temperature: float = 0.7
    soft_targets: str = "topk"  # "topk": the stored top-k; "full": recompute from the final hidden state

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "epochs", "batch_size", "unroll", "checkpoint_every", "num_draft_tokens",
                     "answer_batch_size", "shard_size", "topk"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.held_out, bool) or not isinstance(self.held_out, int) or self.held_out < 0:
            raise InvalidArgumentError(f"held_out must be an integer >= 0, got {self.held_out!r}")
        if not self.learning_rate > 0 or not self.feature_weight >= 0 or self.warmup_steps < 0:
            raise InvalidArgumentError("learning_rate must be > 0, feature_weight >= 0 and warmup_steps >= 0")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise InvalidArgumentError(f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}")
        if isinstance(self.sampled_views, bool) or not isinstance(self.sampled_views, int) or self.sampled_views < 0:
            raise InvalidArgumentError(f"sampled_views must be an integer >= 0, got {self.sampled_views!r}")
        if not self.sample_temperature > 0:
            raise InvalidArgumentError(f"sample_temperature must be > 0, got {self.sample_temperature!r}")
        if self.soft_targets not in ("topk", "full"):
            raise InvalidArgumentError(f"soft_targets must be 'topk' or 'full', got {self.soft_targets!r}")
        if self.target_layers is not None:
            object.__setattr__(self, "target_layers", tuple(self.target_layers))


@dataclass(frozen=True)
class TrainResult:
    path: Path  # the head folder (speculators format)
    steps: int
    train_tokens: int  # tokens of training data (one epoch)
    seconds: float  # wall time of this call
    acceptance: dict[str, float]  # held-out: conditional_acceptance, acceptance_rate, mean_accepted_per_step


def default_train_layers(num_layers: int) -> tuple[int, ...]:
    """A low, a middle and a high layer (EAGLE-3's choice), clamped for very shallow targets."""
    return tuple(sorted({min(2, num_layers), num_layers // 2, max(num_layers - 3, 0)}))


def _check_resources(target: PreTrainedModel, config: EagleHeadConfig, n_prompts: int, prompt_tokens: int,
                     max_new: int, work: Path) -> None:  # fmt: skip
    """Refuse before any long work when the data would not fit on disk or training not in memory."""
    import psutil

    layers = len(config.target_layers) + 1
    data_bytes = (prompt_tokens + n_prompts * max_new) * (layers * config.target_hidden_size * 2 + 6 * 32)
    work.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(work).free
    if data_bytes > 0.9 * free_disk:
        raise TrainingError(
            f"the hidden states need about {data_bytes / 2**20:.0f} MiB on disk but {work} has "
            f"{free_disk / 2**20:.0f} MiB free; use fewer prompts, shorter answers or another --work-dir"
        )
    head_params = sum(p.numel() for p in EagleHead(config).parameters()) - config.vocab_size * config.hidden_size
    longest = max_new + max(prompt_tokens // max(n_prompts, 1), 1) * 4
    need = 16 * head_params + 4 * config.vocab_size * config.target_hidden_size
    need += 4 * longest * (3 * config.vocab_size + 8 * config.intermediate_size)
    available = psutil.virtual_memory().available
    if need > 0.8 * available:
        raise TrainingError(
            f"training needs about {need / 2**20:.0f} MiB of memory but {available / 2**20:.0f} MiB are available; "
            "use a smaller draft vocabulary or intermediate size, or shorter answers"
        )


def _head_config(target: PreTrainedModel, cfg: TrainConfig, layers: tuple[int, ...]) -> EagleHeadConfig:
    hidden, vocab, _ = target_shape(target)
    text = target.config.get_text_config(decoder=True) if hasattr(target.config, "get_text_config") else target.config
    heads = int(getattr(text, "num_attention_heads", None) or text.n_head)
    kv = int(getattr(text, "num_key_value_heads", None) or heads)
    rope = getattr(text, "rope_parameters", None) or {}
    return EagleHeadConfig(
        kind="eagle3",
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
        intermediate_size=cfg.intermediate_size or int(getattr(text, "intermediate_size", None) or 4 * hidden),
        vocab_size=vocab,
        draft_vocab_size=min(cfg.draft_vocab_size or 32768, vocab),
        target_hidden_size=hidden,
        target_layers=layers,
        rms_norm_eps=float(getattr(text, "rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))),
    )


def _target_probs(item: dict[str, torch.Tensor], draft_of: torch.Tensor, draft_size: int, lm_weight, lm_bias,
                  target_ids: torch.Tensor | None, soft_targets: str) -> torch.Tensor:  # fmt: skip
    """The target's next-token probabilities over the draft vocabulary, ``[T, draft_vocab]`` (mass outside is lost).

    ``draft_of`` [vocab]: the draft id of each target id, -1 outside the draft vocabulary.
    """
    if soft_targets == "full":  # the target's LM head over the stored final state: [T, vocab] per sequence
        full = item["features"][:, -1] @ lm_weight.T + (lm_bias if lm_bias is not None else 0)
        probs = torch.softmax(full, dim=-1)
        return probs[:, target_ids] if target_ids is not None else probs
    ids = draft_of[item["top_ids"]]  # [T, topk]
    mass = item["top_logprobs"].exp() * (ids >= 0)
    return torch.zeros(ids.shape[0], draft_size).scatter_add_(1, ids.clamp(min=0), mass)


def _sequence_loss(head: EagleHead, tokens, feats, target_probs, cfg: TrainConfig):
    """Summed losses of one sequence and the number of scored positions (``None`` if too short).

    ``feats`` [T, layers + 1, hidden] (the final state last, unused here); ``target_probs`` [T, draft_vocab].
    """
    length, n_layers = tokens.shape[0], feats.shape[1] - 1
    if length < 3:
        return None
    aux = feats[:, :n_layers]
    n1 = length - 1
    projected = head.project(aux[:n1])
    q, k1, v1, residual = head.qkv(projected, tokens[1:], torch.arange(n1))
    causal = torch.ones(n1, n1, dtype=torch.bool).tril()
    out, logits = head.finish(head.attend(q, k1, v1, causal), residual)
    ce = -(target_probs[1:] * F.log_softmax(logits, dim=-1)).sum(-1).sum()
    scored = n1
    agree = int((logits.argmax(-1) == target_probs[1:].argmax(-1)).sum())  # step-1 top-1 agreement
    feature = F.smooth_l1_loss(out[:-1], head.project(aux[1:n1]).detach(), reduction="sum") / out.shape[-1]
    keys, values, prev = [k1], [v1], out
    for s in range(2, cfg.unroll + 1):
        n = length - s
        if n < 1:
            break
        q, k, v, residual = head.qkv(prev[:n], tokens[s : s + n], torch.arange(n) + s - 1)
        keys_s = torch.cat([keys[0]] + [kk[:, :n] for kk in keys[1:]] + [k], dim=1)
        values_s = torch.cat([values[0]] + [vv[:, :n] for vv in values[1:]] + [v], dim=1)
        eye = torch.eye(n, dtype=torch.bool)
        mask = torch.cat([causal[:n]] + [eye] * (s - 1), dim=1)
        prev, logits = head.finish(head.attend(q, keys_s, values_s, mask), residual)
        ce = ce - (target_probs[s : s + n] * F.log_softmax(logits, dim=-1)).sum(-1).sum()
        scored += n
        keys.append(k)
        values.append(v)
    return ce + cfg.feature_weight * feature, scored, agree, n1


def evaluate(target: PreTrainedModel, head: EagleHead, prompts: Sequence[torch.Tensor], *, max_new_tokens: int,
             num_draft_tokens: int) -> dict[str, float]:  # fmt: skip
    """Greedy speculative decoding with the head on ``prompts`` (LongTensor [1, L] each): pooled acceptance."""
    generator = SpeculativeGenerator(target, EagleDrafter(head, num_draft_tokens=num_draft_tokens))
    accepted = tested = drafted = new = steps = 0
    for ids in prompts:
        stats = generator.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, num_draft_tokens=num_draft_tokens
        ).stats
        accepted, tested, drafted = accepted + stats.accepted, tested + stats.tested, drafted + stats.drafted
        new, steps = new + stats.new_tokens, steps + stats.steps
    return {
        "conditional_acceptance": accepted / tested if tested else 0.0,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "mean_accepted_per_step": new / steps if steps else 0.0,
        "prompts": len(prompts),
    }


def train(
    target: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[list[int]],
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    work_dir: str | Path | None = None,
    target_name: str = "",
    data_name: str = "",
    progress: bool = True,
    on_checkpoint: Callable[[int, EagleHead], None] | None = None,
) -> TrainResult:
    """Train an EAGLE-3 head for ``target`` and save it to ``out_dir`` (speculators format + README.md).

    ``prompts`` are strings (encoded with ``tokenizer``) or token-id lists. The last
    ``config.held_out`` prompts (after a seeded shuffle) are only used for evaluation. Data and
    checkpoints live in ``work_dir`` (default ``out_dir/train-work``); calling again with the same
    arguments resumes from the last checkpoint. ``on_checkpoint(step, head)`` runs after
    each checkpoint is written (the head in training mode; it must not change it).
    """
    started = time.perf_counter()
    prompts = cast("Sequence[str] | Sequence[list[int]]", list(prompts))
    if not prompts:
        raise InvalidArgumentError("no prompts: pass at least one training prompt (and the held-out ones)")
    if len(prompts) <= config.held_out:
        raise InvalidArgumentError(
            f"{len(prompts)} prompts leave none for training after holding out {config.held_out}; pass more prompts"
        )
    check_rollback_support(target)
    _, _, num_layers = target_shape(target)
    layers = config.target_layers or default_train_layers(num_layers)
    if any(not 0 <= i <= num_layers for i in layers):
        raise InvalidArgumentError(f"target_layers {layers} must lie in 0..{num_layers} for this target")
    head_config = _head_config(target, config, layers)
    device = next(target.parameters()).device
    probe = capture_layers(target, torch.tensor([0, 0], device=device), layers + (num_layers,))
    if probe.shape[1:] != (len(layers) + 1, head_config.target_hidden_size):
        raise InvalidArgumentError(f"cannot read hidden states of shape [*, {len(layers) + 1}, hidden] from the target")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(config.seed)).tolist()
    held = set(order[len(prompts) - config.held_out :])
    # training prompts keep their order, so appending prompts leaves the data's earlier shards valid
    every = cast("list[str | list[int]]", list(prompts))
    train_prompts = [p for i, p in enumerate(every) if i not in held]
    eval_prompts = [prompts[i] for i in order[len(prompts) - config.held_out :]]
    encoded_eval = [encode_prompt(tokenizer, p, config.chat).to(device) for p in eval_prompts]
    prompt_tokens = sum(int(encode_prompt(tokenizer, p, config.chat).shape[1]) for p in train_prompts)
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir / "train-work"
    _check_resources(target, head_config, len(train_prompts), prompt_tokens, config.max_new_tokens, work)

    eos = getattr(target.generation_config, "eos_token_id", None)
    eos_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    settings = DataSettings(layers=tuple(layers) + (num_layers,), max_new_tokens=config.max_new_tokens,
                            topk=config.topk, chat=config.chat)  # fmt: skip
    with tqdm(total=len(train_prompts) * config.max_new_tokens * (1 + config.sampled_views), unit="tok",
              desc="answering prompts", disable=not progress) as bar:  # fmt: skip
        data = build_views(target, tokenizer, train_prompts, work, settings, sampled_views=config.sampled_views,
                           temperature=config.sample_temperature, shard_size=config.shard_size,
                           batch_size=config.answer_batch_size, pad_id=pad_token_id(target, tokenizer),
                           eos_ids=tuple(eos_ids), progress=bar.update)  # fmt: skip
    torch.manual_seed(config.seed)
    d2t = draft_vocab_from_counts(data.token_counts, head_config.draft_vocab_size, always=eos_ids)
    head = EagleHead(head_config)
    lm = target.get_output_embeddings()
    lm_weight = lm.weight.detach().to("cpu", torch.float32)
    lm_bias = lm.bias.detach().to("cpu", torch.float32) if getattr(lm, "bias", None) is not None else None
    with torch.no_grad():
        head.d2t.copy_(d2t)
        head.embed_tokens.weight.copy_(cast(torch.Tensor, target.get_input_embeddings().weight).detach().float().cpu())
        head.lm_head.weight.copy_(lm_weight[head.target_ids])  # start from the target's own output rows
    head.embed_tokens.requires_grad_(False)
    reduced = head_config.draft_vocab_size < head_config.vocab_size
    target_ids = head.target_ids if reduced else None
    draft_of = torch.full((head_config.vocab_size,), -1, dtype=torch.long)
    draft_of[head.target_ids] = torch.arange(head_config.draft_vocab_size)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    per_epoch = math.ceil(len(data) / config.batch_size)
    total = per_epoch * config.epochs
    step = _resume(work / "checkpoint.pt", head, optimizer, config, head_config)

    def learning_rate(s: int) -> float:  # linear warmup, cosine decay; a pure function of the step (resumable)
        return (
            config.learning_rate
            * min(1.0, (s + 1) / max(config.warmup_steps, 1))
            * 0.5
            * (1 + math.cos(math.pi * s / total))
        )

    head.train()
    seen_tokens, t0 = 0, time.perf_counter()
    with tqdm(total=total, initial=step, desc="training head", unit="step", disable=not progress) as bar:
        while step < total:
            epoch, index = divmod(step, per_epoch)
            perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed + 1 + epoch)).tolist()
            batch = perm[index * config.batch_size : (index + 1) * config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step)
            total_loss, total_scored, agree, first = 0.0, 0, 0, 0
            for item in data.iterate(batch):
                tokens, feats = item["tokens"], item["features"]
                probs = _target_probs(item, draft_of, head_config.draft_vocab_size, lm_weight, lm_bias, target_ids,
                                      config.soft_targets)  # fmt: skip
                result = _sequence_loss(head, tokens, feats, probs, config)
                if result is None:
                    continue
                loss, scored, n_agree, n_first = result
                loss.backward()
                total_loss, total_scored = total_loss + loss.item(), total_scored + scored
                agree, first = agree + n_agree, first + n_first
                seen_tokens += int(tokens.shape[0])
            if total_scored:
                for p in params:
                    if p.grad is not None:
                        p.grad.div_(total_scored)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
            step += 1
            rate = seen_tokens / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{total_loss / max(total_scored, 1):.3f}", top1=f"{agree / max(first, 1):.2f}",
                            tok_s=f"{rate:.0f}")  # fmt: skip
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == total:
                _save_checkpoint(work / "checkpoint.pt", head, optimizer, step, config, head_config)
                if on_checkpoint is not None:
                    on_checkpoint(step, head)
    head.eval().requires_grad_(False)
    head = head.to(device=device, dtype=cast(torch.Tensor, target.get_input_embeddings().weight).dtype)
    acceptance = evaluate(target, head, encoded_eval, max_new_tokens=config.max_new_tokens,
                          num_draft_tokens=config.num_draft_tokens) if encoded_eval else {}  # fmt: skip
    save_speculators(head, out_dir, verifier=target_name or getattr(target.config, "_name_or_path", "") or "unknown",
                     verifier_architectures=list(getattr(target.config, "architectures", None) or []),
                     num_draft_tokens=config.num_draft_tokens,
                     dtype=getattr(torch, config.save_dtype))  # fmt: skip
    seconds = time.perf_counter() - started
    result = TrainResult(out_dir, step, data.num_tokens, seconds, acceptance)
    write_card(out_dir, result, config, head_config, target_name, data_name, len(train_prompts), len(eval_prompts))
    return result


def _fingerprint(config: TrainConfig, head_config: EagleHeadConfig) -> str:
    return json.dumps({"train": asdict(config), "head": asdict(head_config)}, sort_keys=True, default=str)


def _same_settings(saved: str, config: TrainConfig, head_config: EagleHeadConfig) -> bool:
    """A checkpoint's settings equal these; a field added to TrainConfig since then matches at its default."""
    now, old = json.loads(_fingerprint(config, head_config)), json.loads(saved)
    defaults = json.loads(json.dumps(asdict(TrainConfig()), default=str))
    for key, value in now["train"].items():
        if key not in old.get("train", {}) and value == defaults[key]:
            old.setdefault("train", {})[key] = value
    return bool(old == now)


def _save_checkpoint(path: Path, head, optimizer, step, config, head_config) -> None:
    state = {k: v for k, v in head.state_dict().items() if k != "embed_tokens.weight"}
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "head": state, "optimizer": optimizer.state_dict(),
                "fingerprint": _fingerprint(config, head_config)}, tmp)  # fmt: skip
    tmp.replace(path)  # a crash mid-write leaves the previous checkpoint intact


def _resume(path: Path, head, optimizer, config, head_config) -> int:
    if not path.is_file():
        return 0
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not _same_settings(saved.get("fingerprint", "{}"), config, head_config):
        raise TrainingError(f"{path} was written with other settings; delete it (or the work dir) to start over")
    head.load_state_dict(saved["head"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    return int(saved["step"])
