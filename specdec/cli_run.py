"""What the CLI does once the arguments are checked: generate with Ctrl-C handling, compare, serve until a signal.

Why Ctrl-C used to abort (``terminate called without an active exception``,
exit 134): generation runs in a daemon thread of the stream hub. Python's
default SIGINT handler raised ``KeyboardInterrupt`` in the main thread, which
unwound ``asyncio.run`` and ended the interpreter while that thread was still
inside a torch operator; at finalization Python ends such threads with
``pthread_exit``, whose forced unwinding through torch's C++ frames calls
``std::terminate``. So here SIGINT never raises during generation: it cancels
the stream (the loop stops within one step), the generation thread returns,
and only then does the process exit, with the text so far and the stats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

__all__ = [
    "compare_with_target", "encode_prompt", "print_stats", "print_stats_dict", "repeats_itself", "run_generation",
    "serve_until_signal",
]  # fmt: skip


def encode_prompt(tokenizer: Any, prompt: str, chat: bool | None, system: str | None) -> Any:
    """LongTensor [1, prompt_len]: with the chat template when the tokenizer has one (or ``chat=True``)."""
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    if use_chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        return encoded if hasattr(encoded, "shape") else encoded["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def run_generation(
    generator: Any, input_ids: Any, tokenizer: Any, generate_kwargs: dict[str, Any], show_drafts: bool
) -> tuple[Any, bool]:
    """Stream the completion to stdout; return ``(SpecOutput, interrupted)``.

    The first Ctrl-C cancels the stream (stops within one step); a second one
    leaves at once (exit 130) without waiting for the step to end.
    """
    from specdec.streaming import StreamHub, render_stream

    interrupted = False

    async def run() -> Any:
        nonlocal interrupted
        loop = asyncio.get_running_loop()
        cancel_requested = asyncio.Event()

        def on_sigint() -> None:
            nonlocal interrupted
            if interrupted:
                sys.stdout.flush()
                os._exit(130)
            interrupted = True
            cancel_requested.set()

        previous = signal.getsignal(signal.SIGINT)
        ignored = previous is signal.SIG_IGN  # e.g. started in a background job
        if not ignored:
            loop.add_signal_handler(signal.SIGINT, on_sigint)  # before the generation thread exists
        try:
            hub = StreamHub()
            stream = hub.start(generator, input_ids, tokenizer=tokenizer, provisional=show_drafts, **generate_kwargs)

            async def cancel_on_request() -> None:
                await cancel_requested.wait()
                await stream.cancel()

            canceller = asyncio.create_task(cancel_on_request())
            try:
                await render_stream(stream, file=sys.stdout, show_drafts=show_drafts)
                print(flush=True)
                return await stream.result()  # the generation thread has returned
            finally:
                canceller.cancel()
        finally:
            if not ignored:
                loop.remove_signal_handler(signal.SIGINT)
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)  # e.g. the entry point's quiet exit

    return asyncio.run(run()), interrupted


def repeats_itself(token_ids: list[int], *, tail: int = 48, max_period: int = 16) -> bool:
    """Whether the last ``tail`` tokens are one short pattern (period <= ``max_period``) repeated."""
    if len(token_ids) < tail:
        return False
    end = token_ids[-tail:]
    return any(all(end[i] == end[i - period] for i in range(period, tail)) for period in range(1, max_period + 1))


def print_stats(out: Any, as_json: bool) -> None:
    stats = out.stats
    completion = out.sequences[0, stats.prompt_tokens :].tolist() if stats.prompt_tokens else []
    print_stats_dict(stats.as_dict(), str(out.finish_reason), completion, as_json)


def print_stats_dict(stats: dict[str, Any], finish_reason: str, completion: list[int], as_json: bool) -> None:
    """The statistics line (stderr), or one JSON line (stdout): from ``GenerationStats.as_dict()``."""
    looping = repeats_itself(completion)
    if as_json:
        print(json.dumps({"finish_reason": finish_reason, "repeats_itself": looping, **stats}))
        return
    print(
        f"[{stats['new_tokens']} tokens in {stats['wall_time_s']:.2f} s = {stats['tokens_per_s']:.1f} tok/s | "
        f"{stats['steps']} target steps, {stats['mean_accepted_per_step']:.2f} tokens/step | "
        f"drafted {stats['drafted']}, accepted {stats['accepted']} ({stats['acceptance_rate']:.0%}) | "
        f"{finish_reason}]",
        file=sys.stderr,
    )
    if looping:
        print(
            "[note: the text ends in a repetition loop, which the drafter copies for free: these tokens/s overstate "
            "the speedup on real text; try an input-grounded prompt or sampling]",
            file=sys.stderr,
        )


def compare_with_target(model: Any, input_ids: Any, out: Any, generate_kwargs: dict[str, Any]) -> float | None:
    """Run the target alone (HF ``generate``) for the same number of tokens; print both speeds; return the ratio."""
    import torch

    new_tokens = out.stats.new_tokens
    if new_tokens < 1:
        return None
    sampling = bool(generate_kwargs.get("do_sample"))
    hf_kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "do_sample": sampling}
    if sampling:
        hf_kwargs.update({k: generate_kwargs[k] for k in ("temperature", "top_p", "top_k") if generate_kwargs.get(k)})
        torch.manual_seed(generate_kwargs.get("seed") or 0)
    if "logits_processor" in generate_kwargs:
        hf_kwargs["logits_processor"] = generate_kwargs["logits_processor"]
    ids = input_ids.to(model.device)
    print("specdec: now the target alone (HF generate) on the same input ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with torch.inference_mode():
        reference = model.generate(ids, attention_mask=torch.ones_like(ids), **hf_kwargs)
    elapsed = time.perf_counter() - started
    reference_new = reference.shape[1] - ids.shape[1]
    target_rate = reference_new / elapsed
    ratio = out.stats.tokens_per_s / target_rate if target_rate > 0 else float("nan")
    same = ""
    if not sampling:
        same = f" | identical tokens: {'yes' if torch.equal(reference.cpu(), out.sequences.cpu()) else 'NO'}"
    print(
        f"[target alone (HF generate): {reference_new} tokens in {elapsed:.2f} s = {target_rate:.1f} tok/s | "
        f"speculative: {out.stats.tokens_per_s:.1f} tok/s = {ratio:.2f}x{same}]",
        file=sys.stderr,
    )
    return ratio


# --------------------------------------------------------------------------- serve


async def stop_worker(worker: Any, runner: asyncio.Task[Any]) -> None:
    """Stop a running worker gracefully and wait until its generations have returned.

    ``Worker.stop()`` makes ``run()`` end or cancel every open stream (subscribers get ``end``,
    or ``error`` then ``end``), disconnect its guards without firing their Wills, and return.
    """
    worker.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    await worker.hub.close()  # cancel and join any generation thread before the interpreter exits


def serve_until_signal(args: argparse.Namespace, url: str, generator: Any, tokenizer: Any, *, model_name: str) -> int:
    """Run one MQTT worker (and a local mosquitto with ``--start-broker``) until SIGINT or SIGTERM; return 0."""
    return asyncio.run(_serve(args, url, generator, tokenizer, model_name))


async def _serve(args: argparse.Namespace, url: str, generator: Any, tokenizer: Any, model_name: str) -> int:
    from specdec.streaming.mqtt import REQUEST_TOPIC, BrokerConfig, RequestLimits, Worker, WorkerSettings, events_topic

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        loop.add_signal_handler(sig, stop.set)
    broker = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        config = BrokerConfig.from_url(url, username=args.username, password=args.password, tls_ca=args.tls_ca)
        if args.start_broker:
            from specdec.streaming.mqtt.broker import LocalMosquitto

            broker = LocalMosquitto(port=config.port, host="127.0.0.1").start()
        cap = args.max_new_tokens_cap
        settings = WorkerSettings(
            model_name=model_name,
            draft_name=args.draft or "ngram",
            limits=RequestLimits(max_new_tokens_cap=cap, default_max_new_tokens=min(256, cap)),
        )
        worker = Worker(config, generator, tokenizer, settings=settings)
        runner = asyncio.create_task(worker.run(), name="specdec-worker")
        stopped = asyncio.create_task(stop.wait())
        ready = asyncio.create_task(worker.ready.wait())
        tasks = [runner, stopped, ready]
        pending: set[asyncio.Task[Any]] = {runner, stopped, ready}
        hinted = False
        while True:
            done, _ = await asyncio.wait(pending, timeout=None if hinted else 5.0, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                hinted = True
                print(
                    f"specdec serve: cannot connect to the broker at {url} yet (still trying); is one running there? "
                    "--start-broker runs a local mosquitto",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            if ready in done:
                pending.discard(ready)
                hinted = True
                started = " (started here)" if broker is not None else ""
                print(
                    f"specdec serve: ready | broker {url}{started} | requests {REQUEST_TOPIC} | "
                    f"events {events_topic('{id}')} | model {model_name} | draft {settings.draft_name} | "
                    "stop with Ctrl-C or SIGTERM",
                    file=sys.stderr,
                    flush=True,
                )
            if runner in done:
                runner.result()  # raises what run() raised
                return 1
            if stopped in done:
                break
        print("specdec serve: stopping ...", file=sys.stderr, flush=True)
        await stop_worker(worker, runner)
    finally:
        for task in tasks:
            task.cancel()
        if broker is not None:
            broker.close()
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)  # e.g. the entry point's quiet exit
    print("specdec serve: stopped", file=sys.stderr, flush=True)
    return 0
