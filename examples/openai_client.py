"""The README's openai client block: stream a chat completion from `specdec serve --http` (SPECDEC_URL)."""

import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("SPECDEC_URL", "http://127.0.0.1:8000/v1"), api_key="unused")
model = client.models.list().data[0].id  # the model the server serves
for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Write a haiku about the sea"}],
        max_tokens=64, temperature=0, stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    else:
        print("\n", chunk.usage.model_extra["specdec"])   # {"drafted": ..., "accepted": ..., ...}
