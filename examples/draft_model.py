"""A small draft model for a larger target, with sampling: the output follows the target's distribution.

Both models are tiny random Llamas here so the example runs anywhere; swap in any pair of HF causal LMs
that share a vocabulary (e.g. a 1B target with a 68M draft).

Run: .venv/bin/python examples/draft_model.py
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specdec import SpeculativeGenerator
from specdec.drafts import ModelDrafter

torch.manual_seed(0)
common = dict(vocab_size=256, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
target = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4, **common)).eval()
draft = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, **common)).eval()

generator = SpeculativeGenerator(target, ModelDrafter(draft, num_draft_tokens=4))
prompt = torch.randint(0, 256, (1, 8))

greedy = generator.generate(prompt, max_new_tokens=32)
assert torch.equal(greedy.sequences, target.generate(prompt, do_sample=False, max_new_tokens=32))
print("greedy: identical to target.generate; acceptance", f"{greedy.stats.acceptance_rate:.0%}")

sampled = generator.generate(prompt, max_new_tokens=32, do_sample=True, temperature=0.8, top_p=0.9, seed=7)
again = generator.generate(prompt, max_new_tokens=32, do_sample=True, temperature=0.8, top_p=0.9, seed=7)
assert torch.equal(sampled.sequences, again.sequences)
print("sampled (seed 7, reproducible):", sampled.sequences[0, 8:].tolist())
