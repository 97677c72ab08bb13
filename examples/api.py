"""The README's API example, as written there (the default model, greedy, n-gram drafter).

Run: .venv/bin/python examples/api.py
"""

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.models import load_model

target, tok = load_model()  # the default model; or an HF id, a local folder, a .gguf file
text = (
    "Every morning Anna walks to the bakery on Mill Street. She buys two loaves of bread and a coffee, "
    "and she talks with the baker about the weather."
)
messages = [{"role": "user", "content": f"Rewrite this text in the past tense (walked, bought, talked): {text}"}]
input_ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")["input_ids"]

gen = SpeculativeGenerator(target, NGramDrafter())  # prompt lookup; ModelDrafter(small_model) for a draft model
out = gen.generate(
    input_ids, max_new_tokens=64,  # greedy by default; do_sample=True, temperature=..., seed=... to sample
    on_tokens=lambda step, ids: print(tok.decode(ids), end="", flush=True),  # each verified block, in order
)
print(f"\n{out.stats.new_tokens} tokens, {out.stats.tokens_per_s:.1f} tok/s, {out.finish_reason}")
