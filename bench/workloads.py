"""Prompts for the benchmarks (the models come from :mod:`specdec.bench.models`).

The real workload is a fixed set of chat prompts of several task types. The
input-grounded ones (edit, summarise, answer from a document, refactor code)
give the target text to copy from, which is where prompt lookup shines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CONTROLLED_PROMPT", "PROMPTS", "Prompt", "chat_ids"]

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

_CODE = """def total_price(items, tax):
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
"""

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
    Prompt(
        "edit-email",
        "edit",
        True,
        f"Correct the spelling and grammar mistakes in this email. Return the full corrected email.\n\n{_TYPO_TEXT}",
    ),
    Prompt("summarise-reef", "summarise", True, f"Summarise the following text in three sentences.\n\n{_PASSAGE}"),
    Prompt(
        "doc-qa-battery",
        "document-qa",
        True,
        f"Read the document and answer: how long does a full charge take, how much playback does it give with and "
        f"without noise cancelling, and how do I reset the headphones?\n\nDocument: {_DOCUMENT}",
    ),
    Prompt(
        "code-rename",
        "code-edit",
        True,
        f"Rewrite this Python code, renaming the variable t to total and i to item. Return the whole code.\n\n{_CODE}",
    ),
    Prompt(
        "open-story", "open", False, "Write a short story about a lighthouse keeper who finds a message in a bottle."
    ),
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
