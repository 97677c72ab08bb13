"""CLI argument handling that needs no model download: parsing, validation, and what reaches generate."""

from __future__ import annotations

import pytest
import torch

from specdec import SpeculativeGenerator
from specdec.cli import _generate_kwargs, build_parser
from specdec.drafts import NGramDrafter


def parse(*argv: str):
    return build_parser().parse_args(["generate", "a prompt", *argv])


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "x"])
def test_repetition_penalty_must_be_a_positive_number(bad, capsys):
    with pytest.raises(SystemExit):
        parse("--repetition-penalty", bad)
    assert "--repetition-penalty" in capsys.readouterr().err


def test_greedy_by_default_and_sampling_with_a_temperature():
    kwargs = _generate_kwargs(parse())
    assert kwargs["do_sample"] is False and "logits_processor" not in kwargs and "temperature" not in kwargs
    kwargs = _generate_kwargs(parse("--temperature", "0.7", "--top-p", "0.9", "--seed", "3"))
    assert kwargs["do_sample"] is True and kwargs["seed"] == 3
    assert kwargs["temperature"] == 0.7 and kwargs["top_p"] == 0.9


def test_repetition_penalty_output_equals_hf_generate(tiny_lm, prompt):
    target = tiny_lm("gpt2", seed=1)  # repeats one token forever without a penalty
    input_ids = prompt(6)
    kwargs = _generate_kwargs(parse("--repetition-penalty", "1.3", "--max-new-tokens", "24"))
    out = SpeculativeGenerator(target, NGramDrafter(min_ngram=1)).generate(input_ids, **kwargs)
    with torch.inference_mode():
        reference = target.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=24,
            repetition_penalty=1.3,
        )  # fmt: skip
        plain = target.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=24
        )
    assert torch.equal(out.sequences, reference)
    assert not torch.equal(reference, plain)  # the penalty changed the output, so the check means something
