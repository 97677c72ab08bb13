"""The ``specdec`` command line: ``generate``, ``serve``, ``bench``, ``train-draft``, ``up`` and ``down``.

This is the one module that wires the three packages together: the core
(``specdec``), the drafters (``specdec.drafts``) and the streaming layer
(``specdec.streaming``). It imports none of them, nor torch, at import time:
``specdec --help`` and every argument check (:mod:`specdec.cli_checks`) run
before anything heavy loads. Ctrl-C during generation stops within one step
and prints the text so far and the statistics (exit 130); at any other moment
it exits 130 quietly. ``serve`` stops on SIGINT or SIGTERM (exit 0). ``up``
keeps a model loaded in a background worker that ``generate`` then uses
(:mod:`specdec.cli_resident`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cli_checks as checks
from .cli_checks import DEFAULT_MODEL_NAME, draft_length, number
from .cli_train import add_train_draft_arguments, cmd_train_draft
from .errors import InvalidArgumentError, SpecDecError

__all__ = ["main", "make_drafter", "build_parser"]

EXIT_INTERRUPTED = 130
#: ``specdec serve``'s default for the requests that share one forward pass (docs/bench_batched.md measures it).
SERVE_BATCH_ROWS = 16
SAMPLING_RULE = (
    "Greedy by default. Any of --temperature, --top-p, --top-k or --seed turns sampling on "
    "(temperature 1.0 unless given); for open prompts SmolLM2's card suggests --temperature 0.2 --top-p 0.9."
)


# --------------------------------------------------------------------------- drafters


def make_drafter(spec: str | None, *, target: Any, device: str | None, dtype: Any, num_draft_tokens: int | None):
    """The one place that maps a ``--draft`` value to a drafter object.

    ``ngram`` (default): prompt lookup. ``composite``: prompt lookup where it pays, nothing
    elsewhere; ``composite:HEAD``: prompt lookup or HEAD (a head folder or draft model), chosen per
    step from measured costs (:class:`specdec.drafts.CompositeDrafter`). ``self``: the target drafts for itself
    (a test of the machinery, never faster). A folder holding an EAGLE head
    (EAGLE-3 native, ``speculators`` or EAGLE-1): a :class:`specdec.drafts.eagle.EagleDrafter`.
    Anything else: a model id, folder or GGUF file loaded as a :class:`specdec.drafts.ModelDrafter`.
    """
    from specdec.drafts import ModelDrafter, NGramDrafter

    from .models import load_model

    kwargs: dict[str, Any] = {"num_draft_tokens": num_draft_tokens} if num_draft_tokens else {}
    if spec in (None, "", "ngram"):
        return NGramDrafter(**kwargs)
    if spec == "composite" or checks.composite_head(spec) is not None:
        from specdec.drafts import CompositeDrafter

        head_spec = checks.composite_head(spec)
        head = make_drafter(head_spec, target=target, device=device, dtype=dtype,
                            num_draft_tokens=num_draft_tokens) if head_spec else None  # fmt: skip
        return CompositeDrafter(NGramDrafter(), head, **kwargs)
    if spec == "self":
        return ModelDrafter(target, **kwargs)
    from specdec.drafts.eagle import EagleDrafter, is_head_folder, load_head

    if is_head_folder(spec):
        return EagleDrafter(load_head(spec, target), **kwargs)
    draft_model, _ = load_model(spec, dtype=dtype, device=device, with_tokenizer=False)
    return ModelDrafter(draft_model, **kwargs)


# --------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _RaisingParser(_Parser):
    """The same parser for a request that arrives over a socket: an error raises, the process stays."""

    def error(self, message: str) -> Any:
        raise InvalidArgumentError(message)

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        raise InvalidArgumentError(message or f"the arguments were refused (status {status})")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default=None, help=f"HF id, folder or .gguf file (default: {DEFAULT_MODEL_NAME})")
    parser.add_argument(
        "--draft", default="ngram",
        help="drafter: 'ngram' (prompt lookup, default), 'composite' or 'composite:HEAD' (lookup or HEAD per step, "
        "by measured cost), 'self', an EAGLE head folder, or a draft model id/path",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16", "float64"),
        help="auto (default): bfloat16 on a GPU or a CPU with native bfloat16 (AVX512-BF16/AMX), else float32",
    )  # fmt: skip
    parser.add_argument(
        "--num-draft-tokens", type=draft_length, default=None,
        help="draft tokens per step, or 'auto' (default: 'auto' when greedy, the drafter's own k when sampling)",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="run the target on fixed shapes compiled with torch.compile (the first run compiles, minutes on a CPU; "
        "later runs load ~/.cache/specdec/inductor); the output is the same",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="say which dtype and device were chosen and why")


def build_parser(*, with_bench: bool = True, raising: bool = False) -> argparse.ArgumentParser:
    """The parser; ``with_bench=False`` leaves out ``bench``'s own options (they import torch).

    ``raising=True``: errors raise :class:`InvalidArgumentError` instead of exiting.
    """
    kind = _RaisingParser if raising else _Parser
    parser = kind(prog="specdec", description="Lossless speculative decoding for HF causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate", help="generate text, streaming verified tokens to the terminal", epilog=SAMPLING_RULE,
        description="Generate text with speculative decoding. Ctrl-C stops within one step and prints the stats.",
    )  # fmt: skip
    gen.add_argument("prompt", help="the prompt ('-' reads it from standard input)")
    _add_model_arguments(gen)
    gen.add_argument("--max-new-tokens", type=number(int, 1), default=256)
    gen.add_argument("--temperature", type=number(float, 0, low_open=True), default=None, help="> 0; implies sampling")
    gen.add_argument("--top-p", type=number(float, 0, 1, low_open=True), default=None, help="(0, 1]; implies sampling")
    gen.add_argument("--top-k", type=number(int, 1), default=None, help=">= 1; implies sampling")
    gen.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=None, help="implies sampling")
    gen.add_argument(
        "--repetition-penalty", type=number(float, 0, low_open=True), default=None,
        help="penalise tokens already in the sequence (HF's RepetitionPenaltyLogitsProcessor; e.g. 1.2)",
    )  # fmt: skip
    chat = gen.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None, help="apply the chat template")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="feed the prompt as raw text")
    gen.add_argument("--system", default=None, help="a system message (with the chat template)")
    gen.add_argument("--show-drafts", action="store_true", help="show draft tokens dimmed before verification")
    gen.add_argument(
        "--compare", action="store_true",
        help="then run the target alone (HF generate) on the same input and print both speeds",
    )  # fmt: skip
    gen.add_argument("--json", action="store_true", help="print the statistics as JSON on the last line")
    gen.add_argument(
        "--in-process", action="store_true",
        help="load the model in this process even when `specdec up` keeps one loaded",
    )  # fmt: skip

    up = sub.add_parser(
        "up", help="keep a model loaded in the background: later `generate` calls start in about a second",
        description="Start a background worker that loads the model once and serves `specdec generate` calls "
        "with the same --target/--draft/--dtype/--device over a Unix socket.",
    )  # fmt: skip
    _add_model_arguments(up)
    up.add_argument(
        "--idle-minutes", type=number(float, 0), default=15.0,
        help="stop after this many minutes without a request (0: only on `specdec down`; default 15)",
    )  # fmt: skip
    up.add_argument("--foreground", action="store_true", help="run the worker in this process (what `up` starts)")
    down = sub.add_parser("down", help="stop the background worker that `specdec up` started")
    _add_model_arguments(down)
    down.add_argument("--all", action="store_true", help="stop every worker, whatever its model")

    serve = sub.add_parser(
        "serve", help="serve generation requests over MQTT and/or HTTP (SIGINT/SIGTERM stop it)"
    )
    _add_model_arguments(serve)
    serve.add_argument("--http", default=None, metavar="HOST:PORT", help="serve the OpenAI-compatible HTTP API here")
    serve.add_argument("--broker", default=None, help="mqtt://host:port or mqtts://host:port")
    serve.add_argument("--start-broker", action="store_true", help="start a local mosquitto on --broker's port")
    serve.add_argument("--username", default=None)
    serve.add_argument("--password", default=None)
    serve.add_argument("--tls-ca", default=None, help="CA certificate file for TLS")
    serve.add_argument("--max-new-tokens-cap", type=number(int, 1), default=1024)
    serve.add_argument(
        "--max-batch-rows", type=number(int, 1), default=SERVE_BATCH_ROWS,
        help=f"requests that share one forward pass; more wait for a free row (1: one at a time; "
        f"default {SERVE_BATCH_ROWS})",
    )  # fmt: skip

    add_train_draft_arguments(sub)

    bench = sub.add_parser("bench", help="benchmark speculative decoding against its ceiling and its peers")
    if with_bench:  # the instrument above the packages: loaded here, lazily
        from specdec.bench import add_bench_arguments

        add_bench_arguments(bench)
    return parser


def check_model_arguments(args: argparse.Namespace) -> None:
    """Everything about --target/--draft/--device that can be known without loading a model."""
    checks.check_draft_length(args.num_draft_tokens)
    checks.check_model_reference(args.target, "--target")
    checks.check_model_reference(args.draft, "--draft")
    if args.device not in (None, "auto", "cpu", "cuda", "mps") and not (
        args.device.startswith("cuda:") and args.device[5:].isdigit()
    ):
        raise InvalidArgumentError(f"--device {args.device!r}: use cpu, cuda or cuda:N")
    draft = checks.composite_head(args.draft) or args.draft
    remote = [ref for ref in (args.target, draft) if ref and _is_hub_id(ref)]
    if remote and not os.environ.get("HF_HUB_OFFLINE") and not checks.hub_reachable():
        from huggingface_hub import try_to_load_from_cache

        if all(isinstance(try_to_load_from_cache(ref, "config.json"), str) for ref in remote):
            os.environ["HF_HUB_OFFLINE"] = "1"  # cached: load without waiting on the network
        else:
            raise InvalidArgumentError(
                f"{remote[0]!r} is not a local file or folder, and the model hub cannot be reached (no network?); "
                "pass a local folder or .gguf file, or set HF_HUB_OFFLINE=1 to use the HF cache"
            )


def _is_hub_id(reference: str) -> bool:
    return (
        reference not in (*checks.DEFAULT_ALIASES, *checks.DRAFTER_NAMES) and not Path(reference).expanduser().exists()
    )


def _prepare(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Load the target, its tokenizer and the drafter; return ``(generator, model, tokenizer)``."""
    from . import SpeculativeGenerator
    from .models import choose_load_dtype, load_model, resolve_device

    device = resolve_device(args.device)
    dtype, reason = choose_load_dtype(args.dtype, device)
    if args.verbose:
        print(f"specdec: device {device}; dtype {str(dtype).removeprefix('torch.')} ({reason})", file=sys.stderr)
    model, tokenizer = load_model(args.target, dtype=dtype, device=device)
    drafter = make_drafter(
        args.draft, target=model, device=str(device), dtype=dtype,
        num_draft_tokens=args.num_draft_tokens if isinstance(args.num_draft_tokens, int) else None,
    )  # fmt: skip
    rows = getattr(args, "max_batch_rows", None)  # serve's; generate runs one sequence
    extra: dict[str, Any] = {"max_batch_rows": rows} if rows else {}
    compiled = bool(getattr(args, "compile", False))
    return SpeculativeGenerator(model, drafter, compile=compiled, **extra), model, tokenizer


# --------------------------------------------------------------------------- generate


def _generate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    sampling = checks.check_sampling(args)
    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": sampling, "seed": args.seed}
    if sampling:
        temperature = args.temperature if args.temperature is not None else 1.0
        kwargs.update(temperature=temperature, top_p=args.top_p, top_k=args.top_k)
    if args.num_draft_tokens is not None:
        kwargs["num_draft_tokens"] = args.num_draft_tokens
    if args.repetition_penalty is not None and args.repetition_penalty != 1.0:
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        kwargs["logits_processor"] = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(args.repetition_penalty)])
    return kwargs


def _cmd_generate(args: argparse.Namespace) -> int:
    from .cli_run import compare_with_target, encode_prompt, print_stats, run_generation

    prompt = checks.check_prompt(sys.stdin.read() if args.prompt == "-" else args.prompt)
    check_model_arguments(args)
    generate_kwargs = _generate_kwargs(args)  # refuses bad sampling values before any model loads
    if not args.in_process and not args.compare:
        from .cli_resident import try_resident

        code = try_resident(args, prompt)
        if code is not None:
            return code
    generator, model, tokenizer = _prepare(args)
    input_ids = encode_prompt(tokenizer, prompt, args.chat, args.system)
    out, interrupted = run_generation(generator, input_ids, tokenizer, generate_kwargs, args.show_drafts)
    print_stats(out, args.json)
    if interrupted:
        return EXIT_INTERRUPTED
    if sys.stderr.isatty() and not args.json:
        print(
            "specdec: tip: `specdec up` keeps this model loaded in the background; later `specdec generate` calls "
            "with the same model arguments skip the import and load",
            file=sys.stderr,
        )
    if args.compare:
        compare_with_target(model, input_ids, out, generate_kwargs)
    return 0


# --------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> int:
    from .cli_run import serve_until_signal

    mqtt_wanted = args.broker is not None or args.start_broker
    if not mqtt_wanted and args.http is None:
        raise InvalidArgumentError(
            "pass --http HOST:PORT and/or --broker mqtt://host:port (or --start-broker to run a local mosquitto)"
        )
    if args.http is not None:
        try:
            from specdec.streaming.http.server import parse_address
        except ImportError as exc:
            raise InvalidArgumentError(
                f"--http needs the HTTP extra ({exc.name} is missing): pip install 'specdec[http]'"
            ) from exc
        parse_address(args.http)
    address = checks.check_broker_url(args.broker or "mqtt://127.0.0.1:1883", start_broker=args.start_broker)
    if args.start_broker and not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").is_file()):
        raise InvalidArgumentError("--start-broker needs mosquitto (Debian/Ubuntu: apt-get install mosquitto)")
    if args.tls_ca is not None and not Path(args.tls_ca).is_file():
        raise InvalidArgumentError(f"--tls-ca {args.tls_ca}: no such file")
    if (args.username is None) != (args.password is None):
        raise InvalidArgumentError("--username and --password go together")
    check_model_arguments(args)
    generator, _, tokenizer = _prepare(args)
    url = f"{address.scheme}://{address.host}:{address.port}"
    model_name = args.target or DEFAULT_MODEL_NAME
    if args.http is not None:
        from specdec.streaming.http import run_server

        mqtt = dict(username=args.username, password=args.password, tls_ca=args.tls_ca, start_broker=args.start_broker)
        return run_server(
            args.http, generator, tokenizer, model_name=model_name, draft_name=args.draft or "ngram",
            max_tokens_cap=args.max_new_tokens_cap, broker=url if mqtt_wanted else None, mqtt_options=mqtt,
        )  # fmt: skip
    return serve_until_signal(args, url, generator, tokenizer, model_name=model_name)


# --------------------------------------------------------------------------- bench


def _cmd_up(args: argparse.Namespace) -> int:
    from .cli_resident import cmd_up, make_prepare, worker_main

    check_model_arguments(args)
    if not args.foreground:
        model_argv = ["--dtype", args.dtype, "--idle-minutes", repr(args.idle_minutes)]
        for flag, value in (("--target", args.target), ("--draft", args.draft), ("--device", args.device),
                            ("--num-draft-tokens", args.num_draft_tokens)):  # fmt: skip
            if value is not None:
                model_argv += [flag, str(value)]
        if getattr(args, "compile", False):
            model_argv.append("--compile")
        return cmd_up(args, model_argv)
    generator, _, tokenizer = _prepare(args)
    parser = build_parser(with_bench=False, raising=True)
    prepare = make_prepare(tokenizer, lambda argv: parser.parse_args(["generate", *argv]), _generate_kwargs)
    return worker_main(args, generator, tokenizer, prepare)


def _cmd_down(args: argparse.Namespace) -> int:
    from .cli_resident import cmd_down

    return cmd_down(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from specdec.bench import run_bench

    run_bench(args)  # the drafters of specdec.drafts
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "specdec"
    try:
        wants_bench = next((a for a in argv if not a.startswith("-")), None) == "bench"
        args = build_parser(with_bench=wants_bench).parse_args(argv)
        command = f"specdec {args.command}"
        commands = {
            "generate": _cmd_generate, "serve": _cmd_serve, "bench": _cmd_bench, "train-draft": cmd_train_draft,
            "up": _cmd_up, "down": _cmd_down,
        }  # fmt: skip
        return commands[args.command](args)
    except (SpecDecError, ValueError) as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
