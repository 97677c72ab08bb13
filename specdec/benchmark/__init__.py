"""The benchmark instrument behind ``specdec bench``.

It measures our speculative decoding against its ceiling (the ideal speedup
of Leviathan et al. from the measured alpha, c and v) and against Hugging Face
(``generate`` alone, prompt lookup, assisted generation), all in one process,
interleaved, with medians. Drafters come in as factories, so this package,
like the rest of ``specdec``, never imports ``drafts``.

Entry points: :func:`add_bench_arguments` and :func:`run_bench`; the
workloads :func:`run_controlled` and :func:`run_real` for scripts.
"""

from .controlled import run_controlled
from .oracle_assistant import configure_assistant, configure_oracle, oracle_model_class
from .real import run_real
from .report import controlled_table, plot_controlled, real_table, write_json
from .run import DEFAULTS, add_bench_arguments, build_cost_draft, run_bench
from .workloads import CONTROLLED_PROMPT, PROMPTS, Prompt, chat_ids, random_llama

__all__ = [
    "CONTROLLED_PROMPT",
    "DEFAULTS",
    "PROMPTS",
    "Prompt",
    "add_bench_arguments",
    "build_cost_draft",
    "chat_ids",
    "configure_assistant",
    "configure_oracle",
    "controlled_table",
    "oracle_model_class",
    "plot_controlled",
    "random_llama",
    "real_table",
    "run_bench",
    "run_controlled",
    "run_real",
    "write_json",
]
