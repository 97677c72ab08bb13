"""The protocol every drafter implements.

A drafter guesses the next tokens; the generator verifies them. One
generation goes::

    drafter.begin(context)            # the prompt and how distributions are shaped
    repeat:
        block = drafter.propose(k)    # up to k tokens (an empty block is fine)
        drafter.update(token_ids, n)  # the verified tokens; roll back what was rejected
    drafter.end()

``update`` receives the tokens appended to the sequence: the ``n`` accepted
draft tokens followed by the target's own token. A drafter with state (its own
KV cache) rolls it back to the accepted prefix there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .errors import InvalidArgumentError
from .logits import LogitsShaper
from .types import DraftBlock

__all__ = ["Drafter", "DraftContext", "HiddenStateDrafter", "requested_layers"]


@dataclass(frozen=True)
class DraftContext:
    """What a drafter learns at the start of a generation."""

    prompt_ids: torch.Tensor  # LongTensor [prompt_len], on the CPU
    shaper: LogitsShaper  # the target's recipe for turning logits into probabilities
    vocab_size: int  # the target's vocabulary size
    seed: int  # seed for the drafter's own random draws
    max_new_tokens: int
    #: True when the generator picks k itself (``num_draft_tokens="auto"``): a drafter that knows its
    #: own confidence may then propose fewer than ``max_tokens``. With a fixed k it must not stop early.
    adaptive: bool = False

    @property
    def do_sample(self) -> bool:
        return self.shaper.do_sample


@runtime_checkable
class Drafter(Protocol):
    """Proposes tokens ahead of the target and follows the verified sequence."""

    #: k used when ``generate`` gets ``num_draft_tokens=None``.
    default_num_draft_tokens: int
    #: The drafter's vocabulary size, checked against the target's; ``None`` if it has none.
    vocab_size: int | None

    def begin(self, context: DraftContext) -> None:
        """Start a new sequence from ``context.prompt_ids``, dropping any earlier state."""
        ...

    def propose(self, max_tokens: int) -> DraftBlock:
        """Propose at most ``max_tokens`` (>= 1) next tokens.

        Sampling drafters must draw their tokens from ``draft_probs`` shaped by
        ``context.shaper`` and return those probabilities; deterministic
        drafters return ``draft_probs=None``.
        """
        ...

    def update(self, token_ids: list[int], num_accepted: int) -> None:
        """Learn the verified block: ``token_ids[:num_accepted]`` were the first
        ``num_accepted`` draft tokens, ``token_ids[num_accepted:]`` (at most one)
        came from the target. Generation may stop before the target's token, so
        ``len(token_ids)`` can equal ``num_accepted``."""
        ...

    def end(self) -> None:
        """The generation finished (or failed); release per-sequence state."""
        ...


@runtime_checkable
class HiddenStateDrafter(Drafter, Protocol):
    """A drafter that reads the target's hidden states (an EAGLE head): the one extension of :class:`Drafter`.

    The generator checks ``target_layers`` against the target when it is built, and hands the
    drafter those layers' hidden states from the forward passes it runs anyway (the prefill and
    each verify pass), for the positions the target kept. Drafters without ``target_layers`` get
    nothing and cost nothing.

    Layer ids follow Hugging Face ``output_hidden_states``: ``i < num_layers`` is the input of
    decoder layer ``i`` (0: the embeddings), ``num_layers`` the final, normed hidden state.
    """

    target_layers: tuple[int, ...]

    def observe_hidden_states(self, hidden_states: torch.Tensor) -> None:
        """``hidden_states [n, len(target_layers), hidden]`` of the target's next ``n`` kept positions.

        Positions arrive in order and exactly once: after the prefill, ``0..prompt_len-2``; after
        each verify pass (before :meth:`update`), the last committed token's position and those of
        the accepted drafts. The tensor lives on the target's device and may be reused afterwards.
        """
        ...


def requested_layers(drafter: object) -> tuple[int, ...] | None:
    """The target layers a drafter asks for (``None`` if it asks for none); a malformed request raises."""
    layers = getattr(drafter, "target_layers", None)
    if layers is None:
        return None
    name = type(drafter).__name__
    if (
        not isinstance(layers, tuple)
        or not layers
        or any(isinstance(i, bool) or not isinstance(i, int) for i in layers)
    ):
        raise InvalidArgumentError(f"{name}.target_layers must be a non-empty tuple of layer ids, got {layers!r}")
    if not callable(getattr(drafter, "observe_hidden_states", None)):
        raise InvalidArgumentError(f"{name} declares target_layers but has no observe_hidden_states method")
    return layers
