"""Training a head: refusals before long work, resumable and reproducible runs, the saved folder, the CLI."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
import torch

from specdec import InvalidArgumentError, SpecDecError, UnsupportedModelError
from specdec.cli import main
from specdec.drafts.eagle import load_head
from specdec.drafts.eagle import train as train_module
from specdec.drafts.eagle.data import read_prompts
from specdec.drafts.eagle.train import TrainConfig, TrainingError, train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(held_out=2, epochs=2, max_new_tokens=8, draft_vocab_size=64, batch_size=2, checkpoint_every=2)


def _prompts(prompt, n=8):
    return [prompt(5, seed=200 + s)[0].tolist() for s in range(n)]


def test_prompt_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InvalidArgumentError, match="no prompts"):
        read_prompts(empty)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "a b"}\n\n{"prompt": "c"}\n')
    assert read_prompts(lines) == ["a b", "c"]
    lines.write_text('{"text": "a"}\n')
    with pytest.raises(InvalidArgumentError, match=":1:"):
        read_prompts(lines)


def test_refusals_before_any_work(tmp_path, tiny_lm, prompt, monkeypatch):
    target = tiny_lm("llama")
    with pytest.raises(InvalidArgumentError, match="no prompts"):
        train(target, None, [], tmp_path / "a")
    with pytest.raises(InvalidArgumentError, match="leave none"):
        train(target, None, _prompts(prompt, 2), tmp_path / "a", TrainConfig(held_out=2))
    with pytest.raises(InvalidArgumentError, match="0..2"):
        train(target, None, _prompts(prompt), tmp_path / "a", TrainConfig(target_layers=(0, 3)))
    with pytest.raises(UnsupportedModelError):
        train(tiny_lm("mistral", layer_types=["full_attention", "linear_attention"]), None, _prompts(prompt),
              tmp_path / "a")  # fmt: skip
    Memory = namedtuple("Memory", "available")
    monkeypatch.setattr("psutil.virtual_memory", lambda: Memory(available=1000))
    with pytest.raises(TrainingError, match="memory"):
        train(target, None, _prompts(prompt), tmp_path / "b", TrainConfig(**SMALL))
    assert not (tmp_path / "b" / "train-work" / "data").exists()  # nothing was built
    monkeypatch.undo()
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: Usage(1, 1, 1000))
    with pytest.raises(TrainingError, match="disk"):
        train(target, None, _prompts(prompt), tmp_path / "c", TrainConfig(**SMALL))
    assert isinstance(TrainingError("x"), SpecDecError)


def test_interrupted_run_resumes_to_the_same_head(tmp_path, tiny_lm, prompt, monkeypatch):
    target = tiny_lm("llama", logit_scale=8.0)
    prompts = _prompts(prompt)
    whole = train(target, None, prompts, tmp_path / "whole", TrainConfig(**SMALL), progress=False)
    assert whole.steps == 6  # 6 training prompts, batches of 2, 2 epochs
    saved = train_module._save_checkpoint
    calls = []

    def crash_after_first(*args, **kwargs):
        saved(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if the user stopped the run after step 2

    monkeypatch.setattr(train_module, "_save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(target, None, prompts, tmp_path / "resumed", TrainConfig(**SMALL), progress=False)
    assert not (tmp_path / "resumed" / "config.json").exists()
    resumed = train(target, None, prompts, tmp_path / "resumed", TrainConfig(**SMALL), progress=False)
    assert resumed.steps == 6 and len(calls) == 1 + 2  # steps 4 and 6 checkpointed in the second call
    a, b = load_head(tmp_path / "whole", target), load_head(tmp_path / "resumed", target)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=False):
        assert torch.equal(x, y), name  # same seed, same data order: bit-identical
    assert resumed.acceptance == whole.acceptance
    # other settings with the same work folder are refused, not silently mixed
    with pytest.raises(TrainingError, match="other settings"):
        train(target, None, prompts, tmp_path / "resumed", TrainConfig(**{**SMALL, "learning_rate": 1e-2}))
    card = (tmp_path / "whole" / "README.md").read_text()
    facts = json.loads((tmp_path / "whole" / "training.json").read_text())
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert "acceptance" in card and facts["steps"] == 6 and facts["held_out_prompts"] == 2
    assert config["speculators_model_type"] == "eagle3" and config["draft_vocab_size"] == 64


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def target_folder(tmp_path_factory):
    from _streaming_fixtures import byte_level_tokenizer, tiny_llama

    tokenizer = byte_level_tokenizer()
    model = tiny_llama(vocab_size=len(tokenizer), seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    folder = tmp_path_factory.mktemp("target")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cli_train_then_generate(tmp_path, target_folder, capsys):
    prompts = tmp_path / "prompts.txt"
    words = "the quick brown fox jumps over the lazy dog hello world again".split()
    prompts.write_text("\n".join(" ".join(words[i % 7 : i % 7 + 3]) for i in range(12)) + "\n")
    head = tmp_path / "head"
    code = main(["train-draft", "--target", str(target_folder), "--prompts", str(prompts), "--out", str(head),
                 "--max-new-tokens", "8", "--epochs", "1", "--held-out", "2", "--draft-vocab-size", "100",
                 "--device", "cpu", "--no-chat", "--answer-batch-size", "3", "--shard-size", "4"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and "conditional_acceptance" in summary
    shards = sorted(p.name for p in (head / "train-work" / "data").glob("shard-*"))
    assert shards == ["shard-00000", "shard-00001", "shard-00002"]  # 10 training prompts, 4 per shard
    outputs = {}
    for draft in ("ngram", str(head)):
        code = main(["generate", "the lazy dog", "--target", str(target_folder), "--draft", draft, "--device", "cpu",
                     "--max-new-tokens", "12", "--no-chat", "--json"])  # fmt: skip
        assert code == 0
        out = capsys.readouterr().out
        outputs[draft] = out.rsplit("\n", 2)[0]  # the text, without the statistics line
        assert json.loads(out.strip().splitlines()[-1])["new_tokens"] == 12
    assert outputs["ngram"] == outputs[str(head)]  # greedy: the same text whatever drafts


def test_cli_refuses_an_empty_prompt_file_before_loading(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["train-draft", "--target", str(tmp_path / "no-such-model"), "--prompts", str(empty),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "holds no prompts" in capsys.readouterr().err
