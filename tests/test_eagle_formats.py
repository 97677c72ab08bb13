"""Loading EAGLE heads: each format's random checkpoint against an independent reference forward; refusals."""

from __future__ import annotations

import json

import pytest
import torch
from eagle_helpers import (
    random_eagle1_weights,
    random_eagle3_weights,
    reference_eagle1,
    reference_eagle3,
    write_checkpoint,
)

from specdec import SpecDecError
from specdec.drafts.eagle import HeadFormatError, HeadKV, HeadMismatchError, detect_format, load_head, save_speculators

pytestmark = pytest.mark.usefixtures("one_thread")


def _double(weights):
    return {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}


def _inputs(n=9, layers=3, hidden=32, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, layers, hidden, generator=g), torch.randint(0, 160, (n,), generator=g)


def _run_head(head, features, tokens, split=None):
    """The head over positions 0..n-1; with ``split``, in two calls sharing a cache."""
    cache = HeadKV.empty(head.config, device="cpu", dtype=head.lm_head.weight.dtype, capacity=2)
    n = features.shape[0]
    cuts = [0, split, n] if split else [0, n]
    outs, logits = [], []
    for a, b in zip(cuts, cuts[1:], strict=False):
        h, lg = head.step(head.project(features[a:b]), tokens[a:b], torch.arange(a, b), cache)
        outs.append(h)
        logits.append(lg)
    assert cache.length == n
    return torch.cat(outs), torch.cat(logits)


@pytest.mark.parametrize("fmt", ["eagle3", "speculators"])
@pytest.mark.parametrize("norm_before_residual", [False, True])
@pytest.mark.parametrize("with_embeddings", [False, True])
def test_eagle3_formats_match_reference(tmp_path, tiny_lm, fmt, norm_before_residual, with_embeddings):
    target = tiny_lm("llama")
    # a head narrower than the target must ship its embeddings; one as wide may use the target's
    weights, shape = random_eagle3_weights(with_embeddings=with_embeddings, hidden=24 if with_embeddings else 32)
    folder = write_checkpoint(tmp_path / fmt, fmt, weights, shape, norm_before_residual=norm_before_residual)
    head = load_head(folder, target)
    assert head.config.kind == "eagle3"
    assert head.config.target_layers == (0, 1, 2)
    assert head.config.draft_vocab_size == 64 and head.config.hidden_size == (24 if with_embeddings else 32)
    features, tokens = _inputs()
    embed = weights["embed_tokens.weight"] if with_embeddings else target.get_input_embeddings().weight.detach()
    ref_h, ref_logits = reference_eagle3(
        _double(weights), shape, features.reshape(9, -1).double(), tokens, embed.double(),
        norm_before_residual=norm_before_residual,
    )  # fmt: skip
    for split in (None, 4):
        h, logits = _run_head(head, features, tokens, split)
        torch.testing.assert_close(h.double(), ref_h, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(logits.double(), ref_logits, atol=2e-5, rtol=2e-5)
    target_ids = torch.arange(64) + weights["d2t"]
    assert head.target_ids.tolist() == target_ids.tolist()


def test_eagle1_matches_reference(tmp_path, tiny_lm):
    target = tiny_lm("llama")
    weights, shape = random_eagle1_weights()
    folder = write_checkpoint(tmp_path / "e1", "eagle1", weights, shape, bin_file=True)
    head = load_head(folder, target)
    assert head.config.kind == "eagle1" and head.config.target_layers == (2,)
    assert head.config.draft_vocab_size == 160
    features, tokens = _inputs(layers=1)
    embed = target.get_input_embeddings().weight.detach().double()
    lm_head = target.get_output_embeddings().weight.detach().double()
    ref_h, ref_logits = reference_eagle1(_double(weights), shape, features[:, 0].double(), tokens, embed, lm_head)
    for split in (None, 3):
        h, logits = _run_head(head, features, tokens, split)
        torch.testing.assert_close(h.double(), ref_h, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(logits.double(), ref_logits, atol=2e-5, rtol=2e-5)


def test_speculators_round_trip(tmp_path, tiny_lm):
    target = tiny_lm("llama")
    weights, shape = random_eagle3_weights(hidden=32)
    head = load_head(write_checkpoint(tmp_path / "a", "eagle3", weights, shape), target)
    out = save_speculators(head, tmp_path / "b", verifier="tiny-llama", num_draft_tokens=5)
    config = json.loads((out / "config.json").read_text())
    assert config["speculators_model_type"] == "eagle3"
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 5
    assert detect_format(config) == "speculators"
    again = load_head(out, target)
    features, tokens = _inputs()
    for a, b in zip(_run_head(head, features, tokens), _run_head(again, features, tokens), strict=False):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ----------------------------------------------------------------------------- refusals


def _expect(error, folder, target, *fragments):
    with pytest.raises(error) as info:
        load_head(folder, target)
    assert isinstance(info.value, SpecDecError)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_mismatched_heads_are_refused(tmp_path, tiny_lm):
    target = tiny_lm("llama")
    weights, shape = random_eagle3_weights(target_hidden=48)
    folder = write_checkpoint(tmp_path / "hidden", "eagle3", weights, shape, target_hidden=48)
    _expect(HeadMismatchError, folder, target, "size 48", "are 32")
    weights, shape = random_eagle3_weights(vocab=200)
    folder = write_checkpoint(tmp_path / "vocab", "speculators", weights, shape)
    _expect(HeadMismatchError, folder, target, "200 tokens", "160")
    weights, shape = random_eagle3_weights(hidden=32)
    folder = write_checkpoint(tmp_path / "layers", "eagle3", weights, shape, layer_ids=(0, 1, 7))
    _expect(HeadMismatchError, folder, target, "[7]", "0..2")
    bad = dict(weights, d2t=weights["d2t"] + 200)
    folder = write_checkpoint(tmp_path / "d2t", "eagle3", bad, shape)
    _expect(HeadMismatchError, folder, target, "d2t")


def test_corrupt_partial_and_unknown_checkpoints_are_refused(tmp_path, tiny_lm):
    target = tiny_lm("llama")
    weights, shape = random_eagle3_weights()
    partial = {k: v for k, v in weights.items() if k != "midlayer.self_attn.k_proj.weight"}
    _expect(HeadFormatError, write_checkpoint(tmp_path / "p", "eagle3", partial, shape), target, "k_proj", "missing")
    # hidden 24 != the target's 32: the target's embeddings cannot stand in for missing ones
    _expect(HeadFormatError, write_checkpoint(tmp_path / "e", "eagle3", weights, shape), target, "embed_tokens")
    wrong = dict(weights, **{"norm.weight": torch.ones(7)})
    _expect(HeadFormatError, write_checkpoint(tmp_path / "w", "eagle3", wrong, shape), target, "norm.weight", "(7,)")
    folder = write_checkpoint(tmp_path / "c", "eagle3", weights, shape)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _expect(HeadFormatError, folder, target, "cannot read")
    folder = write_checkpoint(tmp_path / "u", "eagle3", weights, shape)
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    _expect(HeadFormatError, folder, target, "unknown head format")
    (folder / "config.json").write_text("{not json")
    _expect(HeadFormatError, folder, target, "not valid JSON")
    (folder / "config.json").write_text(json.dumps({"speculators_model_type": "medusa"}))
    _expect(HeadFormatError, folder, target, "medusa")
    _expect(HeadFormatError, tmp_path / "nowhere", target, "not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    _expect(HeadFormatError, empty, target, "no weights")
