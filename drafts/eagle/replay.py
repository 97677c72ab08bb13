"""Greedy acceptance of a head, replayed from stored answers instead of running the target again.

Greedy speculative decoding with :class:`EagleDrafter` is fully determined by the target's greedy
answer and its hidden states at each position: the drafter sees the prompt's features, proposes
``k`` tokens, the target keeps the longest matching prefix plus one token of its own, and the
drafter receives the features of the kept positions. Given an answer and its features (from
:func:`.answers.answer_batch`), this module runs the same calls on the same drafter without the
target's verify passes, so measuring a head costs only the head's own steps. Up to rounding in the
target's batched passes, the counts are those of ``SpeculativeGenerator(target, EagleDrafter(head))``
with the same ``max_new_tokens`` (a test checks it against the generator).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from specdec import DraftContext, LogitsShaper

from .drafter import EagleDrafter
from .head import EagleHead

__all__ = ["replay_acceptance"]


def replay_acceptance(
    head: EagleHead,
    sequences: Iterable[tuple[torch.Tensor, torch.Tensor, int]],
    *,
    num_draft_tokens: int,
) -> dict[str, float]:
    """Pooled greedy acceptance of ``head`` over ``(tokens [T], features [T, layers, hidden], prompt_length)``.

    ``features`` hold the head's target layers at every position of prompt + answer (extra trailing
    layers, such as the final state stored for training, are ignored). The answer is the target's
    greedy continuation, of ``T - prompt_length`` tokens (the generation budget).
    """
    drafter = EagleDrafter(head, num_draft_tokens=num_draft_tokens)
    n_layers = len(head.config.target_layers)
    accepted = tested = drafted = new = steps = count = 0
    for tokens, features, prompt_length in sequences:
        tokens, features, length = tokens.cpu(), features[:, :n_layers], int(tokens.shape[0])
        drafter.begin(DraftContext(prompt_ids=tokens[:prompt_length], shaper=LogitsShaper(),
                                   vocab_size=head.config.vocab_size, seed=0,
                                   max_new_tokens=length - prompt_length))  # fmt: skip
        if prompt_length > 1:
            drafter.observe_hidden_states(features[: prompt_length - 1])
        position = prompt_length  # committed tokens
        while position < length:
            k = min(num_draft_tokens, length - position - 1)  # the generator's budget rule
            block = drafter.propose(k).token_ids.cpu() if k > 0 else torch.empty(0, dtype=torch.long)
            truth = tokens[position : position + block.numel()]
            matches = (block == truth).long().cumprod(0)
            n_ok = int(matches.sum())
            kept = tokens[position : position + n_ok + 1].tolist()
            drafter.observe_hidden_states(features[position - 1 : position - 1 + len(kept)])
            drafter.update(kept, n_ok)
            drafted, accepted, steps = drafted + block.numel(), accepted + n_ok, steps + 1
            tested += min(n_ok + int(n_ok < block.numel()), block.numel())
            new += len(kept)
            position += len(kept)
        drafter.end()
        count += 1
    return {
        "conditional_acceptance": accepted / tested if tested else 0.0,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "mean_accepted_per_step": new / steps if steps else 0.0,
        "prompts": count,
    }
