"""The static path (issue 13): fixed shapes over specdec's cache, compiled or not, never a different output.

Greedy output with ``compile=StaticConfig(compile=False)`` (the padded, fixed-shape
passes run eagerly: rows to a power of two, columns to a static width, every
slot of the cache read) equals the target's own ``generate`` token for token,
for drafts that are always right, always wrong and n-gram lookups, for one row
and for a batch, through chunked prefill and a cache that grows. One test
compiles a tiny model for real (marked ``slow``: inductor takes a minute or
two on a cold cache), and a compiler that fails falls back with one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specdec import InvalidArgumentError, SpeculativeGenerator, StaticConfig, cpu_gemm
from specdec.drafts import NGramDrafter, OracleDrafter
from specdec.static_target import StaticTarget, StepShape

from conftest import build_model, hf_greedy, make_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

STATIC = StaticConfig(compile=False, max_len=64)


def _reference(model, prompt, new):
    return hf_greedy(model, prompt, new)[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral_sw"])
@pytest.mark.parametrize("acceptance,k", [(1.0, 3), (1.0, 7), (0.0, 5), (0.7, 12)])
def test_static_greedy_equals_generate(arch, acceptance, k, tiny_lm):
    """Widths 4, 8, 16 (k + 1 padded up), rejections and a cache grown past max_len (64 -> 128)."""
    target = tiny_lm(arch)
    prompt = make_prompt(9, seed=3)
    new = 70
    expected = _reference(target, prompt, new)
    drafter = OracleDrafter(expected, acceptance, seed=1, num_draft_tokens=k)
    gen = SpeculativeGenerator(target, drafter, compile=STATIC)
    out = gen.generate(prompt, max_new_tokens=new)
    assert out.sequences[0].tolist() == expected.tolist()
    assert isinstance(gen.target, StaticTarget)
    assert gen.target.passes["static"] > 0 and gen.target.passes["eager"] == 0


def test_static_batch_and_chunked_prefill_equal_generate(tiny_lm):
    """Three rows (padded to four), prompts longer than the widest width, prefilled in static chunks of 16."""
    target = tiny_lm("qwen2")
    prompts = [make_prompt(n, seed=20 + n)[0] for n in (40, 5, 23)]
    new = 20
    config = StaticConfig(compile=False, widths=(1, 2, 4, 8, 16), max_len=64)
    gen = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=4), compile=config, max_prefill_chunk=16)
    out = gen.generate([p.tolist() for p in prompts], max_new_tokens=new)
    for r, prompt in enumerate(prompts):
        stats = out.row_stats[r]
        width = max(p.shape[0] for p in prompts)  # rows are laid out as generate lays out a left-padded batch
        row = out.sequences[r, width - stats.prompt_tokens : width + stats.new_tokens]
        assert row.tolist() == _reference(target, prompt[None], new).tolist()
    assert gen.target.passes["eager"] == 0


def test_wider_passes_run_eagerly_on_the_same_cache(tiny_lm):
    """k = 9 needs width 10: past the widest static width (8) that pass runs eagerly; the output is the same.

    (A fixed k from the drafter is capped to the widest width; an explicit one is not.)
    """
    target = tiny_lm("llama")
    prompt = make_prompt(6, seed=5)
    expected = _reference(target, prompt, 30)
    drafter = OracleDrafter(expected, 1.0, num_draft_tokens=9)
    gen = SpeculativeGenerator(target, drafter, compile=StaticConfig(compile=False, widths=(1, 8)))
    out = gen.generate(prompt, max_new_tokens=30, num_draft_tokens=9)
    assert out.sequences[0].tolist() == expected.tolist()
    assert gen.target.passes["eager"] > 0 and gen.target.passes["static"] > 0


def test_auto_draft_length_is_priced_by_the_static_widths(tiny_lm):
    target = tiny_lm("llama")
    prompt = make_prompt(8, seed=6)
    expected = _reference(target, prompt, 40)
    gen = SpeculativeGenerator(target, OracleDrafter(expected, 0.9, num_draft_tokens=3), compile=STATIC)
    costs = gen.draft_costs
    assert costs.k_max == 15  # the widest verify width (16) minus one
    assert sorted(costs.step_s) == list(range(1, 17))
    assert costs.step_s[6] == costs.step_s[9]  # 6 positions run as a pass of width 9
    out = gen.generate(prompt, max_new_tokens=40, num_draft_tokens="auto")
    assert out.sequences[0].tolist() == expected.tolist()


def test_a_failing_compiler_falls_back_with_one_line(tiny_lm, monkeypatch):
    def broken(*args, **kwargs):
        def step(*a, **k):
            raise RuntimeError("no C++ compiler here")

        return step

    monkeypatch.setattr(torch, "compile", broken)
    lines: list[str] = []
    target = tiny_lm("llama")
    prompt = make_prompt(7, seed=8)
    expected = _reference(target, prompt, 20)
    gen = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3), compile=StaticConfig(warmup=False))
    gen.target.log = lines.append
    out = gen.generate(prompt, max_new_tokens=20)
    assert out.sequences[0].tolist() == expected.tolist()
    assert not gen.target.compiled
    assert len(lines) == 1 and "falls back to eager" in lines[0] and "no C++ compiler here" in lines[0]


@pytest.mark.parametrize(
    "value,message",
    [("yes", "compile must be"), (1, "compile must be")],
)
def test_compile_argument_is_checked_before_model_work(value, message, tiny_lm):
    with pytest.raises(InvalidArgumentError, match=message):
        SpeculativeGenerator(tiny_lm("llama"), NGramDrafter(), compile=value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"widths": (4, 2)}, "increasing"),
        ({"widths": ()}, ">= 1"),
        ({"widths": (0, 4)}, ">= 1"),
        ({"max_len": 0}, "max_len"),
        ({"gemm": "blas"}, "gemm"),
    ],
)
def test_static_config_is_validated(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        StaticConfig(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("gemm", ["mkl", "onednn"])
def test_compiled_greedy_equals_generate(gemm, tiny_lm, tmp_path):
    """A real torch.compile (inductor, freezing) of one width: the same tokens as generate.

    Two shapes compile, each said once: the prompt's prefill chunk (8 columns, no logits) and the verify
    passes (8 columns, every column's logits). Each float32 products' library, as asked.
    """
    if not torch._C.has_mkl or not cpu_gemm.onednn_packing_available():
        pytest.skip("this torch lacks MKL or oneDNN packing")
    # A model of its own: dynamo keeps compiled code per function and guards on the model, so a second
    # compile of the same model in this process would reuse the first's graph.
    target = build_model("llama", seed={"mkl": 41, "onednn": 42}[gemm])
    prompt = make_prompt(9, seed=4)
    new = 24
    expected = _reference(target, prompt, new)
    lines: list[str] = []
    config = StaticConfig(
        widths=(8,), max_len=64, autotune=False, warmup=False, cache_dir=tmp_path / "inductor", gemm=gemm
    )
    gen = SpeculativeGenerator(target, OracleDrafter(expected, 0.6, seed=2, num_draft_tokens=4), compile=config)
    gen.target.log = lines.append
    from torch._inductor.codecache import PyCodeCache

    loaded = len(PyCodeCache.modules)
    out = gen.generate(prompt, max_new_tokens=new)
    assert out.sequences[0].tolist() == expected.tolist()
    assert gen.target.compiled, lines
    assert gen.target.passes["static"] > 0
    assert sorted(line.split(" in ")[0] for line in lines) == [
        "specdec: compiled the target's step rows=1 width=8 slots=256 logits=1",
        "specdec: compiled the target's step rows=1 width=8 slots=256 logits=8",
    ]
    # Freezing took effect: the weights are constants of the generated code (packed once), not inputs of
    # every call. (`torch.compile(options={"freezing": True})` alone leaves them inputs.) The products call
    # the library asked for. (The code inductor loaded for these steps: where it writes it is decided once a
    # process, so this test's cache_dir holds it only when it runs first.)
    generated = [Path(module.__file__).read_text() for module in PyCodeCache.modules[loaded:]]
    steps = [code for code in generated if "def call(" in code]
    assert steps and all("_frozen_param" in code for code in steps), "weights were not frozen"
    product = {"mkl": "mkl._mkl_linear", "onednn": "mkldnn._linear_pointwise"}[gemm]
    other = {"mkl": "mkldnn._linear_pointwise", "onednn": "mkl._mkl_linear"}[gemm]
    assert all(product in code and other not in code for code in steps), gemm


def test_the_float32_products_library_is_measured_on_this_cpu(tiny_lm):
    """`gemm="auto"` times both libraries' prepacked products on this machine and takes the faster."""
    if not torch._C.has_mkl or not cpu_gemm.onednn_packing_available():
        pytest.skip("this torch lacks MKL or oneDNN packing")
    model = tiny_lm("llama")
    chosen, times = cpu_gemm.choose_library(model, 9)
    assert set(times) == {"mkl", "onednn"} and all(t > 0 for t in times.values())
    assert chosen == min(times, key=times.get)
    static = SpeculativeGenerator(model, NGramDrafter(), compile=StaticConfig(compile=False, warmup=False)).target
    assert static.library_for(StepShape(rows=1, width=9, read_len=64, keep=9)) in ("mkl", "onednn")
    first = static.library_times[9]
    assert set(first) == {"mkl", "onednn"}
    static.library_for(StepShape(rows=1, width=9, read_len=64, keep=1))  # the same rows: measured once
    assert static.library_times[9] is first


@pytest.mark.parametrize("command", [["generate", "hello"], ["serve", "--http", "127.0.0.1:0"]])
def test_cli_compile_flag(command):
    from specdec.cli import build_parser

    parser = build_parser(with_bench=False)
    assert parser.parse_args([*command, "--compile"]).compile is True
    assert parser.parse_args(command).compile is False
