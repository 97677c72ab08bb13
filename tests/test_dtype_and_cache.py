"""``--dtype auto`` with the CPU's capability faked, and the GGUF conversion cache's keys (converter counted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdec import gguf_cache
from specdec.hardware import auto_dtype, choose_dtype, cpu_flags

AVX512_NO_BF16 = frozenset("sse4_2 avx avx2 fma avx512f avx512bw avx512vl".split())


@pytest.mark.parametrize(
    "capability, flags, native, expected",
    [
        ("AVX2", frozenset({"avx2", "fma"}), False, "float32"),  # the CI-like machine of the issue
        ("AVX512", AVX512_NO_BF16, False, "float32"),  # this project's machine
        ("AVX512", AVX512_NO_BF16 | {"avx512_bf16"}, False, "bfloat16"),
        ("AVX512", AVX512_NO_BF16 | {"amx_bf16", "amx_tile"}, False, "bfloat16"),
        ("AVX512", AVX512_NO_BF16, True, "bfloat16"),  # torch's own check says native
        ("DEFAULT", frozenset(), False, "float32"),
    ],
)
def test_cpu_choice(capability, flags, native, expected):
    choice = choose_dtype("cpu", cpu_capability=capability, flags=flags, torch_native_bf16=native)
    assert choice.dtype == expected
    assert capability in choice.reason  # --verbose says which and why


def test_gpu_choice():
    assert choose_dtype("cuda", cuda_bf16=True).dtype == "bfloat16"
    assert choose_dtype("cuda", cuda_bf16=False).dtype == "float32"
    assert choose_dtype("mps").dtype == "float32"


def test_cpu_flags_parse(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_this_machine_agrees_with_its_flags():
    choice = auto_dtype("cpu")
    if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        assert choice.dtype == "bfloat16"
    else:
        assert choice.dtype == "float32" or "torch reports" in choice.reason


@pytest.fixture
def counted_converter(tmp_path, monkeypatch):
    """The cache under tmp_path, with the (slow) converter replaced by one that records its calls."""
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "cache"))
    calls: list[tuple[str, str]] = []

    def fake_convert(gguf_path: Path, folder: Path, dtype_name: str, sha: str, *, quiet: bool) -> None:
        calls.append((gguf_path.name, dtype_name))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / gguf_cache._MARKER).write_text("{}")

    monkeypatch.setattr(gguf_cache, "_convert", fake_convert)
    return calls


def test_conversion_runs_once_per_content_and_dtype(tmp_path, counted_converter):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF one")
    first = gguf_cache.converted_folder(gguf, "float32")
    assert gguf_cache.converted_folder(gguf, "float32") == first
    assert counted_converter == [("m.gguf", "float32")]
    assert first.parent == tmp_path / "cache" / "converted" and first.name.endswith("-float32")

    other_dtype = gguf_cache.converted_folder(gguf, "bfloat16")
    assert other_dtype != first and other_dtype.name[:16] == first.name[:16]
    assert gguf_cache.tokenizer_folder(gguf) in (first, other_dtype)  # any dtype's folder has the tokenizer
    assert len(counted_converter) == 2

    gguf.write_bytes(b"GGUF two, edited")  # new content: a new key
    edited = gguf_cache.converted_folder(gguf, "float32")
    assert edited.name[:16] != first.name[:16]
    assert len(counted_converter) == 3


def test_hash_is_remembered_and_interrupted_entries_redone(tmp_path, counted_converter, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF content")
    digest = gguf_cache.file_sha256(gguf)

    def no_reread(*args, **kwargs):
        raise AssertionError("the file was hashed again")

    monkeypatch.setattr(gguf_cache.hashlib, "sha256", no_reread)
    assert gguf_cache.file_sha256(gguf) == digest

    folder = gguf_cache.gguf_cache_root() / f"{digest[:16]}-float32"
    folder.mkdir(parents=True)  # a half-written entry: no marker
    assert gguf_cache.converted_folder(gguf, "float32") == folder
    assert counted_converter == [("m.gguf", "float32")]
