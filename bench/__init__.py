"""The benchmark instrument behind ``specdec bench``: ``specdec.bench``.

It measures our speculative decoding against its ceiling (the ideal speedup
of Leviathan et al. from the measured alpha, c and v) and against Hugging Face
(``generate`` alone, prompt lookup, assisted generation), all in one process,
interleaved, with medians. It sits above the three packages (the folder
``bench/`` installs as ``specdec.bench``): it may import the core,
``specdec.drafts`` and ``specdec.streaming``, and none of them imports it,
except the CLI's ``bench`` command, lazily.

Entry points: :func:`add_bench_arguments` and :func:`run_bench`; the
workloads :func:`run_controlled` and :func:`run_real` for scripts; the one
tiny-model factory of the tests and benchmarks in :mod:`specdec.bench.models`.
Plotting needs the ``bench`` extra (matplotlib), imported only when a plot is drawn.
"""

from .controlled import draft_length_histogram, run_controlled
from .harness import time_forward
from .models import build_cost_draft, byte_level_bpe, random_llama, random_model
from .oracle_assistant import configure_assistant, configure_oracle, oracle_model_class
from .real import run_real
from .report import (
    auto_summary,
    controlled_table,
    hf_summary,
    machine_line,
    paired_ratio,
    plot_controlled,
    real_table,
    write_json,
)
from .run import DEFAULTS, add_bench_arguments, cpu_model, environment, progress_bar, run_bench
from .workloads import CONTROLLED_PROMPT, PROMPTS, Prompt, chat_ids

__all__ = [
    "CONTROLLED_PROMPT",
    "DEFAULTS",
    "PROMPTS",
    "Prompt",
    "add_bench_arguments",
    "auto_summary",
    "build_cost_draft",
    "byte_level_bpe",
    "chat_ids",
    "configure_assistant",
    "configure_oracle",
    "controlled_table",
    "cpu_model",
    "draft_length_histogram",
    "environment",
    "hf_summary",
    "machine_line",
    "oracle_model_class",
    "paired_ratio",
    "plot_controlled",
    "progress_bar",
    "random_llama",
    "random_model",
    "real_table",
    "run_bench",
    "run_controlled",
    "run_real",
    "time_forward",
    "write_json",
]
