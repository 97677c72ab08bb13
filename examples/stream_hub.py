"""The README's streaming example, as written there: one asyncio subscriber printing committed text.

Run: .venv/bin/python examples/stream_hub.py
"""

import asyncio

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.models import load_model
from specdec.streaming import CommitEvent, StreamHub

target, tok = load_model()
gen = SpeculativeGenerator(target, NGramDrafter())
messages = [{"role": "user", "content": "Rewrite in the past tense: Anna walks to the bakery and buys bread."}]
input_ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]


async def main():
    hub = StreamHub()
    stream = hub.start(gen, input_ids, tokenizer=tok, provisional=False, max_new_tokens=64)
    async for event in stream.subscribe():  # any number of subscribers, joining at any time;
        if isinstance(event, CommitEvent):  # late ones replay from seq 0 (or after_seq=n)
            print(event.text, end="", flush=True)
    out = await stream.result()  # the SpecOutput; raises what generation raised
    print(f"\n{out.stats.tokens_per_s:.1f} tok/s, {out.finish_reason}")


asyncio.run(main())
