"""Turning ``generate`` arguments into validated requests, before any expensive work.

:func:`as_prompts` reads ``input_ids`` (one sequence, a padded batch, or a
list of lists of different lengths) and its ``attention_mask`` into one 1-D
prompt per row, naming the row in every error. :class:`RequestFactory` resolves
the generation settings of one row into a :class:`Request`: everything a
:class:`~specdec.sequence.Sequence` needs except its drafter, which the engine
leases from the :class:`DrafterPool` when it admits the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from .adaptive import CostProfile
from .config_processors import config_processors, config_sampling_warpers
from .drafter import Drafter
from .errors import InvalidArgumentError
from .logits import LogitsShaper
from .params import GenerationParams, resolve_params
from .policy import DraftLengthPolicy, draft_length_policy
from .sequence import Cancelled, Sequence
from .sinks import BlockEmitter

__all__ = ["DrafterPool", "Request", "RequestFactory", "as_prompts"]


def _row_label(row: int, rows: int) -> str:
    return f"row {row}: " if rows > 1 else ""


def as_prompts(input_ids: Any, attention_mask: Any) -> list[torch.Tensor]:
    """One LongTensor [prompt_len] (CPU) per row; padding removed (left or right)."""
    if isinstance(input_ids, (list, tuple)):
        if input_ids and isinstance(input_ids[0], (list, tuple, torch.Tensor)):
            rows = [_row_tensor(r) for r in input_ids]
            if attention_mask is None and len({int(r.numel()) for r in rows}) > 1:
                return [_checked(r.reshape(-1), i, len(rows)) for i, r in enumerate(rows)]  # ragged lists
            input_ids = torch.stack([r.reshape(-1) for r in rows]) if rows else torch.empty(0, 0)
        else:
            input_ids = torch.tensor([list(input_ids)], dtype=torch.long)
    if not isinstance(input_ids, torch.Tensor):
        raise InvalidArgumentError(f"input_ids must be a LongTensor or a list of ints, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
        raise InvalidArgumentError(f"input_ids must hold integers, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise InvalidArgumentError(f"input_ids must have shape [batch, length], got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0:
        raise InvalidArgumentError("input_ids holds no rows: pass at least one sequence")
    input_ids = input_ids.to("cpu", torch.long)
    rows = input_ids.shape[0]
    if attention_mask is None:
        return [_checked(input_ids[r], r, rows) for r in range(rows)]
    mask = torch.as_tensor(attention_mask).to("cpu")
    if mask.dim() == 1 and rows == 1:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(input_ids.shape):
        raise InvalidArgumentError(
            f"attention_mask has shape {tuple(mask.shape)} but input_ids has {tuple(input_ids.shape)}"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InvalidArgumentError("attention_mask must hold only 0 and 1")
    prompts = []
    for r in range(rows):
        keep = mask[r].bool()
        if not bool(keep.any()):
            raise InvalidArgumentError(f"{_row_label(r, rows)}the prompt is empty: its attention_mask is all zeros")
        first = int(keep.float().argmax())
        last = keep.shape[0] - int(keep.flip(0).float().argmax())
        if not bool(keep[first:last].all()):
            raise InvalidArgumentError(
                f"{_row_label(r, rows)}attention_mask is not a padding mask: its ones must be one run "
                "after left padding or before right padding"
            )
        prompts.append(_checked(input_ids[r, first:last], r, rows))
    return prompts


def _row_tensor(row: Any) -> torch.Tensor:
    if isinstance(row, torch.Tensor):
        return row
    row = list(row)
    return torch.as_tensor(row) if row else torch.empty(0, dtype=torch.long)


def _checked(prompt: torch.Tensor, row: int, rows: int) -> torch.Tensor:
    if prompt.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
        raise InvalidArgumentError(f"{_row_label(row, rows)}input_ids must hold integers, got dtype {prompt.dtype}")
    if prompt.shape[0] == 0:
        raise InvalidArgumentError(f"{_row_label(row, rows)}the prompt is empty: pass at least one token")
    return prompt.to(torch.long)


@dataclass
class Request:
    """One row's validated settings; :meth:`sequence` builds its state once a drafter is leased."""

    prompt: torch.Tensor  # LongTensor [prompt_len], CPU
    params: GenerationParams
    shaper: LogitsShaper
    policy: DraftLengthPolicy
    emitter: BlockEmitter
    stopping: StoppingCriteriaList | None
    cancel: Cancelled | None
    row: int

    def sequence(self, drafter: Drafter, *, vocab_size: int, context_length: int | None, device) -> Sequence:
        return Sequence(
            prompt=self.prompt,
            params=self.params,
            shaper=self.shaper,
            drafter=drafter,
            policy=self.policy,
            emitter=self.emitter,
            vocab_size=vocab_size,
            context_length=context_length,
            device=device,
            stopping=self.stopping,
            cancel=self.cancel,
            row=self.row,
        )

    @property
    def room(self) -> int:
        """Cache positions the row may need: prompt, new tokens and one block of drafts."""
        return int(self.prompt.shape[0]) + self.params.max_new_tokens + self.policy.k_max + 1


class RequestFactory:
    """Validates one row's ``generate`` arguments against the target; builds its :class:`Request`."""

    def __init__(self, model: Any, *, vocab_size: int, context_length: int | None, device, default_k: int) -> None:
        self.model = model
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.device = device
        self.default_k = default_k

    def check_prompt(self, prompt: torch.Tensor, row: int, rows: int) -> None:
        label = _row_label(row, rows)
        context = self.context_length
        if context is not None and prompt.shape[0] >= context:
            raise InvalidArgumentError(
                f"{label}the prompt has {prompt.shape[0]} tokens but the target's context holds {context}; "
                "shorten the prompt"
            )
        if int(prompt.max()) >= self.vocab_size or int(prompt.min()) < 0:
            raise InvalidArgumentError(
                f"{label}input_ids holds token ids outside the vocabulary [0, {self.vocab_size})"
            )

    def settings(self, *, generation_config, num_draft_tokens, seed, **explicit) -> GenerationParams:
        return resolve_params(
            generation_config=generation_config,
            model_generation_config=getattr(self.model, "generation_config", None),
            num_draft_tokens=num_draft_tokens,
            seed=seed,
            **explicit,
        )

    def build(
        self,
        prompt: torch.Tensor,
        params: GenerationParams,
        *,
        costs: CostProfile,
        generation_config: GenerationConfig | None,
        logits_processor: LogitsProcessorList | None,
        stopping_criteria: StoppingCriteriaList | None,
        emitter: BlockEmitter,
        cancel: Cancelled | None,
        row: int = 0,
    ) -> Request:
        if logits_processor is not None and not isinstance(logits_processor, (LogitsProcessorList, list)):
            raise InvalidArgumentError("logits_processor must be a transformers LogitsProcessorList")
        if stopping_criteria is not None and not isinstance(stopping_criteria, (StoppingCriteriaList, list)):
            raise InvalidArgumentError("stopping_criteria must be a transformers StoppingCriteriaList")
        # HF generate applies the processors of the model's own generation_config unless one is passed.
        config = generation_config or getattr(self.model, "generation_config", None) or GenerationConfig()
        processors = config_processors(
            config, prompt_length=int(prompt.shape[0]), eos_token_ids=params.eos_token_ids, device=self.device
        )
        processors.extend(logits_processor or [])
        warpers = config_sampling_warpers(config, device=self.device)
        shaper = LogitsShaper(
            do_sample=params.do_sample,
            temperature=float(params.temperature),
            top_k=params.top_k,
            top_p=params.top_p,
            processors=processors or None,
            extra_warpers=warpers or None,
        )
        policy = draft_length_policy(
            params.num_draft_tokens, default_k=self.default_k, costs=costs, sampled=params.do_sample
        )
        return Request(
            prompt=prompt,
            params=params,
            shaper=shaper,
            policy=policy,
            emitter=emitter,
            stopping=StoppingCriteriaList(stopping_criteria) if stopping_criteria else None,
            cancel=cancel,
            row=row,
        )


class DrafterPool:
    """Per-row drafters from one prototype.

    The first row gets the prototype itself (so one sequence runs on exactly
    the drafter the caller passed). Further concurrent rows get copies from
    ``prototype.for_row()`` (same model, own state), kept for reuse; a drafter
    without ``for_row`` serves one row at a time, and rows wait for it (the
    engine admits them as it frees up).
    """

    def __init__(self, prototype: Drafter) -> None:
        self.prototype = prototype
        self.forks = callable(getattr(prototype, "for_row", None))
        self._prototype_busy = False
        self._spare: list[Drafter] = []

    def acquire(self) -> Drafter | None:
        if not self._prototype_busy:
            self._prototype_busy = True
            return self.prototype
        if self.forks:
            # forks: the prototype has a for_row method (checked above); not part of the Drafter protocol
            return self._spare.pop() if self._spare else cast(Any, self.prototype).for_row()
        return None

    def release(self, drafter: Drafter) -> None:
        if drafter is self.prototype:
            self._prototype_busy = False
        else:
            self._spare.append(drafter)
