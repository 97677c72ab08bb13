"""A worker and two clients over a real mosquitto, all on loopback, in one script.

It starts a private mosquitto on a free port (Debian: `apt-get install mosquitto`), serves the default
model with the n-gram drafter, asks for a chat completion with one client, follows the same stream
from a second client that joins late and asks for a replay, and checks that both saw the same text.
In production the three parts run as separate processes on separate machines:
`specdec serve --broker mqtt://host:1883` for workers, `StreamClient` (or any MQTT 5 client) for readers.

Run: .venv/bin/python examples/mqtt_roundtrip.py
"""

import asyncio

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.models import load_model
from specdec.streaming.mqtt import StreamClient, new_stream_id, serve
from specdec.streaming.mqtt.broker import LocalMosquitto


async def main():
    model, tokenizer = load_model(dtype="bfloat16")
    generator = SpeculativeGenerator(model, NGramDrafter())
    with LocalMosquitto() as broker:
        worker = asyncio.create_task(serve(broker.url, generator, tokenizer, model_name="SmolLM2-135M-Instruct"))
        stream_id = new_stream_id()
        messages = [{"role": "user", "content": "Name three colours of the sea, one per line."}]

        async def requester():
            text = ""
            async with StreamClient(broker.url) as client:
                async for event in client.generate(messages=messages, stream_id=stream_id, max_new_tokens=48):
                    if event.type == "commit":
                        text += event.text
                        print(event.text, end="", flush=True)
                    elif event.type == "end":
                        print(f"\n[requester] end: {event.finish_reason}, {event.usage.completion_tokens} tokens")
            return text

        async def late_reader():
            await asyncio.sleep(1.0)  # joins mid-stream (or after it ended) and asks for what it missed
            async with StreamClient(broker.url) as client:
                commits = [e.text async for e in client.watch(stream_id, replay=True) if e.type == "commit"]
            print(f"[late reader] {len(commits)} commits, replayed and live")
            return "".join(commits)

        first, second = await asyncio.gather(requester(), late_reader())
        assert first == second, "both readers saw the same committed text"
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
