"""The propose -> verify -> accept -> roll back loop."""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList

from .adaptive import CostProfile
from .cache import CausalLMAdapter
from .config_processors import config_processors, config_sampling_warpers
from .drafter import Drafter, requested_layers
from .errors import InvalidArgumentError, VocabularyMismatchError
from .logits import LogitsShaper
from .params import UNSET, resolve_params
from .policy import DraftLengthPolicy, draft_length_policy
from .sequence import Cancelled, Sequence
from .sinks import BlockCallback, BlockEmitter, TokenCallback
from .types import SpecOutput, VerifiedBlock

__all__ = ["SpeculativeGenerator", "TokenSink"]

class TokenSink(Protocol):
    """An object that receives each verified block and, optionally, each draft before verification.

    A sink implements ``on_block(block: VerifiedBlock)`` (preferred: it says which
    row, how many drafts and how many were accepted) or the older
    ``on_tokens(step, token_ids)``; ``on_draft(step, token_ids)`` is optional.
    """

    def on_block(self, block: VerifiedBlock) -> Any: ...


def _as_prompt(input_ids: Any, attention_mask: Any) -> torch.Tensor:
    """Validate the prompt and return it as a 1-D LongTensor on the CPU."""
    if isinstance(input_ids, (list, tuple)):
        if input_ids and isinstance(input_ids[0], (list, tuple)):
            input_ids = torch.tensor(input_ids, dtype=torch.long)
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
    if input_ids.shape[0] != 1:
        raise InvalidArgumentError(
            f"batch size {input_ids.shape[0]} is not supported yet: pass one sequence (shape [1, length])"
        )
    prompt = input_ids[0].to("cpu", torch.long)
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).reshape(-1).to("cpu")
        if mask.shape[0] != prompt.shape[0]:
            raise InvalidArgumentError(
                f"attention_mask has {mask.shape[0]} positions but input_ids has {prompt.shape[0]}"
            )
        keep = mask.bool()
        first = int(keep.float().argmax()) if keep.any() else prompt.shape[0]
        if not bool(keep[first:].all()):
            raise InvalidArgumentError("attention_mask may only mask left padding (zeros before the first one)")
        prompt = prompt[first:]
    if prompt.shape[0] == 0:
        raise InvalidArgumentError("the prompt is empty: pass at least one token")
    return prompt


class SpeculativeGenerator:
    """Speculative decoding with a Hugging Face causal LM as the target.

    Example::

        gen = SpeculativeGenerator(target, NGramDrafter())
        out = gen.generate(input_ids, max_new_tokens=64)
        out.sequences  # [1, prompt_len + new_len], what target.generate would return
        out.stats.acceptance_rate

    The output is the target's own: token for token with greedy decoding, and
    in distribution when sampling. One generator serves one generation at a
    time (it owns the target's KV cache).
    """

    def __init__(self, target: PreTrainedModel, drafter: Drafter) -> None:
        self.target = CausalLMAdapter(target)
        for attr in ("propose", "update", "begin", "end"):
            if not callable(getattr(drafter, attr, None)):
                raise InvalidArgumentError(
                    f"drafter {type(drafter).__name__} lacks `{attr}`: it must implement specdec.Drafter"
                )
        default_k = getattr(drafter, "default_num_draft_tokens", None)
        if not isinstance(default_k, int) or default_k < 1:
            raise InvalidArgumentError(f"drafter {type(drafter).__name__}.default_num_draft_tokens must be an int >= 1")
        drafter_vocab = getattr(drafter, "vocab_size", None)
        if drafter_vocab is not None and drafter_vocab != self.target.vocab_size:
            raise VocabularyMismatchError(
                f"the drafter's vocabulary has {drafter_vocab} tokens but the target's has {self.target.vocab_size}; "
                "draft and target must share one tokenizer and vocabulary"
            )
        self.drafter = drafter
        # The target layers a hidden-state drafter reads (an EAGLE head); None for every other drafter.
        self.hidden_layers = requested_layers(drafter)
        if self.hidden_layers is not None:
            self.target.check_layers(self.hidden_layers)
        # Measured draft and verify costs of this (target, drafter, device), for num_draft_tokens="auto".
        self.draft_costs = CostProfile()

    @property
    def model(self) -> PreTrainedModel:
        return self.target.model

    def generate(
        self,
        input_ids: torch.Tensor | list[int],
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = UNSET,
        do_sample: bool = UNSET,
        temperature: float = UNSET,
        top_k: int | None = UNSET,
        top_p: float | None = UNSET,
        num_draft_tokens: int | str | DraftLengthPolicy | None = None,
        eos_token_id: int | list[int] | None = UNSET,
        seed: int | None = None,
        on_tokens: TokenCallback | TokenSink | None = None,
        *,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: Any = None,
        on_draft: TokenCallback | None = None,
        cancel: Cancelled | None = None,
    ) -> SpecOutput:
        """Generate up to ``max_new_tokens`` tokens after ``input_ids``.

        Defaults: ``max_new_tokens=64``, greedy, ``temperature=1.0``, no top-k or
        top-p; a ``generation_config`` overrides those defaults and explicit
        arguments override it. ``eos_token_id=None`` means the target's
        ``generation_config.eos_token_id``.

        ``on_tokens(step, token_ids)`` is called with every verified block, in
        order, before the next step starts; or pass a sink object with
        ``on_block(block: VerifiedBlock)`` (or ``on_tokens``) and optionally
        ``on_draft``. ``on_draft(step, token_ids)`` sees each draft before it
        is verified. ``num_draft_tokens``: an int, ``None`` (the drafter's
        default), ``"auto"`` or a :class:`~specdec.DraftLengthPolicy` object. ``streamer`` is any transformers
        ``BaseStreamer``. ``cancel`` is any object with ``is_set()`` (a
        ``threading.Event``): generation stops within one step once it is set.
        """
        params = resolve_params(
            generation_config=generation_config,
            model_generation_config=getattr(self.target.model, "generation_config", None),
            num_draft_tokens=num_draft_tokens,
            seed=seed,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=eos_token_id,
        )
        prompt = _as_prompt(input_ids, attention_mask)
        emitter = BlockEmitter.for_generate(on_tokens, on_draft, streamer)
        if logits_processor is not None and not isinstance(logits_processor, (LogitsProcessorList, list)):
            raise InvalidArgumentError("logits_processor must be a transformers LogitsProcessorList")
        if stopping_criteria is not None and not isinstance(stopping_criteria, (StoppingCriteriaList, list)):
            raise InvalidArgumentError("stopping_criteria must be a transformers StoppingCriteriaList")
        context = self.target.context_length
        if context is not None and prompt.shape[0] >= context:
            raise InvalidArgumentError(
                f"the prompt has {prompt.shape[0]} tokens but the target's context holds {context}; shorten the prompt"
            )
        if int(prompt.max()) >= self.target.vocab_size or int(prompt.min()) < 0:
            raise InvalidArgumentError(f"input_ids holds token ids outside the vocabulary [0, {self.target.vocab_size})")
        # HF generate applies the processors of the model's own generation_config unless one is passed.
        effective_config = generation_config or getattr(self.target.model, "generation_config", None) or GenerationConfig()
        processors = config_processors(
            effective_config,
            prompt_length=int(prompt.shape[0]),
            eos_token_ids=params.eos_token_ids,
            device=self.target.device,
        )
        processors.extend(logits_processor or [])
        warpers = config_sampling_warpers(effective_config, device=self.target.device)
        shaper = LogitsShaper(
            do_sample=params.do_sample,
            temperature=float(params.temperature),
            top_k=params.top_k,
            top_p=params.top_p,
            processors=processors or None,
            extra_warpers=warpers or None,
        )
        policy = draft_length_policy(
            params.num_draft_tokens, default_k=self.drafter.default_num_draft_tokens, costs=self.draft_costs
        )
        seq = Sequence(
            prompt=prompt,
            params=params,
            shaper=shaper,
            drafter=self.drafter,
            policy=policy,
            emitter=emitter,
            vocab_size=self.target.vocab_size,
            context_length=self.target.context_length,
            device=self.target.device,
            stopping=StoppingCriteriaList(stopping_criteria) if stopping_criteria else None,
            cancel=cancel,
        )
        return self._run(seq)

    def _run(self, seq: Sequence) -> SpecOutput:
        """Prefill, then choose k, propose, verify, commit, emit until the sequence finishes."""
        start = time.perf_counter()
        target = self.target
        target.reset()
        reads_hidden = self.hidden_layers is not None
        target.capture(self.hidden_layers)  # hooks on the named layers, only while a hidden-state drafter runs
        failed = True
        try:
            seq.begin()
            if seq.prompt_len > 1:
                target.forward(seq.sequence[:-1], last_only=True)
                seq.stats.target_forwards += 1
                if reads_hidden:
                    seq.prefilled(target.hidden_states)  # [prompt_len - 1, layers, hidden]
            while (block := seq.plan()) is not None:  # choose k, propose
                logits = target.forward(seq.block_ids(block))  # verify: [len(block) + 1, vocab]
                hidden = target.hidden_states if reads_hidden else None  # [len(block) + 1, layers, hidden]
                seq.commit(logits, block, hidden_states=hidden)  # accept, emit
                target.truncate(seq.length - 1)  # roll back the rejected drafts
            failed = False
        finally:
            seq.close(failed=failed)
            target.capture(None)
            target.reset()  # free the KV cache: the next call starts from scratch anyway
        seq.stats.wall_time_s = time.perf_counter() - start
        assert seq.finish is not None
        return SpecOutput(sequences=seq.sequence.unsqueeze(0).clone(), stats=seq.stats, finish_reason=seq.finish)
