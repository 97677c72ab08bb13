"""The public entry point: :class:`SpeculativeGenerator` and its ``generate``.

``generate`` validates every row before any model work, turns each into a
:class:`~specdec.request.Request`, submits them all to the generator's
:class:`~specdec.engine.Engine` (the one decode loop) and assembles the rows'
outputs. One sequence, a padded batch and the server's requests all run there.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList

from .adaptive import CostProfile
from .batch_target import BatchedTarget
from .drafter import Drafter, requested_layers
from .engine import Engine, Handle
from .errors import InvalidArgumentError, VocabularyMismatchError
from .params import UNSET
from .policy import DraftLengthPolicy
from .products import Products, check_products
from .request import DrafterPool, RequestFactory, as_prompts
from .sequence import Cancelled
from .sinks import BlockEmitter, TokenCallback
from .static_target import VERIFY_WIDTH_LIMIT, StaticConfig, StaticTarget
from .types import SpecOutput, SpecStats, VerifiedBlock

__all__ = ["SpeculativeGenerator", "TokenSink"]

#: Default limit on the rows of one batched ``generate`` call and on the engine's concurrent rows.
MAX_BATCH_ROWS = 64
#: Default cap on the verify tokens of one pass on the rectangle layout, padding included (decoding rows x
#: widest block): on a CPU a pass of 8 rows x 17 tokens costs ~3x one of 8 x 1, so many rows draft less each
#: (8 rows: k <= 7).
MAX_STEP_TOKENS = 64
#: The same on the packed layout, where a pass costs its real tokens and the rows share the budget: 256 never
#: binds below 16 rows of 17 tokens (n-gram's k = 16) and bounds one pass (~2 s on this project's CPU). A cap
#: of 64 is measured beside it in docs/bench_batched.md.
PACKED_MAX_STEP_TOKENS = 256


class TokenSink(Protocol):
    """An object that receives each verified block and, optionally, each draft before verification.

    A sink implements ``on_block(block: VerifiedBlock)`` (preferred: it says which
    row, how many drafts and how many were accepted) or the older
    ``on_tokens(step, token_ids)``; ``on_draft(step, token_ids)`` is optional.
    """

    def on_block(self, block: VerifiedBlock) -> Any: ...


class SpeculativeGenerator:
    """Speculative decoding with a Hugging Face causal LM as the target.

    Example::

        gen = SpeculativeGenerator(target, NGramDrafter())
        out = gen.generate(input_ids, max_new_tokens=64)
        out.sequences  # [1, prompt_len + new_len], what target.generate would return
        out.stats.acceptance_rate

    The output is the target's own: token for token with greedy decoding, and
    in distribution when sampling. Several threads may call ``generate`` at
    once (the streaming hub and the servers do): their rows join the one
    engine and share its forward passes (``concurrent_generate``).

    ``products`` picks the kernel of the target's linear products
    (:mod:`specdec.products`: ``"auto"`` measures packed oneDNN weights against
    torch's own once per machine). ``share_prefixes``: rows whose prompts begin
    alike compute the shared positions once (:mod:`specdec.engine`).
    """

    #: ``generate`` may run in several threads at once; their rows share the engine's forward passes.
    concurrent_generate = True

    def __init__(
        self,
        target: PreTrainedModel,
        drafter: Drafter,
        *,
        max_batch_rows: int = MAX_BATCH_ROWS,
        min_prefill_chunk: int = 16,
        max_prefill_chunk: int = 1024,
        compile: bool | StaticConfig = False,
        max_step_tokens: int | None = UNSET,
        layout: Literal["auto", "packed", "rectangle"] = "auto",
        products: Products = "auto",
        share_prefixes: bool = True,
    ) -> None:
        if isinstance(compile, bool):
            static = StaticConfig() if compile else None
        elif isinstance(compile, StaticConfig):
            static = compile
        else:
            raise InvalidArgumentError(f"compile must be True, False or a specdec.StaticConfig, got {compile!r}")
        if layout not in ("auto", "packed", "rectangle"):
            raise InvalidArgumentError(f"layout must be 'auto', 'packed' or 'rectangle', got {layout!r}")
        if static is not None and layout == "packed":
            raise InvalidArgumentError(
                "the compiled path runs fixed rectangle shapes: use layout='auto' or 'rectangle'"
            )
        # The compiled path pads to fixed shapes: it runs on the rectangle layout (its eager fallback too).
        check_products(products)
        batched = BatchedTarget(target, layout="rectangle" if static is not None else layout, products=products)
        for attr in ("propose", "update", "begin", "end"):
            if not callable(getattr(drafter, attr, None)):
                raise InvalidArgumentError(
                    f"drafter {type(drafter).__name__} lacks `{attr}`: it must implement specdec.Drafter"
                )
        default_k = getattr(drafter, "default_num_draft_tokens", None)
        if not isinstance(default_k, int) or default_k < 1:
            raise InvalidArgumentError(f"drafter {type(drafter).__name__}.default_num_draft_tokens must be an int >= 1")
        drafter_vocab = getattr(drafter, "vocab_size", None)
        if drafter_vocab is not None and drafter_vocab != batched.vocab_size:
            raise VocabularyMismatchError(
                f"the drafter's vocabulary has {drafter_vocab} tokens but the target's has {batched.vocab_size}; "
                "draft and target must share one tokenizer and vocabulary"
            )
        if isinstance(max_batch_rows, bool) or not isinstance(max_batch_rows, int) or max_batch_rows < 1:
            raise InvalidArgumentError(f"max_batch_rows must be an integer >= 1, got {max_batch_rows!r}")
        # The engine's target runner: eager passes shaped as they come, or padded to fixed (compiled) shapes.
        self.target: BatchedTarget | StaticTarget = batched
        static_target = StaticTarget(batched, static) if static is not None else None
        if static_target is not None:
            self.target = static_target
        self.drafter = drafter
        self.max_batch_rows = max_batch_rows
        # The target layers a hidden-state drafter reads (an EAGLE head); None for every other drafter.
        self.hidden_layers = requested_layers(drafter)
        if self.hidden_layers is not None:
            self.target.check_layers(self.hidden_layers)
        # Measured draft and verify costs of this (target, drafter, device), for num_draft_tokens="auto".
        self.draft_costs = CostProfile()
        if static is not None and static_target is not None:
            # Longer drafts pay on fixed widths: a verify pass costs its padded width, whatever k fills it.
            verify_widths = [w for w in static.widths if w <= VERIFY_WIDTH_LIMIT] or [min(static.widths)]
            self.draft_costs.k_max = max(verify_widths) - 1 or None
            if static.warmup:
                # Compile (or load) every width now, and price "auto" draft lengths with the measured passes.
                seconds = static_target.warmup()
                widest = max(verify_widths)
                self.draft_costs.prime({n: seconds[_padded(n, verify_widths)] for n in range(1, widest + 1)})
        if static_target is not None and self.draft_costs.k_max is not None:
            # A fixed k fills at most the widest verify width (a wider pass would run eagerly); any k gives the
            # same output.
            default_k = min(default_k, self.draft_costs.k_max)
        self.requests = RequestFactory(
            target,
            vocab_size=self.target.vocab_size,
            context_length=self.target.context_length,
            device=self.target.device,
            default_k=default_k,
        )
        if max_step_tokens is UNSET:  # the default of the layout taken
            max_step_tokens = PACKED_MAX_STEP_TOKENS if batched.layout == "packed" else MAX_STEP_TOKENS
        self.engine = Engine(
            self.target,
            DrafterPool(drafter),
            max_rows=max_batch_rows,
            min_prefill_chunk=min_prefill_chunk,
            max_prefill_chunk=max_prefill_chunk,
            max_step_tokens=max_step_tokens,
            hidden_layers=self.hidden_layers,
            share_prefixes=bool(share_prefixes),
        )

    @property
    def model(self) -> PreTrainedModel:
        return self.target.model

    def submit(
        self,
        input_ids: torch.Tensor | list[int],
        *,
        row: int = 0,
        on_tokens: TokenCallback | TokenSink | None = None,
        on_draft: TokenCallback | None = None,
        streamer: Any = None,
        cancel: Cancelled | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        num_draft_tokens: int | str | DraftLengthPolicy | None = None,
        seed: int | None = None,
        **settings: Any,
    ) -> Handle:
        """Queue one sequence on the engine; returns its :class:`~specdec.engine.Handle` at once.

        Takes ``generate``'s arguments for one sequence (``settings``:
        ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
        ``eos_token_id``, ``attention_mask``). The request runs as the engine
        steps: ``handle.result()`` or iterating the handle drives it.
        """
        attention_mask = settings.pop("attention_mask", None)
        unknown = set(settings) - {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id"}
        if unknown:
            raise InvalidArgumentError(f"unknown generation settings: {sorted(unknown)}")
        (prompt,) = _single(as_prompts(input_ids, attention_mask))
        self.requests.check_prompt(prompt, 0, 1)
        params = self.requests.settings(
            generation_config=generation_config, num_draft_tokens=num_draft_tokens, seed=seed, **settings
        )
        request = self.requests.build(
            prompt,
            params,
            costs=self.draft_costs,
            generation_config=generation_config,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            emitter=BlockEmitter.for_generate(on_tokens, on_draft, streamer),
            cancel=cancel,
            row=row,
        )
        return self.engine.submit(request)

    def generate(
        self,
        input_ids: torch.Tensor | list[int] | list[list[int]],
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = UNSET,
        do_sample: bool = UNSET,
        temperature: float = UNSET,
        top_k: int | None = UNSET,
        top_p: float | None = UNSET,
        num_draft_tokens: int | str | DraftLengthPolicy | None = None,
        eos_token_id: int | list[int] | None = UNSET,
        seed: int | list[int] | None = None,
        on_tokens: TokenCallback | TokenSink | None = None,
        *,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: Any = None,
        on_draft: TokenCallback | None = None,
        cancel: Cancelled | None = None,
    ) -> SpecOutput:
        """Generate up to ``max_new_tokens`` tokens after each row of ``input_ids``.

        ``input_ids``: one sequence ([length] or [1, length]), a padded batch
        [batch, length] with its ``attention_mask`` (left or right padding), or
        a list of token lists of different lengths. Rows run together in the
        engine; each keeps exactly what the target accepts for it and leaves
        the batch when it finishes. See :class:`~specdec.SpecOutput` for the
        batch layout.

        Defaults: ``max_new_tokens=64``, greedy, ``temperature=1.0``, no top-k or
        top-p; a ``generation_config`` overrides those defaults and explicit
        arguments override it. ``eos_token_id=None`` means the target's
        ``generation_config.eos_token_id``. ``seed``: an int (row ``r`` of a
        batch uses ``seed + r``) or one seed per row; a row's output depends
        on its own seed only, whatever else shares the batch.

        ``on_tokens(step, token_ids)`` is called with every verified block, in
        order, before that row's next step; or pass a sink object with
        ``on_block(block: VerifiedBlock)`` (it names the row; or ``on_tokens``)
        and optionally ``on_draft``. ``on_draft(step, token_ids)`` sees each
        draft before it is verified. ``num_draft_tokens``: an int, ``None`` (greedy
        rows: ``"auto"``; sampled rows: the drafter's default, fixed), ``"auto"``
        or a :class:`~specdec.DraftLengthPolicy` object (one sequence only: a policy object has per-request state).
        ``streamer`` is any transformers ``BaseStreamer`` (one sequence only).
        ``cancel`` is any object with ``is_set()`` (a ``threading.Event``):
        every row stops within one step once it is set.
        """
        prompts = as_prompts(input_ids, attention_mask)
        rows = len(prompts)
        if rows > self.max_batch_rows:
            raise InvalidArgumentError(
                f"the batch has {rows} rows but this generator takes at most {self.max_batch_rows} "
                "(SpeculativeGenerator(max_batch_rows=...))"
            )
        for r, prompt in enumerate(prompts):
            self.requests.check_prompt(prompt, r, rows)
        seeds = _row_seeds(seed, rows)
        if rows > 1 and streamer is not None:
            raise InvalidArgumentError("a transformers streamer takes one sequence; pass on_tokens for a batch")
        if rows > 1 and num_draft_tokens is not None and not isinstance(num_draft_tokens, (int, str)):
            raise InvalidArgumentError("a DraftLengthPolicy object serves one sequence; pass an int or 'auto'")
        explicit = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=eos_token_id,
        )
        requests = []
        for r, prompt in enumerate(prompts):
            params = self.requests.settings(
                generation_config=generation_config, num_draft_tokens=num_draft_tokens, seed=seeds[r], **explicit
            )
            requests.append(
                self.requests.build(
                    prompt,
                    params,
                    costs=self.draft_costs,
                    generation_config=generation_config,
                    logits_processor=logits_processor,
                    stopping_criteria=stopping_criteria,
                    emitter=BlockEmitter.for_generate(on_tokens, on_draft, streamer),
                    cancel=cancel,
                    row=r,
                )
            )
        forwards = self.engine.forwards
        handles = [self.engine.submit(request) for request in requests]
        self.engine.run(handles)
        for r, handle in enumerate(handles):
            if handle.error is not None:
                if rows > 1:
                    handle.error.add_note(f"(row {r} of the batch; the other rows finished)")
                raise handle.error
        outputs = [h.result() for h in handles]
        if rows == 1:
            return outputs[0]
        width = input_ids.shape[-1] if isinstance(input_ids, torch.Tensor) else max(len(p) for p in prompts)
        return _batch_output(outputs, width, self._pad_id(), self.engine.forwards - forwards)

    def _pad_id(self) -> int:
        config = getattr(self.target.model, "generation_config", None)
        for value in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)):
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if isinstance(value, int):
                return value
        return 0


def _padded(n: int, widths: list[int]) -> int:
    return next(w for w in widths if w >= n)


def _single(prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    if len(prompts) != 1:
        raise InvalidArgumentError(f"submit takes one sequence, got {len(prompts)} rows; submit each row")
    return prompts


def _row_seeds(seed: Any, rows: int) -> list[int | None]:
    if seed is None:
        return [None] * rows
    if isinstance(seed, (list, tuple)):
        if len(seed) != rows:
            raise InvalidArgumentError(f"seed has {len(seed)} entries but the batch has {rows} rows")
        return list(seed)
    if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
        return [seed + r for r in range(rows)]
    return [seed] * rows  # resolve_params names the problem


def _batch_output(outputs: list[SpecOutput], width: int, pad_id: int, forwards: int) -> SpecOutput:
    """Rows laid out like HF generate on a left-padded batch (see :class:`SpecOutput`)."""
    new = [int(o.sequences.shape[1]) - o.stats.prompt_tokens for o in outputs]
    device = outputs[0].sequences.device
    sequences = torch.full((len(outputs), width + max(new)), pad_id, dtype=torch.long, device=device)
    for r, output in enumerate(outputs):
        prompt_len = output.stats.prompt_tokens
        sequences[r, width - prompt_len : width + new[r]] = output.sequences[0]
    row_stats = [o.stats for o in outputs]
    return SpecOutput(
        sequences=sequences,
        stats=SpecStats.total(row_stats, target_forwards=forwards),
        finish_reason=outputs[0].finish_reason,
        row_stats=row_stats,
        finish_reasons=[o.finish_reason for o in outputs],
    )
