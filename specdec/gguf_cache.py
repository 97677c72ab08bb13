"""Convert a GGUF file once into an HF folder (safetensors, config, ``tokenizer.json``) and load from it afterwards.

Parsing and dequantizing a GGUF takes tens of seconds on a small CPU and
rebuilding its tokenizer several more; a safetensors folder loads in about a
second. The folder lives under ``cache_dir()/converted/<sha256[:16]>-<dtype>``:
keyed by the file's content and the asked dtype, so an edited or replaced file
gets a new entry. The sha256 of a file is itself remembered by (path, size,
mtime) so a warm start does not reread the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["converted_folder", "file_sha256", "gguf_cache_root", "tokenizer_folder"]

_MARKER = "specdec-converted.json"


def gguf_cache_root() -> Path:
    from .models import cache_dir

    return cache_dir() / "converted"


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered in the cache by (absolute path, size, mtime)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = gguf_cache_root() / "hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    index[key] = digest.hexdigest()
    index_path.parent.mkdir(parents=True, exist_ok=True)
    partial = index_path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(index, indent=0))
    partial.replace(index_path)
    return index[key]


def converted_folder(gguf_path: Path, dtype_name: str, *, quiet: bool = False) -> Path:
    """The HF folder converted from ``gguf_path`` in ``dtype_name``; converts it on first use."""
    from .models import _file_lock  # one lock helper for the whole cache

    sha = file_sha256(gguf_path)
    folder = gguf_cache_root() / f"{sha[:16]}-{dtype_name}"
    if (folder / _MARKER).is_file():
        return folder
    with _file_lock(gguf_cache_root() / ".convert.lock"):
        if (folder / _MARKER).is_file():
            return folder
        _convert(gguf_path, folder, dtype_name, sha, quiet=quiet)
    return folder


def tokenizer_folder(gguf_path: Path, *, quiet: bool = False) -> Path:
    """A converted folder of ``gguf_path`` in any dtype (all hold the same tokenizer); float32 if none yet."""
    sha = file_sha256(gguf_path)
    for folder in sorted(gguf_cache_root().glob(f"{sha[:16]}-*")):
        if (folder / _MARKER).is_file():
            return folder
    return converted_folder(gguf_path, "float32", quiet=quiet)


def _convert(gguf_path: Path, folder: Path, dtype_name: str, sha: str, *, quiet: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.monotonic()
    if not quiet:
        print(
            f"specdec: converting {gguf_path.name} to safetensors in {dtype_name} (once; later runs load "
            f"{folder}) ...",
            file=sys.stderr,
            flush=True,
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".partial-") as tmp:
        kwargs: dict[str, Any] = {"gguf_file": gguf_path.name, "dtype": getattr(torch, dtype_name)}
        # Dense weights in the asked dtype, whatever optional GGUF kernels are installed.
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
        _progress("reading and dequantizing the weights", quiet)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), **kwargs)
        _progress("building the tokenizer", quiet)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        _progress("writing safetensors", quiet)
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config  # the weights are dense now
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"source": str(gguf_path.resolve()), "sha256": sha, "dtype": dtype_name}
        (Path(tmp) / _MARKER).write_text(json.dumps(marker, indent=1))
        if folder.exists():  # a half-written entry from an interrupted run
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory cleans up a path that must exist
    _progress(f"done in {time.monotonic() - started:.0f} s", quiet)


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"specdec:   {message}", file=sys.stderr, flush=True)
