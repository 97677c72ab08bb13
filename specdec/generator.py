"""The propose -> verify -> accept -> roll back loop."""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList

from .adaptive import AdaptiveDraftLength, CostProfile
from .cache import CausalLMAdapter
from .config_processors import config_processors, config_sampling_warpers
from .drafter import DraftContext, Drafter, requested_layers
from .errors import InvalidArgumentError, VocabularyMismatchError
from .logits import LogitsShaper
from .params import UNSET, GenerationParams, resolve_params
from .types import DraftBlock, FinishReason, SpecOutput, SpecStats, VerifiedBlock
from .verify import greedy_verify, speculative_sample

__all__ = ["SpeculativeGenerator", "TokenSink"]

TokenCallback = Callable[[int, list[int]], Any]
BlockCallback = Callable[[VerifiedBlock], Any]


class TokenSink(Protocol):
    """An object that receives each verified block and, optionally, each draft before verification.

    A sink implements ``on_block(block: VerifiedBlock)`` (preferred: it says which
    row, how many drafts and how many were accepted) or the older
    ``on_tokens(step, token_ids)``; ``on_draft(step, token_ids)`` is optional.
    """

    def on_block(self, block: VerifiedBlock) -> Any: ...


class _Cancelled(Protocol):
    def is_set(self) -> bool: ...


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


def _resolve_sink(on_tokens: Any) -> tuple[BlockCallback | None, TokenCallback | None]:
    """The sink as one callable taking a :class:`VerifiedBlock`, and its ``on_draft`` if it has one."""
    if on_tokens is None:
        return None, None
    on_draft = getattr(on_tokens, "on_draft", None)
    if callable(getattr(on_tokens, "on_block", None)):
        return on_tokens.on_block, on_draft
    legacy = on_tokens.on_tokens if hasattr(on_tokens, "on_tokens") else on_tokens
    if not callable(legacy):
        raise InvalidArgumentError(
            "on_tokens must be a callable(step, token_ids) or an object with an on_block or on_tokens method"
        )
    return (lambda block: legacy(block.step, list(block.token_ids))), on_draft


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
        num_draft_tokens: int | str | None = None,
        eos_token_id: int | list[int] | None = UNSET,
        seed: int | None = None,
        on_tokens: TokenCallback | TokenSink | None = None,
        *,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: Any = None,
        on_draft: TokenCallback | None = None,
        cancel: _Cancelled | None = None,
    ) -> SpecOutput:
        """Generate up to ``max_new_tokens`` tokens after ``input_ids``.

        Defaults: ``max_new_tokens=64``, greedy, ``temperature=1.0``, no top-k or
        top-p; a ``generation_config`` overrides those defaults and explicit
        arguments override it. ``eos_token_id=None`` means the target's
        ``generation_config.eos_token_id``.

        ``on_tokens(step, token_ids)`` is called with every verified block, in
        order, before the next step starts; or pass a sink object with
        ``on_block(block: VerifiedBlock)`` (or ``on_tokens``) and optionally ``on_draft``. ``on_draft(step, token_ids)`` sees each
        draft before it is verified. ``streamer`` is any transformers
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
        sink, sink_draft = _resolve_sink(on_tokens)
        on_draft = on_draft or sink_draft
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
        return _Run(self, prompt, params, processors, warpers, stopping_criteria, sink, on_draft, streamer, cancel).run()


class _Run:
    """State of one generate call. Everything here dies with the call."""

    def __init__(
        self,
        gen: SpeculativeGenerator,
        prompt: torch.Tensor,
        params: GenerationParams,
        logits_processor: LogitsProcessorList,
        extra_warpers: LogitsProcessorList,
        stopping_criteria: StoppingCriteriaList | None,
        sink: BlockCallback | None,
        on_draft: TokenCallback | None,
        streamer: Any,
        cancel: _Cancelled | None,
    ) -> None:
        self.target = gen.target
        self.drafter = gen.drafter
        self.hidden_layers = gen.hidden_layers
        self.params = params
        self.sink = sink
        self.on_draft = on_draft
        self.streamer = streamer
        self.cancel = cancel
        self.stopping = StoppingCriteriaList(stopping_criteria) if stopping_criteria else None
        self.shaper = LogitsShaper(
            do_sample=params.do_sample,
            temperature=float(params.temperature),
            top_k=params.top_k,
            top_p=params.top_p,
            processors=logits_processor or None,
            extra_warpers=extra_warpers or None,
        )
        default_k = self.drafter.default_num_draft_tokens
        # "auto": a cost model picks k before every step (see specdec.adaptive); self.k is then its upper bound.
        self.controller = (
            AdaptiveDraftLength(gen.draft_costs, default_k=default_k) if params.num_draft_tokens == "auto" else None
        )
        self.k = self.controller.k_max if self.controller is not None else params.num_draft_tokens or default_k
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        device = self.target.device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.draft_seed = (seed * 1_000_003 + 1) % 2**62
        self.prompt = prompt
        # Room for the prompt, the new tokens and one block of drafts, on the target's device.
        self.capacity = prompt.shape[0] + params.max_new_tokens + self.k + 1
        self.tokens = torch.empty(self.capacity, dtype=torch.long, device=device)  # [capacity]
        self.tokens[: prompt.shape[0]] = prompt.to(device)
        self.length = prompt.shape[0]  # committed tokens in self.tokens
        self.stats = SpecStats(prompt_tokens=prompt.shape[0])

    def _max_new(self) -> int:
        budget = self.params.max_new_tokens
        context = self.target.context_length
        if context is not None:
            budget = min(budget, context - self.prompt.shape[0])
        return budget

    def run(self) -> SpecOutput:
        start = time.perf_counter()
        self.target.reset()
        self.target.capture(self.hidden_layers)  # hooks only while a hidden-state drafter runs
        self.drafter.begin(
            DraftContext(
                prompt_ids=self.prompt,
                shaper=self.shaper,
                vocab_size=self.target.vocab_size,
                seed=self.draft_seed,
                max_new_tokens=self.params.max_new_tokens,
                adaptive=self.controller is not None,
            )
        )
        try:
            finish = self._loop()
            if self.controller is not None:
                self.controller.finish()
        finally:
            self.drafter.end()
            self.target.capture(None)
            # Free the KV cache: the next call starts from scratch anyway.
            self.target.reset()
        if self.streamer is not None:
            self.streamer.end()
        self.stats.wall_time_s = time.perf_counter() - start
        sequences = self.tokens[: self.length].unsqueeze(0).clone()
        return SpecOutput(sequences=sequences, stats=self.stats, finish_reason=finish)

    def _loop(self) -> FinishReason:
        prompt_len = self.prompt.shape[0]
        if self.streamer is not None:
            self.streamer.put(self.prompt.unsqueeze(0))
        if prompt_len > 1:
            self.target.forward(self.tokens[: prompt_len - 1], last_only=True)
            self.stats.target_forwards += 1
            if self.hidden_layers is not None:
                self.drafter.observe_hidden_states(self.target.hidden_states)  # positions 0..prompt_len-2
        max_new = self._max_new()
        step = 0
        while True:
            new = self.length - prompt_len
            if new >= max_new:
                return "length"
            if self.cancel is not None and self.cancel.is_set():
                return "cancelled"
            controller = self.controller
            k = min(self.k if controller is None else controller.choose(), max_new - new - 1)
            step_start = time.perf_counter() if controller is not None else 0.0
            block = self.drafter.propose(k) if k > 0 else DraftBlock.empty()
            drafted_at = time.perf_counter() if controller is not None else 0.0
            if len(block) > k:
                raise RuntimeError(
                    f"drafter {type(self.drafter).__name__} proposed {len(block)} tokens when asked for at most {k}"
                )
            draft_ids = block.token_ids.to(self.tokens.device)
            n_draft = int(draft_ids.shape[0])
            if self.on_draft is not None and n_draft:
                self.on_draft(step, draft_ids.tolist())
            # Feed the last committed token and the drafts: k + 1 positions to score.
            self.tokens[self.length : self.length + n_draft] = draft_ids
            block_ids = self.tokens[self.length - 1 : self.length + n_draft]  # [n_draft + 1]
            logits = self.target.forward(block_ids)  # [n_draft + 1, vocab]
            history = self.tokens[: self.length + n_draft]
            if self.shaper.do_sample:
                result = speculative_sample(
                    self.shaper.probs(history, logits), draft_ids, block.draft_probs, self.generator
                )
            else:
                result = greedy_verify(self.shaper.scores(history, logits), draft_ids)
            accepted, finish = self._cut(result.token_ids, max_new - new)
            num_accepted = min(result.num_accepted, len(accepted))
            # The cache holds every committed token but the newest; drop the rejected drafts.
            self.target.truncate(self.length + len(accepted) - 1)
            self.tokens[self.length : self.length + len(accepted)] = torch.tensor(accepted, device=self.tokens.device)
            self.length += len(accepted)
            # A block cut short by EOS, a stop rule or the budget lost its tail, but no draft was rejected there.
            rejected = result.num_accepted < n_draft
            self.stats.record_step(n_draft, num_accepted, rejected=rejected)
            self.stats.new_tokens = self.length - prompt_len
            if self.hidden_layers is not None:
                # the kept positions: the last committed token's and the accepted drafts'
                self.drafter.observe_hidden_states(self.target.hidden_states[: len(accepted)])
            self.drafter.update(accepted, num_accepted)
            if controller is not None:
                done_at = time.perf_counter()
                controller.observe(
                    n_draft, num_accepted, drafted_at - step_start, done_at - drafted_at, rejected=rejected
                )
            if accepted:
                if self.sink is not None:
                    self.sink(VerifiedBlock(step, 0, tuple(accepted), n_draft, num_accepted))
                if self.streamer is not None:
                    self.streamer.put(torch.tensor(accepted))
            step += 1
            if finish is not None:
                return finish

    def _cut(self, token_ids: list[int], room: int) -> tuple[list[int], FinishReason | None]:
        """Trim a verified block at EOS, a stopping criterion or the token budget."""
        token_ids = token_ids[:room]
        for i, token in enumerate(token_ids):
            if token in self.params.eos_token_ids:
                return token_ids[: i + 1], "eos"
            if self.stopping is not None:
                end = self.length + i + 1
                self.tokens[self.length + i] = token
                if bool(self.stopping(self.tokens[:end].unsqueeze(0), None).any()):
                    return token_ids[: i + 1], "stop"
        return token_ids, None
