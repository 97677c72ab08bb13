"""The hidden-state seam of the core: the adapter's hooks, the generator's checks, and what a drafter receives."""

from __future__ import annotations

import pytest
import torch

from specdec import CausalLMAdapter, InvalidArgumentError, SpeculativeGenerator, UnsupportedModelError
from specdec.drafts import NGramDrafter

from conftest import ARCHS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ARCHS)
def test_captured_layers_equal_output_hidden_states(arch, tiny_lm, prompt):
    """Hooks on the named layers give what ``output_hidden_states`` gives, across a prefill and a block."""
    model = tiny_lm(arch)
    adapter = CausalLMAdapter(model)
    layers = tuple(range(adapter.num_layers + 1))[::-1]  # every id, in an unusual order
    ids = prompt(9)[0]
    with torch.inference_mode():
        reference = model(ids[None], output_hidden_states=True).hidden_states  # num_layers + 1 of [1, 9, hidden]
    expected = torch.stack([reference[i][0] for i in layers], dim=1)  # [9, layers, hidden]
    adapter.reset()
    adapter.capture(layers)
    try:
        adapter.forward(ids[:6], last_only=True)
        first = adapter.hidden_states.clone()
        adapter.forward(ids[6:])
        second = adapter.hidden_states
    finally:
        adapter.capture(None)
    assert first.shape == (6, len(layers), expected.shape[-1])
    torch.testing.assert_close(torch.cat([first, second]), expected, atol=2e-5, rtol=1e-4)


def test_hooks_exist_only_while_asked(tiny_lm):
    model = tiny_lm("llama")
    adapter = CausalLMAdapter(model)

    before = _hooks(model)
    adapter.capture((0, 2))
    assert _hooks(model) == before + 2
    adapter.capture(None)
    assert _hooks(model) == before
    with pytest.raises(RuntimeError):
        _ = adapter.hidden_states


class Recorder:
    """A drafter asking for hidden states; it proposes nothing and records what it is handed."""

    default_num_draft_tokens = 2
    vocab_size = None

    def __init__(self, layers=(0, 2), propose=None):
        self.target_layers = layers
        self.received: list[torch.Tensor] = []
        self.events: list[str] = []
        self.proposals = propose or []

    def begin(self, context):
        self.events.append("begin")

    def observe_hidden_states(self, hidden_states):
        self.received.append(hidden_states.clone())
        self.events.append(f"hidden {hidden_states.shape[0]}")

    def propose(self, max_tokens):
        from specdec import DraftBlock

        ids = self.proposals.pop(0) if self.proposals else []
        return DraftBlock(torch.tensor(ids[:max_tokens], dtype=torch.long))

    def update(self, token_ids, num_accepted):
        self.events.append(f"update {len(token_ids)}")

    def end(self):
        self.events.append("end")


def _hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_drafter_gets_the_kept_positions_in_order(tiny_lm, prompt, greedy_reference):
    model = tiny_lm("llama")
    hooks_before = _hooks(model)
    input_ids = prompt(5)
    reference = greedy_reference(model, input_ids, 8)
    continuation = reference[0, 5:].tolist()
    # drafts: two right tokens, then one right and one wrong, then nothing
    wrong = (continuation[4] + 1) % 160
    drafter = Recorder(propose=[continuation[:2], [continuation[3], wrong]])
    out = SpeculativeGenerator(model, drafter).generate(input_ids, max_new_tokens=8)
    assert out.sequences.tolist() == reference.tolist()
    assert drafter.events[:5] == ["begin", "hidden 4", "hidden 3", "update 3", "hidden 2"]
    everything = torch.cat(drafter.received)  # every position but the last, once, in order
    sequence = out.sequences[0]
    assert everything.shape[0] == sequence.shape[0] - 1
    with torch.inference_mode():
        states = model(sequence[None, :-1], output_hidden_states=True).hidden_states
    expected = torch.stack([states[0][0], states[2][0]], dim=1)
    torch.testing.assert_close(everything, expected, atol=2e-5, rtol=1e-4)
    # the hooks are gone after the call
    assert _hooks(model) == hooks_before


def test_bad_requests_are_refused_at_construction(tiny_lm):
    model = tiny_lm("llama")
    with pytest.raises(UnsupportedModelError, match=r"\[5\].*0\.\.2"):
        SpeculativeGenerator(model, Recorder(layers=(0, 5)))
    with pytest.raises(InvalidArgumentError, match="tuple"):
        SpeculativeGenerator(model, Recorder(layers=[0, 1]))
    broken = Recorder()
    broken.observe_hidden_states = None
    with pytest.raises(InvalidArgumentError, match="observe_hidden_states"):
        SpeculativeGenerator(model, broken)


def test_drafters_that_do_not_ask_install_no_hooks(tiny_lm, prompt):
    model = tiny_lm("llama")
    before, seen = _hooks(model), []
    SpeculativeGenerator(model, NGramDrafter()).generate(
        prompt(5), max_new_tokens=6, on_tokens=lambda step, ids: seen.append(_hooks(model))
    )
    assert seen and set(seen) == {before}
