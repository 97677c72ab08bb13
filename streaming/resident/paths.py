"""Where a kept-loaded worker listens: one Unix socket per set of model arguments."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["run_dir", "socket_path", "log_path", "worker_key"]


def run_dir() -> Path:
    """The folder of the workers' sockets and logs (mode 0700).

    ``$SPECDEC_RUN_DIR`` if set, else ``$XDG_RUNTIME_DIR/specdec``, else
    ``~/.cache/specdec/run``.
    """
    if os.environ.get("SPECDEC_RUN_DIR"):
        folder = Path(os.environ["SPECDEC_RUN_DIR"])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "specdec"
    else:
        folder = Path.home() / ".cache" / "specdec" / "run"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _reference(value: str | None) -> str | None:
    """A model reference in a stable form: an existing path resolved, anything else as given."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def worker_key(
    *, target: str | None, draft: str | None, dtype: str | None, device: str | None, compiled: bool = False
) -> str:
    """A short name for these model arguments: the same arguments find the same worker."""
    identity: dict[str, object] = {
        "target": _reference(target) or "default",
        "draft": _reference(draft) or "ngram",
        "dtype": dtype or "auto",
        "device": device or "auto",
    }
    if compiled:
        identity["compiled"] = True
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def socket_path(key: str) -> Path:
    return run_dir() / f"{key}.sock"


def log_path(key: str) -> Path:
    return run_dir() / f"{key}.log"
