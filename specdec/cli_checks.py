"""Checks on the command line's arguments that run before any model loads (and before torch is imported).

Each check raises :class:`specdec.InvalidArgumentError` with a one-line
message that says what to change; the CLI prints it and exits 2. Nothing here
imports torch or transformers, so a mistake costs a fraction of a second.

The sampling rule (stated in ``specdec generate --help``): greedy decoding by
default; any of ``--temperature``, ``--top-p``, ``--top-k`` or ``--seed``
turns sampling on (temperature 1.0 unless given).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidArgumentError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

__all__ = [
    "BrokerAddress",
    "COMPOSITE_PREFIX",
    "DEFAULT_MODEL_NAME",
    "DRAFTER_NAMES",
    "check_broker_url",
    "check_draft_length",
    "check_model_reference",
    "check_prompt",
    "check_sampling",
    "draft_length",
    "hub_reachable",
    "looks_like_path",
    "number",
    "parse_broker_url",
]

#: ``--draft`` values that name a drafter rather than a model.
DRAFTER_NAMES = ("ngram", "self", "composite")
#: ``--draft composite:HEAD``: prompt lookup or HEAD (an EAGLE head folder or a draft model), picked per step.
COMPOSITE_PREFIX = "composite:"
#: Aliases of the embedded default model (kept in step with ``specdec.models``).
DEFAULT_ALIASES = ("default", "smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
MAX_DRAFT_TOKENS = 64

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")


def check_prompt(prompt: str) -> str:
    if not prompt.strip():
        raise InvalidArgumentError("the prompt is empty: pass some text (or '-' to read it from standard input)")
    return prompt


def check_sampling(args: argparse.Namespace) -> bool:
    """Validate the sampling options; return whether they ask for sampling."""
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise InvalidArgumentError(
            f"--temperature must be a finite number > 0, got {args.temperature:g} "
            "(for greedy decoding leave out every sampling option)"
        )
    if args.top_p is not None and not (0 < args.top_p <= 1):
        raise InvalidArgumentError(f"--top-p must be in (0, 1], got {args.top_p:g}")
    if args.top_k is not None and args.top_k < 1:
        raise InvalidArgumentError(f"--top-k must be >= 1, got {args.top_k}")
    if args.seed is not None and not (0 <= args.seed < 2**63):
        raise InvalidArgumentError(f"--seed must be in [0, 2**63), got {args.seed}")
    return any(value is not None for value in (args.temperature, args.top_p, args.top_k, args.seed))


def check_draft_length(value: int | str | None) -> None:
    if isinstance(value, int) and not 1 <= value <= MAX_DRAFT_TOKENS:
        raise InvalidArgumentError(f"--num-draft-tokens must be 'auto' or in [1, {MAX_DRAFT_TOKENS}], got {value}")


def looks_like_path(reference: str) -> bool:
    """Meant as a local path: starts with '/', '.' or '~', ends in .gguf, has a backslash or more than one '/'."""
    return (
        reference.startswith(("/", ".", "~"))
        or reference.endswith(".gguf")
        or "\\" in reference
        or reference.count("/") > 1
    )


def composite_head(reference: str | None) -> str | None:
    """The head of ``--draft composite:HEAD`` (``None`` for any other value)."""
    if reference is None or not reference.startswith(COMPOSITE_PREFIX):
        return None
    head = reference[len(COMPOSITE_PREFIX) :]
    if head in ("", *DRAFTER_NAMES):
        raise InvalidArgumentError(
            f"--draft {reference}: after 'composite:' name an EAGLE head folder or a draft model "
            "(or pass --draft composite for prompt lookup alone)"
        )
    return head


def check_model_reference(reference: str | None, option: str) -> None:
    """``--target`` / ``--draft``: a local path must exist and look like a model; a hub id must look like one."""
    if reference in (None, "", *DEFAULT_ALIASES) or (option == "--draft" and reference in DRAFTER_NAMES):
        return
    head = composite_head(reference) if option == "--draft" else None
    if head is not None:
        check_model_reference(head, option)
        return
    assert reference is not None
    path = Path(reference).expanduser()
    if path.exists():
        if path.is_file() and path.suffix != ".gguf":
            raise InvalidArgumentError(
                f"{option} {reference}: a file, but not a .gguf; pass a model folder or a .gguf file"
            )
        if path.is_dir() and not (path / "config.json").is_file():
            raise InvalidArgumentError(
                f"{option} {reference}: the folder has no config.json, so it is not an HF model folder"
            )
        return
    if looks_like_path(reference) or not _HUB_ID.match(reference):
        raise InvalidArgumentError(f"{option} {reference}: no such file or folder")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the model hub (``$HF_ENDPOINT``, default huggingface.co) answers a TCP connect within ``timeout_s``."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:port]`` (default 1883) or ``mqtts://host[:port]`` (default 8883)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"--broker {url!r}: {exc}; use mqtt://host:port") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise InvalidArgumentError(f"--broker {url!r}: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise InvalidArgumentError(f"--broker {url!r}: no host; use mqtt://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidArgumentError(f"--broker {url!r}: only mqtt://host:port is understood (no path or query)")
    if port == 0:
        raise InvalidArgumentError(f"--broker {url!r}: the port must be in 1..65535")
    return BrokerAddress(parts.scheme, parts.hostname, port or (8883 if parts.scheme == "mqtts" else 1883))


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def check_broker_url(url: str, *, start_broker: bool) -> BrokerAddress:
    address = parse_broker_url(url)
    if start_broker:
        if not address.loopback:
            raise InvalidArgumentError(
                f"--start-broker runs a local mosquitto; --broker must be loopback, not {address.host}"
            )
        if address.scheme != "mqtt":
            raise InvalidArgumentError("--start-broker runs a plain mqtt:// broker; use mqtt://127.0.0.1:PORT")
        if _port_in_use(address.host, address.port):
            raise InvalidArgumentError(
                f"port {address.port} on {address.host} is already taken (another broker, or one left running?); "
                "stop it, pick another port, or drop --start-broker to use it"
            )
    return address


# --------------------------------------------------------------------------- argparse types


def number(kind: type, low: float, high: float | None = None, *, low_open: bool = False):
    """An argparse type: a finite ``kind`` in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if (value <= low if low_open else value < low) or (high is not None and value > high):
            bound = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
            raise argparse.ArgumentTypeError(f"must be in {bound}, got {text}")
        return value

    return parse


def draft_length(text: str) -> int | str:
    """An argparse type: ``auto`` or a draft length in [1, MAX_DRAFT_TOKENS]."""
    return text if text == "auto" else number(int, 1, MAX_DRAFT_TOKENS)(text)
