"""The README's batch and engine example (the default model, greedy, n-gram drafter).

Run: .venv/bin/python examples/batched.py
"""

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.models import load_model

target, tok = load_model()
tok.padding_side = "left"
texts = ["Rewrite in the past tense: Anna walks to the bakery.", "Name three colours of the rainbow."]
chats = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
         for t in texts]
batch = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
input_ids, mask = batch["input_ids"], batch["attention_mask"]
prompt_ids = input_ids[0][mask[0].bool()]
gen = SpeculativeGenerator(target, NGramDrafter())

out = gen.generate(input_ids, attention_mask=mask, max_new_tokens=64)  # [batch, length], left or right padded
print(out.sequences.shape)  # [batch, width + max_new], laid out like HF generate on a left-padded batch
print(out.row_stats[1].new_tokens, out.finish_reasons[1])  # per row; out.stats sums the rows
handle = gen.submit(prompt_ids, max_new_tokens=64, do_sample=True, seed=3)  # joins the running engine
for block in handle:  # VerifiedBlocks as they land (iterating drives the engine)
    print(block.row, block.token_ids)
print(handle.result().finish_reason)  # handle.cancel() ends the row within one step
for r, text in enumerate(tok.batch_decode(out.sequences[:, input_ids.shape[1]:], skip_special_tokens=True)):
    print(f"row {r} ({out.finish_reasons[r]}, {out.row_stats[r].new_tokens} tokens): {text!r}")
print(f"{out.stats.new_tokens} tokens in {out.stats.target_forwards} shared forward passes")
