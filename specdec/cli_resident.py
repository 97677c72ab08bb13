"""``specdec up`` / ``specdec down`` and ``specdec generate`` through a kept-loaded worker.

A cold ``generate`` spends most of its time importing torch and transformers
and loading the weights. ``up`` starts a background worker that pays this
once (:mod:`specdec.streaming.resident`); ``generate`` with the same
``--target/--draft/--dtype/--device`` then sends its arguments over a Unix
socket and prints what comes back: the same text, the same statistics line,
Ctrl-C the same (stops within one step, exit 130). This client imports neither
torch nor transformers. ``--in-process`` skips the worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError

__all__ = ["cmd_down", "cmd_up", "generate_argv", "key_for", "make_prepare", "try_resident", "worker_main"]

EXIT_INTERRUPTED = 130
READY_TIMEOUT_S = 900.0  # a first run converts the default GGUF, which can take minutes on a slow machine


def key_for(args: argparse.Namespace) -> str:
    from specdec.streaming.resident import worker_key

    return worker_key(
        target=args.target, draft=args.draft, dtype=args.dtype, device=args.device,
        compiled=bool(getattr(args, "compile", False)),
    )  # fmt: skip


def generate_argv(args: argparse.Namespace, prompt: str) -> list[str]:
    """``specdec generate`` arguments that reproduce ``args`` for the worker (the prompt inline, not '-')."""
    argv = [prompt, "--max-new-tokens", str(args.max_new_tokens)]
    for flag, value in (
        ("--temperature", args.temperature), ("--top-p", args.top_p), ("--top-k", args.top_k),
        ("--seed", args.seed), ("--repetition-penalty", args.repetition_penalty),
        ("--num-draft-tokens", args.num_draft_tokens), ("--system", args.system),
    ):  # fmt: skip
        if value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    if args.chat is not None:
        argv.append("--chat" if args.chat else "--no-chat")
    if args.show_drafts:
        argv.append("--show-drafts")
    return argv


def try_resident(args: argparse.Namespace, prompt: str) -> int | None:
    """Run ``generate`` through a worker kept loaded for these model arguments; ``None`` when there is none."""
    from specdec.streaming.resident import find_worker, socket_path

    found = find_worker(socket_path(key_for(args)))
    if found is None:
        return None
    client, info = found
    if args.verbose:
        print(f"specdec: using the model kept loaded by `specdec up` (pid {info.get('pid')})", file=sys.stderr)
    return _stream_from(client, generate_argv(args, prompt), args)


def _stream_from(client: Any, argv: list[str], args: argparse.Namespace) -> int:
    from specdec.streaming import TerminalRenderer, event_from_dict
    from specdec.streaming.resident import ResidentError

    from .cli_run import print_stats_dict

    interrupted = False
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:  # the second Ctrl-C: leave now
            sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)
        interrupted = True
        client.cancel()  # the worker stops within one step and sends the rest

    ignored = previous is signal.SIG_IGN
    if not ignored:
        signal.signal(signal.SIGINT, on_sigint)
    renderer = TerminalRenderer(sys.stdout, show_drafts=args.show_drafts)
    result: dict[str, Any] | None = None
    try:
        for message in client.generate(argv):
            if "event" in message:
                renderer.feed(event_from_dict(message["event"]))
            else:
                result = message["result"]
    except ResidentError as exc:
        renderer.close()
        if exc.code == "bad_request":
            raise InvalidArgumentError(str(exc)) from None
        print(f"specdec generate: error: the kept-loaded worker failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not ignored and previous is not None:
            signal.signal(signal.SIGINT, previous)
    renderer.close()
    print(flush=True)
    assert result is not None
    print_stats_dict(result["stats"], result["finish_reason"], result["completion_ids"], args.json)
    return EXIT_INTERRUPTED if interrupted else 0


# --------------------------------------------------------------------------- the worker


def make_prepare(tokenizer: Any, parse: Any, generate_kwargs: Any) -> Any:
    """The worker's request reader: ``generate`` argv -> (input_ids, kwargs, show_drafts), with the CLI's checks."""
    from . import cli_checks as checks
    from .cli_run import encode_prompt

    def prepare(argv: list[str]) -> tuple[Any, dict[str, Any], bool]:
        args = parse(argv)
        prompt = checks.check_prompt(args.prompt)
        kwargs = generate_kwargs(args)
        return encode_prompt(tokenizer, prompt, args.chat, args.system), kwargs, bool(args.show_drafts)

    return prepare


def worker_main(args: argparse.Namespace, generator: Any, tokenizer: Any, prepare: Any) -> int:
    """``specdec up --foreground``: serve until ``specdec down``, SIGINT/SIGTERM, or the idle timeout."""
    import asyncio

    from specdec.streaming.resident import socket_path
    from specdec.streaming.resident.server import ResidentServer

    path = socket_path(key_for(args))
    idle = args.idle_minutes * 60.0 if args.idle_minutes > 0 else None
    describe = {
        "target": args.target or "default", "draft": args.draft or "ngram", "dtype": args.dtype,
        "device": args.device or "auto", "idle_minutes": args.idle_minutes,
    }  # fmt: skip
    server = ResidentServer(generator, tokenizer, path=path, describe=describe, prepare=prepare, idle_timeout_s=idle)

    def ready() -> None:
        print(f"specdec up: ready on {path} (pid {server.describe['pid']})", file=sys.stderr, flush=True)

    async def run() -> str:
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            loop.add_signal_handler(sig, server.stop)
        try:
            return await server.run(on_ready=ready)
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)

    reason = asyncio.run(run())
    print(f"specdec up: {reason} after serving {server.served} requests", file=sys.stderr, flush=True)
    return 0


def cmd_up(args: argparse.Namespace, model_argv: list[str]) -> int:
    """Start a background worker for these model arguments (or say that one runs); wait until it is ready."""
    from specdec.streaming.resident import find_worker, socket_path
    from specdec.streaming.resident.paths import log_path

    key = key_for(args)
    found = find_worker(socket_path(key))
    if found is not None:
        print(f"specdec up: already running (pid {found[1].get('pid')}); `specdec down` stops it", file=sys.stderr)
        return 0
    log = log_path(key)
    command = [sys.executable, "-m", "specdec", "up", "--foreground", *model_argv]
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True, close_fds=True
        )
    print(f"specdec up: loading the model in the background (pid {proc.pid}, log {log}) ...", file=sys.stderr)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                tail = _tail(log)
                print(f"specdec up: error: the worker exited with status {code}:\n{tail}", file=sys.stderr)
                return 1
            found = find_worker(socket_path(key), timeout=1.0)
            if found is not None:
                minutes = args.idle_minutes
                until = f"after {minutes:g} idle minutes" if minutes > 0 else "on `specdec down`"
                print(
                    f"specdec up: ready (pid {proc.pid}); `specdec generate` with the same --target/--draft/--dtype/"
                    f"--device uses it; it stops {until} or on `specdec down`",
                    file=sys.stderr,
                )
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        proc.terminate()
        return EXIT_INTERRUPTED
    proc.terminate()
    print(f"specdec up: error: the worker was not ready after {READY_TIMEOUT_S:.0f} s (log {log})", file=sys.stderr)
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the worker of these model arguments (``--all``: every worker); say how many stopped."""
    from specdec.streaming.resident import find_worker, socket_path, worker_sockets

    paths = worker_sockets() if args.all else [socket_path(key_for(args))]
    stopped = 0
    for path in paths:
        found = find_worker(path)
        if found is None:
            continue
        client, info = found
        client.stop()
        deadline = time.monotonic() + 30.0
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped += 1
        print(f"specdec down: stopped pid {info.get('pid')} ({info.get('target')})", file=sys.stderr)
    if not stopped:
        print("specdec down: no worker was running" + ("" if args.all else " for these model arguments"),
              file=sys.stderr)  # fmt: skip
    return 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
