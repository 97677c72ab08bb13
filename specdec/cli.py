"""The ``specdec`` command line: ``generate``, ``serve`` and ``bench``.

This is the one module that wires the three packages together: the core
(``specdec``), the drafters (``drafts``) and the streaming layer (``streaming``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Sequence

import torch

from .errors import SpecDecError
from .models import DEFAULT_MODEL, load_model, resolve_device

__all__ = ["main", "make_drafter", "build_parser"]


# --------------------------------------------------------------------------- drafters


def make_drafter(spec: str | None, *, target: Any, device: str | None, dtype: str | None, num_draft_tokens: int | None):
    """The one place that maps a ``--draft`` value to a drafter object.

    ``ngram`` (default): prompt lookup. ``self``: the target drafts for itself
    (a test of the machinery, never faster). Anything else: a model id, folder
    or GGUF file loaded as a :class:`specdec.drafts.ModelDrafter`.
    """
    from specdec.drafts import ModelDrafter, NGramDrafter

    kwargs = {"num_draft_tokens": num_draft_tokens} if num_draft_tokens else {}
    if spec in (None, "", "ngram"):
        return NGramDrafter(**kwargs)
    if spec == "self":
        return ModelDrafter(target, **kwargs)
    draft_model, _ = load_model(spec, dtype=dtype, device=device, with_tokenizer=False)
    return ModelDrafter(draft_model, **kwargs)


# --------------------------------------------------------------------------- arguments


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _draft_length(text: str) -> int | str:
    if text == "auto":
        return text
    return _positive_int(text)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default=None, help=f"target model: HF id, folder or .gguf file (default: {DEFAULT_MODEL.name})"
    )
    parser.add_argument(
        "--draft", default="ngram", help="drafter: 'ngram' (prompt lookup, default), 'self', or a draft model id/path"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="float32, bfloat16, float16 or auto (default: bfloat16 for the default model, else the checkpoint's)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specdec", description="Lossless speculative decoding for Hugging Face causal LMs."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text, streaming verified tokens to the terminal")
    gen.add_argument("prompt", help="the prompt ('-' reads it from standard input)")
    _add_model_arguments(gen)
    gen.add_argument("--max-new-tokens", type=_positive_int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily; > 0 samples")
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument(
        "--repetition-penalty", type=_positive_float, default=None,
        help="penalise tokens already in the sequence (HF's RepetitionPenaltyLogitsProcessor; e.g. 1.2)",
    )  # fmt: skip
    gen.add_argument("--num-draft-tokens", type=_draft_length, default=None, help="draft tokens per step, or 'auto'")
    chat = gen.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None, help="apply the chat template")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="feed the prompt as raw text")
    gen.add_argument("--system", default=None, help="a system message (with the chat template)")
    gen.add_argument("--show-drafts", action="store_true", help="show draft tokens dimmed before verification")
    gen.add_argument("--json", action="store_true", help="print the statistics as JSON on the last line")

    serve = sub.add_parser("serve", help="serve generation requests over MQTT")
    _add_model_arguments(serve)
    serve.add_argument("--broker", default=None, help="mqtt://host:port or mqtts://host:port")
    serve.add_argument("--start-broker", action="store_true", help="start a local mosquitto on --broker's port")
    serve.add_argument("--username", default=None)
    serve.add_argument("--password", default=None)
    serve.add_argument("--tls-ca", default=None, help="CA certificate file for TLS")
    serve.add_argument("--max-new-tokens-cap", type=_positive_int, default=1024)
    serve.add_argument("--num-draft-tokens", type=_draft_length, default=None)

    bench = sub.add_parser("bench", help="benchmark speculative decoding against its ceiling and its peers")
    from specdec.bench import add_bench_arguments  # the instrument above the packages: loaded here, lazily

    add_bench_arguments(bench)
    return parser


# --------------------------------------------------------------------------- generate


def _default_dtype(args: argparse.Namespace) -> str | None:
    if args.dtype is not None:
        return args.dtype
    return "bfloat16" if args.target is None else None


def _encode_prompt(tokenizer: Any, prompt: str, chat: bool | None, system: str | None) -> torch.Tensor:
    if not prompt.strip():
        raise SpecDecError("the prompt is empty")
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    if use_chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        return encoded if isinstance(encoded, torch.Tensor) else encoded["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def _generate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    sampling = args.temperature > 0
    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": sampling, "seed": args.seed}
    if sampling:
        kwargs.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    if args.num_draft_tokens is not None:
        kwargs["num_draft_tokens"] = args.num_draft_tokens
    if args.repetition_penalty is not None and args.repetition_penalty != 1.0:
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        kwargs["logits_processor"] = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(args.repetition_penalty)])
    return kwargs


def _print_stats(stats: Any, finish_reason: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"finish_reason": finish_reason, **stats.as_dict()}))
        return
    print(
        f"\n[{stats.new_tokens} tokens in {stats.wall_time_s:.2f} s = {stats.tokens_per_s:.1f} tok/s | "
        f"{stats.steps} target steps, {stats.mean_accepted_per_step:.2f} tokens/step | "
        f"drafted {stats.drafted}, accepted {stats.accepted} ({stats.acceptance_rate:.0%}) | {finish_reason}]",
        file=sys.stderr,
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from specdec import SpeculativeGenerator
    from specdec.streaming import StreamHub, render_stream

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    dtype = _default_dtype(args)
    device = str(resolve_device(args.device))
    model, tokenizer = load_model(args.target, dtype=dtype, device=device)
    drafter = make_drafter(
        args.draft,
        target=model,
        device=device,
        dtype=dtype,
        num_draft_tokens=args.num_draft_tokens if isinstance(args.num_draft_tokens, int) else None,
    )
    generator = SpeculativeGenerator(model, drafter)
    input_ids = _encode_prompt(tokenizer, prompt, args.chat, args.system)

    async def run() -> Any:
        hub = StreamHub()
        stream = hub.start(generator, input_ids, tokenizer=tokenizer, provisional=args.show_drafts, **_generate_kwargs(args))
        await render_stream(stream, file=sys.stdout, show_drafts=args.show_drafts)
        print(flush=True)
        return await stream.result()

    out = asyncio.run(run())
    _print_stats(out.stats, out.finish_reason, args.json)
    return 0


# --------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> int:
    from specdec import SpeculativeGenerator
    from specdec.streaming.mqtt import serve

    if args.broker is None and not args.start_broker:
        raise SpecDecError("pass --broker mqtt://host:port (or --start-broker to run a local mosquitto)")
    dtype = _default_dtype(args)
    device = str(resolve_device(args.device))
    model, tokenizer = load_model(args.target, dtype=dtype, device=device)
    drafter = make_drafter(
        args.draft,
        target=model,
        device=device,
        dtype=dtype,
        num_draft_tokens=args.num_draft_tokens if isinstance(args.num_draft_tokens, int) else None,
    )
    generator = SpeculativeGenerator(model, drafter)
    broker = args.broker or "mqtt://127.0.0.1:1883"
    asyncio.run(
        serve(
            broker,
            generator,
            tokenizer,
            username=args.username,
            password=args.password,
            tls_ca=args.tls_ca,
            max_new_tokens_cap=args.max_new_tokens_cap,
            model_name=args.target or DEFAULT_MODEL.name,
            draft_name=args.draft or "ngram",
            start_broker=args.start_broker,
        )
    )
    return 0


# --------------------------------------------------------------------------- bench


def _cmd_bench(args: argparse.Namespace) -> int:
    from specdec.bench import run_bench

    run_bench(args)  # the drafters of specdec.drafts
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"generate": _cmd_generate, "serve": _cmd_serve, "bench": _cmd_bench}
    try:
        return commands[args.command](args)
    except (SpecDecError, ValueError) as exc:
        print(f"specdec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
