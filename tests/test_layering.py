"""The package layering of the design card, checked by scanning the import statements of every source file.

    specdec            imports neither specdec.drafts nor specdec.streaming (the CLI wiring modules aside)
    specdec.drafts     imports the core's public names only, never specdec.streaming
    specdec.streaming  imports the core's public names only, never specdec.drafts
    specdec.bench      the benchmark instrument, above the three: it may import any of them; none of them
                       imports it, except specdec/cli.py's ``bench`` command, inside a function (lazily)
    benchmarks/        scripts: import the packages (specdec.bench), never the tests' modules

The folders drafts/, streaming/ and bench/ install as specdec.drafts, specdec.streaming
and specdec.bench (pyproject's package-dir), so a module's import name is its folder's
package name followed by its path inside that folder.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import specdec

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("specdec", "drafts", "streaming", "bench")  # folders
IMPORT_NAMES = {
    "specdec": "specdec",
    "drafts": "specdec.drafts",
    "streaming": "specdec.streaming",
    "bench": "specdec.bench",
}
SUBPACKAGES = ("specdec.drafts", "specdec.streaming", "specdec.bench")
# the CLI: allowed to import all three packages, and the bench lazily
WIRING_MODULES = {"specdec.cli", "specdec.cli_run", "specdec.cli_resident", "specdec.cli_train"}
FORBIDDEN = {
    "specdec": {"specdec.drafts", "specdec.streaming", "specdec.bench"},
    "specdec.drafts": {"specdec.streaming", "specdec.bench"},
    "specdec.streaming": {"specdec.drafts", "specdec.bench"},
    "specdec.bench": set(),
}
PUBLIC_NAMES_ONLY = {"specdec.drafts", "specdec.streaming"}  # they see the core through `from specdec import ...`
# Old top-level names: importing them at all is a mistake now (they are other projects' packages).
STALE_TOP_LEVEL = {"drafts", "streaming", "bench"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    parts[0] = IMPORT_NAMES[parts[0]]
    return ".".join(parts)


def package_of(target: str) -> str:
    """The layering package an absolute module name belongs to."""
    for name in SUBPACKAGES:
        if target == name or target.startswith(name + "."):
            return name
    return target.split(".")[0]


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for each import statement, relative ones resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


def source_files(package: str) -> list[Path]:
    directory = ROOT / package
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def violations(package: str) -> list[str]:
    problems = []
    public = set(specdec.__all__)
    name = IMPORT_NAMES[package]
    for path in source_files(package):
        module = module_name(path)
        if module in WIRING_MODULES:
            continue
        for target, names, line in imports(path):
            top = package_of(target)
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if top in FORBIDDEN[name]:
                problems.append(f"{where}: {name} must not import {top}")
            if target.split(".")[0] in STALE_TOP_LEVEL:
                problems.append(f"{where}: the package is specdec.{target.split('.')[0]} now")
            if name in PUBLIC_NAMES_ONLY and top == "specdec":
                if target != "specdec":
                    problems.append(f"{where}: import specdec's public names (`from specdec import ...`)")
                private = [n for n in names if n not in public]
                if private:
                    problems.append(f"{where}: {private} are not in specdec.__all__")
    return problems


@pytest.mark.parametrize("package", PACKAGES)
def test_layering(package):
    if not source_files(package):
        pytest.skip(f"{package}/ has no sources yet")
    assert violations(package) == []


def test_the_scan_sees_imports(tmp_path, monkeypatch):
    """The checker itself: it resolves relative imports and catches each kind of violation."""
    fake = tmp_path
    for package, files in {
        "specdec": {"__init__.py": "", "core.py": "import specdec.streaming\n", "cli.py": "import specdec.drafts\n"},
        "drafts": {
            "__init__.py": "from .model import X\n",
            "model.py": "from specdec.generator import SpeculativeGenerator\nfrom specdec import _private\n",
        },
        "streaming": {"__init__.py": "", "sub/__init__.py": "", "sub/deep.py": "from ...drafts import ngram\n"},
    }.items():
        for name, text in files.items():
            file = fake / package / name
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)
    monkeypatch.setattr(__import__(__name__), "ROOT", fake)
    assert [v.split(":")[0] for v in violations("specdec")] == ["specdec/core.py"]
    drafts_problems = violations("drafts")
    assert any("specdec.generator" in p for p in drafts_problems)
    assert any("_private" in p for p in drafts_problems)
    assert len(drafts_problems) == 2
    assert ["must not import specdec.drafts" in p for p in violations("streaming")] == [True]


def module_level_imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module, line) for each import that runs when the module is imported (not inside a function)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    lazy: set[int] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lazy.update(id(inner) for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            found.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
    return found


def cli_violations() -> list[str]:
    """The CLI may load the bench only lazily, inside the ``bench`` command's functions."""
    path = ROOT / "specdec" / "cli.py"
    if not path.exists():
        return []
    return [
        f"specdec/cli.py:{line} imports {target} when the CLI is imported: load it inside a function"
        for target, line in module_level_imports(path)
        if package_of(target) == "specdec.bench"
    ]


def script_violations() -> list[str]:
    """benchmarks/ scripts import the packages (specdec.bench for the shared tools), never tests/ modules."""
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"tests"}
    problems = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""] if not node.level else ["(relative)"]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top in test_modules or top in STALE_TOP_LEVEL or target == "(relative)":
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}: import specdec.bench")
    return problems


def test_the_cli_loads_the_bench_lazily():
    assert cli_violations() == []


def test_benchmark_scripts_do_not_import_the_tests():
    assert script_violations() == []


def test_the_scan_sees_the_bench_rules(tmp_path, monkeypatch):
    """The checker itself for the bench: above everything, below nothing but the CLI's bench command."""
    fake = tmp_path
    for path, text in {
        "specdec/__init__.py": "",
        "specdec/core.py": "from specdec.bench import run_bench\n",
        "specdec/cli.py": "import specdec.bench\n\ndef bench():\n    from specdec.bench import run_bench\n",
        "drafts/__init__.py": "from specdec.bench.models import random_llama\n",
        "streaming/__init__.py": "",
        "streaming/hub.py": "from ..bench import PROMPTS\n",
        "bench/__init__.py": "from .run import run_bench\n",
        "bench/run.py": (
            "from specdec.adaptive import ideal_speedup\nfrom specdec.drafts import NGramDrafter\n"
            "from specdec.streaming import StreamHub\nfrom specdec import _private\n"
        ),
        "tests/mqtt_fixtures.py": "",
        "benchmarks/ok.py": "from specdec.bench import random_llama\n",
        "benchmarks/bad.py": "import sys\nfrom mqtt_fixtures import tiny_tokenizer\n",
    }.items():
        file = fake / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    monkeypatch.setattr(__import__(__name__), "ROOT", fake)
    assert [v.split(":")[0] for v in violations("specdec")] == ["specdec/core.py"]
    assert ["must not import specdec.bench" in p for p in violations("drafts")] == [True]
    assert ["must not import specdec.bench" in p for p in violations("streaming")] == [True]
    assert violations("bench") == []
    assert [v.split(" ")[0] for v in cli_violations()] == ["specdec/cli.py:1"]
    assert [v.split(" ")[0] for v in script_violations()] == ["benchmarks/bad.py:2"]


def test_namespace_survives_other_top_level_streaming_and_drafts(tmp_path):
    """``streaming`` is also mosaicml-streaming's top-level package, ``drafts`` as generic: ours live under specdec."""
    import subprocess
    import sys

    for name in ("streaming", "drafts"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OTHER_PROJECT = {name!r}\n")
    code = (
        "import streaming, drafts\n"
        "assert streaming.OTHER_PROJECT == 'streaming' and drafts.OTHER_PROJECT == 'drafts'\n"
        "import specdec.streaming, specdec.drafts\n"
        "from specdec.streaming import StreamHub\n"
        "from specdec.drafts import NGramDrafter\n"
        "assert specdec.streaming.__name__ == 'specdec.streaming'\n"
        "assert not hasattr(specdec.streaming, 'OTHER_PROJECT')\n"
        "print('ok')\n"
    )
    env_path = [str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {env_path!r}\n" + code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
