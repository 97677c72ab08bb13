"""A model kept loaded in a background process, for ``specdec generate`` to use.

A cold ``specdec generate`` spends most of its time before the first token
importing torch and transformers' modeling stack (about 11 s on a 2-core
Xeon) and loading the weights: no import trimming gets that under a few
seconds. ``specdec up`` pays it once: it starts a worker process that loads
the model and serves generation requests on a Unix socket; later ``specdec
generate`` calls with the same model arguments find the socket, send the
request, and print the events as they arrive, from a client that imports
neither torch nor transformers. The worker stops after an idle timeout or on
``specdec down``.

The wire format is JSON lines, one request per connection. The client sends
one object: ``{"v": 1, "op": "ping" | "stop" | "generate", ...}``; for
``generate`` it carries ``argv``, the ``specdec generate`` arguments, which the
worker parses and validates with the CLI's own parser. The worker answers
``ping`` and ``stop`` with one object, and ``generate`` with one
``{"event": ...}`` line per stream event (schema v1, PROTOCOL.md), then
``{"result": {"finish_reason", "stats", "completion_ids"}}``; a refused or
failed request gets ``{"error": {"code", "message"}}``. A client that shuts
down its writing half cancels the generation (it still receives the events
up to the cancellation and the result); one that disconnects cancels it too.

This package imports neither torch nor the hub at import time: the server
side (:mod:`.server`) loads them when a worker starts.
"""

from .client import ResidentClient, ResidentError, find_worker, worker_sockets
from .paths import run_dir, socket_path, worker_key

__all__ = ["ResidentClient", "ResidentError", "find_worker", "run_dir", "socket_path", "worker_key", "worker_sockets"]
