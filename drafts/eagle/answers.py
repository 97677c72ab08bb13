"""The target answers many prompts at once, and its hidden states come out of the same passes.

Training data for a head is the target's own answers with the target's hidden states at every
position. Answering one prompt at a time costs a full weight read per token (memory-bound on a
CPU: ~0.25 s per token for a 135M model on one thread); a left-padded batch of ``B`` prompts
reads the weights once for ``B`` tokens. The hidden states (and the target's next-token
distribution) of every position come out of the generation passes themselves: the prefill gives
the prompt's, each decode step the newest token's, and one last pass feeds the final tokens, so
no second forward over prompt + answer is needed.

Left padding: pad positions are masked out of attention and their outputs dropped; positions
count from each row's first real token, so every row sees what it would see alone (up to
floating-point rounding of the batched matrix products).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from specdec import InvalidArgumentError

__all__ = ["Answer", "answer_batch"]


@dataclass(frozen=True)
class Answer:
    """One prompt with its answer, and what the target computed at each of its positions."""

    tokens: torch.Tensor  # LongTensor [T]: prompt then answer (EOS included when the target stopped)
    prompt_length: int
    features: torch.Tensor  # float [T, len(layers), hidden]: the requested hidden states at each position
    top_ids: torch.Tensor  # LongTensor [T, topk]: the target's most likely next tokens (topk <= vocabulary)
    top_logprobs: torch.Tensor  # float [T, topk]: their log-probabilities (untempered)


@torch.inference_mode()
def answer_batch(
    target: PreTrainedModel,
    prompts: list[torch.Tensor],
    *,
    layers: tuple[int, ...],
    max_new_tokens: int,
    pad_id: int,
    eos_ids: tuple[int, ...] = (),
    topk: int = 32,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[Answer]:
    """Answer ``prompts`` (LongTensor [L_i] each) together; greedy, or sampled at ``temperature``.

    ``layers`` index HF's ``output_hidden_states`` (0 = embeddings, ``num_layers`` = the final
    normed state). A row stops after an EOS id or ``max_new_tokens`` answer tokens; the last
    token of each row is fed once more so that its hidden states are recorded too.
    """
    if not prompts or any(p.dim() != 1 or p.numel() == 0 for p in prompts):
        raise InvalidArgumentError("answer_batch needs one or more non-empty 1-D prompts")
    if temperature < 0 or max_new_tokens < 1 or topk < 1:
        raise InvalidArgumentError("temperature must be >= 0, max_new_tokens and topk >= 1")
    device = next(target.parameters()).device
    rows, longest = len(prompts), max(int(p.numel()) for p in prompts)
    input_ids = torch.full((rows, longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(rows, longest, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        input_ids[r, longest - p.numel() :] = p.to(device)
        mask[r, longest - p.numel() :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    tokens: list[list[int]] = [p.tolist() for p in prompts]
    feats: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    top_ids: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    top_lp: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    new = [0] * rows
    finished = [False] * rows  # the row's last token is chosen (EOS or budget)
    fed = [False] * rows  # ... and has been fed, so its hidden states are recorded
    params = inspect.signature(target.forward).parameters
    cache_kwarg = "cache" if "cache" in params else "past_key_values"  # transformers renamed it
    past, eos = None, set(eos_ids)
    first = True
    while not all(fed):
        out = target(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                     output_hidden_states=True, **{cache_kwarg: past})  # fmt: skip
        past = out[cache_kwarg]
        if out.hidden_states is None:
            raise InvalidArgumentError(f"{type(target).__name__} returns no hidden states; it cannot train a head")
        states = torch.stack([out.hidden_states[i] for i in layers], dim=2)  # [rows, n, layers, hidden]
        logits = out.logits.float()  # [rows, n, vocab]
        logprobs = torch.log_softmax(logits, dim=-1)
        best_lp, best_ids = logprobs.topk(min(topk, logprobs.shape[-1]), dim=-1)  # [rows, n, topk]
        last = logits[:, -1]
        if temperature > 0:
            probs = torch.softmax(last / temperature, dim=-1)
            chosen = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            chosen = last.argmax(dim=-1)  # [rows]
        for r in range(rows):
            if fed[r]:
                continue
            keep = slice(longest - prompts[r].numel(), None) if first else slice(None)
            feats[r].append(states[r, keep].cpu())
            top_ids[r].append(best_ids[r, keep].cpu())
            top_lp[r].append(best_lp[r, keep].cpu())
            if finished[r]:
                fed[r] = True
                continue
            token = int(chosen[r])
            tokens[r].append(token)
            new[r] += 1
            finished[r] = token in eos or new[r] >= max_new_tokens
        first = False
        step_ids = [tokens[r][-1] if not fed[r] else pad_id for r in range(rows)]
        input_ids = torch.tensor(step_ids, dtype=torch.long, device=device).unsqueeze(1)
        mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long, device=device)], dim=1)
        positions = positions[:, -1:] + 1
    return [
        Answer(
            torch.tensor(tokens[r]),
            int(prompts[r].numel()),
            torch.cat(feats[r]),
            torch.cat(top_ids[r]),
            torch.cat(top_lp[r]),
        )  # fmt: skip
        for r in range(rows)
    ]
