"""Prompts and model builders for the benchmarks.

The real workload is a fixed set of chat prompts of several task types. The
input-grounded ones (edit, summarise, answer from a document, refactor code)
give the target text to copy from, which is where prompt lookup shines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PROMPTS", "Prompt", "chat_ids", "random_llama", "CONTROLLED_PROMPT"]

_PASSAGE = (
    "The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 individual reefs "
    "and 900 islands stretching for over 2,300 kilometres over an area of approximately 344,400 square "
    "kilometres. The reef is located in the Coral Sea, off the coast of Queensland, Australia. It can be seen "
    "from outer space and is the world's biggest single structure made by living organisms. This reef "
    "structure is composed of and built by billions of tiny organisms, known as coral polyps. It supports a "
    "wide diversity of life and was selected as a World Heritage Site in 1981. Climate change, pollution and "
    "crown-of-thorns starfish outbreaks are the main threats to the health of the reef."
)

_TYPO_TEXT = (
    "Dear team, i wanted to let you know that the quarterly report is now availible on the shared drive. "
    "Please reveiw the sales figures for the north region before friday, because the numbers seems lower "
    "then we expected. If you has any questions about the forecast, send them to me or to Maria before the "
    "meeting on thursday. Thanks for you're help, and have a good week."
)

_CODE = '''def total_price(items, tax):
    t = 0
    for i in items:
        t = t + i["price"] * i["quantity"]
    t = t + t * tax
    return t


def average_price(items):
    t = 0
    n = 0
    for i in items:
        t = t + i["price"]
        n = n + 1
    return t / n
'''

_DOCUMENT = (
    "Product manual, section 4: Battery and charging. The X200 headphones use a 600 mAh lithium-ion battery. "
    "A full charge takes about 2 hours with the supplied USB-C cable and gives up to 30 hours of playback with "
    "noise cancelling off, or 22 hours with noise cancelling on. A 10-minute quick charge gives 3 hours of "
    "playback. The LED next to the power button shows red while charging and turns green when the battery is "
    "full. Do not charge the headphones at temperatures below 5 degrees Celsius or above 35 degrees Celsius. "
    "To reset the headphones, hold the power button and the volume-down button together for 10 seconds."
)


@dataclass(frozen=True)
class Prompt:
    name: str
    task: str  # "edit", "summarise", "document-qa", "code-edit", "open"
    grounded: bool  # the answer can copy from the prompt
    text: str


PROMPTS: tuple[Prompt, ...] = (
    Prompt("edit-email", "edit", True, f"Correct the spelling and grammar mistakes in this email. Return the full corrected email.\n\n{_TYPO_TEXT}"),
    Prompt("summarise-reef", "summarise", True, f"Summarise the following text in three sentences.\n\n{_PASSAGE}"),
    Prompt(
        "doc-qa-battery",
        "document-qa",
        True,
        f"Read the document and answer: how long does a full charge take, how much playback does it give with and "
        f"without noise cancelling, and how do I reset the headphones?\n\nDocument: {_DOCUMENT}",
    ),
    Prompt("code-rename", "code-edit", True, f"Rewrite this Python code, renaming the variable t to total and i to item. Return the whole code.\n\n{_CODE}"),
    Prompt("open-story", "open", False, "Write a short story about a lighthouse keeper who finds a message in a bottle."),
    Prompt("open-explain", "open", False, "Explain how a bicycle's gears work to a ten-year-old."),
)

CONTROLLED_PROMPT = "Write a detailed essay about the history of the printing press and its effect on science."


def chat_ids(tokenizer, text: str) -> torch.Tensor:
    """LongTensor [1, L]: ``text`` as one user turn, with the chat template and the assistant prefix."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        if not isinstance(ids, torch.Tensor):
            ids = ids["input_ids"]
        return ids.to(torch.long)
    return tokenizer(text, return_tensors="pt").input_ids


def random_llama(
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int | None = None,
    max_positions: int = 4096,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    model_class: type | None = None,
    stable_greedy: bool = False,
):
    """A Llama-shaped causal LM with random weights, built directly on ``device`` (no hub).

    ``stable_greedy=True`` makes the model's greedy choice robust to
    bfloat16 rounding, for benchmarks whose reference is the target's own
    greedy output. The output projection becomes a row permutation of the
    input embedding (a fixed permutation drawn from ``seed``), and every
    layer's output projections (attention ``o_proj``, MLP ``down_proj``) are
    scaled by 0.01. The residual stream then stays close to the input token's
    embedding at any depth, and the model walks the permutation: after token
    ``t`` it predicts the ``j`` with ``perm[j] == t``, by a margin far above
    rounding. The sequence is not constant, so exactness checks still see
    positions. Compute and timings are unchanged.

    Without it, a random model's top logits are so close that in bfloat16 a
    forward over k + 1 positions and ``generate``'s one-position steps pick
    different tokens, and a greedy reference stops being the target's choice
    within a few tokens (see ``benchmarks/gpu_sweep.py``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    cls = model_class or LlamaForCausalLM
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    if stable_greedy:
        permutation = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            embedding = model.get_input_embeddings().weight
            model.get_output_embeddings().weight.copy_(embedding[permutation.to(embedding.device)])
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.mul_(0.01)
                layer.mlp.down_proj.weight.mul_(0.01)
    # Random weights: no end-of-sequence token, so every system generates the full length.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.to(device=device, dtype=dtype).eval()
