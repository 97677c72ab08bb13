"""Three asyncio subscribers on one generation: a live one, a late joiner, and a draft-aware UI.

Every subscriber sees the same committed tokens in the same order; the late one first replays what it
missed. The third also receives `provisional` events (draft tokens before verification) and keeps a
"screen" that shows them until the next commit replaces them.

Run: .venv/bin/python examples/stream_subscribers.py
"""

import asyncio

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.models import load_model
from specdec.streaming import CommitEvent, EndEvent, ProvisionalEvent, StreamHub


async def live(stream, name):
    tokens = []
    async for event in stream.subscribe():
        if isinstance(event, CommitEvent):
            tokens += event.token_ids
        elif isinstance(event, EndEvent):
            print(f"[{name}] end: {event.finish_reason}, {len(tokens)} tokens, {event.usage.accepted} drafts accepted")
    return tokens


async def late(stream):
    await asyncio.sleep(0.5)  # joins mid-stream: replays from seq 0, then goes live
    tokens, seqs = [], []
    async for event in stream.subscribe():
        seqs.append(event.seq)
        if isinstance(event, CommitEvent):
            assert event.n_committed == len(tokens) + len(event.token_ids), "commits are continuous"
            tokens += event.token_ids
    # Provisional events are never replayed, so a late joiner may see seq jump where drafts were.
    assert seqs == sorted(set(seqs)), "seq numbers only go up"
    return tokens


async def draft_view(stream):
    committed, shown_draft, retracted = "", "", 0
    async for event in stream.subscribe():
        if isinstance(event, ProvisionalEvent):
            shown_draft = event.text  # replaces any earlier draft tail
        elif isinstance(event, CommitEvent):
            if shown_draft and not (committed + event.text).startswith(committed + shown_draft):
                retracted += 1  # the target disagreed with what the UI showed
            committed, shown_draft = committed + event.text, ""
    print(f"[drafts] the UI showed a draft and took it back {retracted} times")
    return committed


async def main():
    model, tokenizer = load_model(dtype="bfloat16")
    messages = [{"role": "user", "content": "Repeat this list in reverse order: apple, pear, plum, fig, lime, kiwi."}]
    input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    generator = SpeculativeGenerator(model, NGramDrafter())

    hub = StreamHub()
    stream = hub.start(generator, input_ids, tokenizer=tokenizer, provisional=True, max_new_tokens=48)
    a, b, text = await asyncio.gather(live(stream, "live"), late(stream), draft_view(stream))
    out = await stream.result()
    completion = out.sequences[0, input_ids.shape[1] :].tolist()
    assert a == b == completion, "every subscriber got exactly the generated tokens"
    assert text == tokenizer.decode(completion, skip_special_tokens=True)
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
