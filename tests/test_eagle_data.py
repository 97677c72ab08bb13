"""A head's training data: batched answers equal one-at-a-time greedy, shards resume after a crash,
top-k soft targets match the full distribution, and replayed acceptance equals the generator's."""

from __future__ import annotations

import json

import pytest
import torch

from specdec import InvalidArgumentError, SpeculativeGenerator
from specdec.drafts.eagle import EagleDrafter
from specdec.drafts.eagle import shards as shards_module
from specdec.drafts.eagle.answers import answer_batch
from specdec.drafts.eagle.data import capture_layers
from specdec.drafts.eagle.replay import replay_acceptance
from specdec.drafts.eagle.shards import DataSettings, ShardedData, build_shards
from specdec.drafts.eagle.train import TrainConfig, _target_probs, evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = (0, 1, 2)  # a 2-layer tiny model: embeddings, layer 1, the final normed state


def _prompts(prompt, n, lengths=(3, 7, 5, 9, 4, 6)):
    return [prompt(lengths[s % len(lengths)], seed=300 + s)[0].tolist() for s in range(n)]


def test_batched_answers_equal_one_at_a_time_greedy(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama", logit_scale=8.0)
    prompts = [torch.tensor(p) for p in _prompts(prompt, 4)]  # lengths 3..9: rows are left-padded
    answers = answer_batch(target, prompts, layers=LAYERS, max_new_tokens=10, pad_id=0, topk=5)
    for ids, answer in zip(prompts, answers, strict=True):
        expected = greedy_reference(target, ids[None], 10)[0]
        assert answer.tokens.tolist() == expected.tolist() and answer.prompt_length == ids.numel()
        # every position's hidden states, as one unpadded forward over prompt + answer computes them
        torch.testing.assert_close(answer.features, capture_layers(target, answer.tokens, LAYERS), atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
        with torch.inference_mode():
            logprobs = torch.log_softmax(target(answer.tokens[None]).logits[0].float(), dim=-1)
        torch.testing.assert_close(answer.top_logprobs, logprobs.topk(5).values, atol=1e-4, rtol=1e-4)
        # the greedy answer is the top-1 after each position
        assert answer.top_ids[ids.numel() - 1 : -1, 0].tolist() == answer.tokens[ids.numel() :].tolist()


def test_a_row_stops_at_eos_and_keeps_its_hidden_states(tiny_lm, prompt):
    target = tiny_lm("llama", logit_scale=8.0)
    prompts = [torch.tensor(p) for p in _prompts(prompt, 2)]
    free = answer_batch(target, prompts, layers=LAYERS, max_new_tokens=10, pad_id=0)
    eos = int(free[0].tokens[prompts[0].numel() + 2])  # one of row 0's answer tokens

    def cut(answer):  # the answer up to its first EOS, EOS included
        tail = answer.tokens[answer.prompt_length :].tolist()
        return answer.tokens[: answer.prompt_length + (tail.index(eos) + 1 if eos in tail else len(tail))].tolist()

    stopped = answer_batch(target, prompts, layers=LAYERS, max_new_tokens=10, pad_id=0, eos_ids=(eos,))
    assert [a.tokens.tolist() for a in stopped] == [cut(a) for a in free]
    assert stopped[0].tokens.numel() < free[0].tokens.numel()  # row 0 did stop early
    for answer in stopped:
        assert answer.features.shape[0] == answer.top_ids.shape[0] == answer.tokens.numel()
        torch.testing.assert_close(answer.features, capture_layers(target, answer.tokens, LAYERS), atol=1e-4,
                                   rtol=1e-4)  # fmt: skip


def _contents(data: ShardedData) -> list[tuple[list[int], torch.Tensor]]:
    return [(item["tokens"].tolist(), item["features"]) for item in data.iterate(list(range(len(data))))]


def test_an_interrupted_build_resumes_without_redoing_or_duplicating(tmp_path, tiny_lm, prompt, monkeypatch):
    target = tiny_lm("llama", logit_scale=8.0)
    prompts = _prompts(prompt, 7)
    settings = DataSettings(layers=LAYERS, max_new_tokens=6, topk=4)
    kwargs = dict(shard_size=3, batch_size=2, pad_id=0)  # shards of 3, 3, 1 prompts; 2 batches in a full shard
    whole = build_shards(target, None, prompts, tmp_path / "whole", settings, **kwargs)
    assert len(whole) == 7 and len(whole.shards) == 3

    real, calls = shards_module.answer_batch, []

    def crash_on_fourth(*args, **kw):
        calls.append(1)
        if len(calls) == 4:  # in shard 1's second batch: shard 0 is complete, shard 1 half written
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(shards_module, "answer_batch", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        build_shards(target, None, prompts, tmp_path / "run", settings, **kwargs)
    assert sorted(p.name for p in (tmp_path / "run").glob("shard-*")) == ["shard-00000", "shard-00001.partial"]
    assert len(ShardedData.open(tmp_path / "run")) == 3  # readers see complete shards only
    calls.clear()
    resumed = build_shards(target, None, prompts, tmp_path / "run", settings, **kwargs)
    assert len(calls) == 3  # shard 1's two batches and shard 2's one; shard 0 was not redone
    assert not list((tmp_path / "run").glob("*.partial"))
    assert len(resumed) == 7 and resumed.num_tokens == whole.num_tokens
    for (tokens_a, feats_a), (tokens_b, feats_b) in zip(_contents(whole), _contents(resumed), strict=True):
        assert tokens_a == tokens_b and torch.equal(feats_a, feats_b)
    assert torch.equal(resumed.token_counts, whole.token_counts)
    calls.clear()
    build_shards(target, None, prompts, tmp_path / "run", settings, **kwargs)
    assert calls == []  # complete: nothing to answer

    # more prompts: only the last (short) shard and the new ones are answered
    grown = build_shards(target, None, prompts + _prompts(prompt, 9)[7:], tmp_path / "run", settings, **kwargs)
    assert len(grown) == 9 and len(calls) == 2  # shard 2 rebuilt with 3 prompts (2 batches)
    for (tokens_a, feats_a), (tokens_b, feats_b) in zip(_contents(grown)[:6], _contents(whole)[:6], strict=True):
        assert tokens_a == tokens_b and torch.equal(feats_a, feats_b)  # shards 0 and 1 kept as they were
    shorter = build_shards(target, None, prompts[:3], tmp_path / "run", settings, **kwargs)
    assert len(shorter) == 3 and len(calls) == 2  # shard 0 alone, nothing answered, nothing deleted
    assert len(build_shards(target, None, prompts + _prompts(prompt, 9)[7:], tmp_path / "run", settings, **kwargs)) == 9
    with pytest.raises(InvalidArgumentError, match="delete it"):
        build_shards(target, None, prompts, tmp_path / "run", DataSettings(layers=LAYERS, max_new_tokens=7, topk=4),
                     **kwargs)  # fmt: skip


def test_a_torn_shard_is_rebuilt_and_index_lists_prompt_lengths(tmp_path, tiny_lm, prompt):
    target = tiny_lm("llama", logit_scale=8.0)
    prompts = _prompts(prompt, 2)
    settings = DataSettings(layers=LAYERS, max_new_tokens=4, topk=3)
    torn = tmp_path / "d" / "shard-00000.partial"
    torn.mkdir(parents=True)
    (torn / "tokens.bin").write_bytes(b"\x01\x02\x03")  # a crash in the middle of a write
    data = build_shards(target, None, prompts, tmp_path / "d", settings, shard_size=4, batch_size=4, pad_id=0)
    assert not torn.exists() and len(data) == 2
    meta = json.loads((tmp_path / "d" / "shard-00000" / "index.json").read_text())
    assert sorted(meta["prompt_lengths"]) == sorted(len(p) for p in prompts)
    assert data.read(0)["top_ids"].shape == (meta["lengths"][0], 3)


def test_topk_soft_targets_equal_the_full_distribution_when_k_covers_it(tiny_lm, prompt):
    target = tiny_lm("llama", logit_scale=8.0)
    vocab = 160
    (answer,) = answer_batch(target, [prompt(5)[0]], layers=LAYERS, max_new_tokens=6, pad_id=0, topk=vocab)
    item = {"features": answer.features, "top_ids": answer.top_ids, "top_logprobs": answer.top_logprobs}
    lm = target.get_output_embeddings().weight.detach().float()
    target_ids = torch.tensor([3, 7, 50, 99, 150])  # a draft vocabulary of 5 ids
    draft_of = torch.full((vocab,), -1)
    draft_of[target_ids] = torch.arange(5)
    full = _target_probs(item, draft_of, 5, lm, None, target_ids, "full")
    topk = _target_probs(item, draft_of, 5, lm, None, target_ids, "topk")
    torch.testing.assert_close(topk, full, atol=1e-5, rtol=1e-4)
    item["top_ids"], item["top_logprobs"] = answer.top_ids[:, :1], answer.top_logprobs[:, :1]
    top1 = _target_probs(item, draft_of, 5, lm, None, target_ids, "topk")  # only the argmax, if in the vocabulary
    assert ((top1 > 0).sum(-1) <= 1).all() and torch.all(top1 <= full + 1e-6)


def test_replayed_acceptance_equals_the_generators(tmp_path, tiny_lm, prompt):
    target = tiny_lm("llama", logit_scale=8.0)
    prompts = _prompts(prompt, 10)
    config = TrainConfig(held_out=2, epochs=4, max_new_tokens=12, draft_vocab_size=96, batch_size=2,
                         checkpoint_every=100, learning_rate=1e-2)  # fmt: skip
    result = train(target, None, prompts, tmp_path / "head", config, progress=False)
    from specdec.drafts.eagle import load_head

    head = load_head(tmp_path / "head", target)
    held = [torch.tensor(p) for p in prompts[:6]]
    answers = answer_batch(target, held, layers=head.config.target_layers, max_new_tokens=12, pad_id=0)
    replayed = replay_acceptance(head, [(a.tokens, a.features, a.prompt_length) for a in answers],
                                 num_draft_tokens=3)  # fmt: skip
    generated = evaluate(target, head, [p[None] for p in held], max_new_tokens=12, num_draft_tokens=3)
    assert replayed == generated
    assert generated["conditional_acceptance"] > 0  # a head that drafts something right, so the test bites
    assert result.steps > 0
    gen = SpeculativeGenerator(target, EagleDrafter(head, num_draft_tokens=3))
    assert gen.generate(held[0][None], max_new_tokens=12).sequences[0].tolist() == answers[0].tokens.tolist()


_KILLED_BUILD = """
import json, os, signal, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from conftest import build_model
from specdec.drafts.eagle.shards import DataSettings, build_shards
seen = []
def progress(n):
    seen.append(n)
    if len(seen) == 5:  # shard 1's second sequence is written (not flushed): die without any cleanup
        os.kill(os.getpid(), signal.SIGKILL)
build_shards(build_model("llama", logit_scale=8.0), None, json.loads(sys.argv[1]), sys.argv[2],
             DataSettings(layers=(0, 1, 2), max_new_tokens=6, topk=4), shard_size=3, batch_size=1, pad_id=0,
             progress=progress)
"""


def test_a_killed_build_resumes_to_the_same_data(tmp_path, tiny_lm, prompt):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    target = tiny_lm("llama", logit_scale=8.0)
    prompts = _prompts(prompt, 7)
    settings = DataSettings(layers=LAYERS, max_new_tokens=6, topk=4)
    kwargs = dict(shard_size=3, batch_size=1, pad_id=0)
    tests = str(Path(__file__).parent)
    child = subprocess.run([sys.executable, "-c", _KILLED_BUILD.format(tests=tests), json.dumps(prompts),
                            str(tmp_path / "run")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert sorted(p.name for p in (tmp_path / "run").glob("shard-*")) == ["shard-00000", "shard-00001.partial"]
    resumed = build_shards(target, None, prompts, tmp_path / "run", settings, **kwargs)
    whole = build_shards(target, None, prompts, tmp_path / "whole", settings, **kwargs)
    assert len(resumed) == 7 and not list((tmp_path / "run").glob("*.partial"))
    for (tokens_a, feats_a), (tokens_b, feats_b) in zip(_contents(whole), _contents(resumed), strict=True):
        assert tokens_a == tokens_b and torch.equal(feats_a, feats_b)


def test_sampled_views_add_seeded_answers(tmp_path, tiny_lm, prompt):
    from specdec.drafts.eagle.shards import build_views

    target = tiny_lm("llama", logit_scale=2.0)  # flat enough that sampling leaves the greedy path
    prompts = _prompts(prompt, 4)
    settings = DataSettings(layers=LAYERS, max_new_tokens=8, topk=4)
    kwargs = dict(sampled_views=2, temperature=1.0, shard_size=4, batch_size=4, pad_id=0)
    data = build_views(target, None, prompts, tmp_path / "a", settings, **kwargs)
    again = build_views(target, None, prompts, tmp_path / "b", settings, **kwargs)
    assert len(data) == 12 and (tmp_path / "a" / "data-sampled-2" / "shard-00000").is_dir()
    greedy, first, second = (_contents(data)[i : i + 4] for i in (0, 4, 8))
    assert [t for t, _ in first] != [t for t, _ in greedy] and [t for t, _ in first] != [t for t, _ in second]
    assert [t for t, _ in _contents(again)] == [t for t, _ in _contents(data)]  # seeded: rebuilt identically
    assert json.loads((tmp_path / "a" / "data-sampled-1" / "settings.json").read_text())["temperature"] == 1.0


def test_a_checkpoint_from_before_a_new_setting_still_resumes():
    from dataclasses import replace

    from specdec.drafts.eagle.head import EagleHeadConfig
    from specdec.drafts.eagle.train import _fingerprint, _same_settings

    head = EagleHeadConfig(kind="eagle3", hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                           intermediate_size=64, vocab_size=160, draft_vocab_size=64, target_hidden_size=32,
                           target_layers=(0, 1))  # fmt: skip
    config = TrainConfig()
    saved = json.loads(_fingerprint(config, head))
    del saved["train"]["sampled_views"]  # written before the field existed
    assert _same_settings(json.dumps(saved), config, head)
    assert not _same_settings(json.dumps(saved), replace(config, sampled_views=1), head)
    assert not _same_settings(json.dumps(saved), replace(config, learning_rate=1e-3), head)
