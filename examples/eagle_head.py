"""An EAGLE head as the drafter: written in the speculators format, loaded back, output equal to the target's.

Runs in seconds on a tiny random Llama with a random (untrained) head, so few drafts are accepted; with a real
target, point ``head_dir`` at a trained head (``specdec train-draft`` writes one).
"""

import tempfile

import torch

from specdec.bench.models import random_llama
from specdec.drafts.eagle import EagleHead, EagleHeadConfig, save_speculators

torch.manual_seed(0)
target = random_llama(vocab_size=128, hidden_size=32, num_layers=4, seed=0)
head_config = EagleHeadConfig(
    kind="eagle3", hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    intermediate_size=64, vocab_size=128, draft_vocab_size=96, target_hidden_size=32, target_layers=(1, 2, 3),
)  # fmt: skip
head_dir = tempfile.mkdtemp(prefix="specdec-eagle-")
save_speculators(EagleHead(head_config), head_dir, verifier="random-llama")

from specdec import SpeculativeGenerator
from specdec.drafts.eagle import EagleDrafter, load_head

head = load_head(head_dir, target)  # a folder: EAGLE-3 native / SpecForge, speculators, or EAGLE-1
gen = SpeculativeGenerator(target, EagleDrafter(head, num_draft_tokens=4))

input_ids = torch.tensor([[1, 5, 9, 2, 7, 5, 9, 2]])
out = gen.generate(input_ids, max_new_tokens=16)
reference = target.generate(input_ids, max_new_tokens=16, do_sample=False)
print(f"{out.stats.new_tokens} tokens, {out.stats.steps} target steps, {out.stats.accepted} drafts accepted")
print("identical to target.generate:", "yes" if torch.equal(out.sequences, reference) else "NO")
