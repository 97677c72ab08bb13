"""The README's MQTT client example, as written there. It needs a worker on the broker, for example:

    .venv/bin/specdec serve --broker mqtt://127.0.0.1:1883 --start-broker

Run: .venv/bin/python examples/mqtt_client.py   (SPECDEC_BROKER=mqtt://host:port for another broker)
"""

import asyncio
import os

from specdec.streaming.mqtt import StreamClient


async def main():
    url = os.environ.get("SPECDEC_BROKER", "mqtt://127.0.0.1:1883")
    async with StreamClient(url) as client:  # dedups, reorders, resumes after gaps
        async for event in client.generate("Once upon a time", max_new_tokens=32):
            if event.type == "commit":
                print(event.text, end="", flush=True)
    print()


asyncio.run(main())
