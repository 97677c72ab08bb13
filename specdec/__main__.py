"""``python -m specdec`` and the ``specdec`` console script.

Ctrl-C outside a generation or a server (while Python imports the CLI, while a
model loads, while the process winds down) leaves at once with exit 130 and no
traceback: there is nothing to save in those phases, and a ``KeyboardInterrupt``
raised inside torch, transformers or the interpreter's own shutdown cannot be
caught reliably (it ended the process with SIGINT instead of 130). The phases
that have something to save (a generation prints its text and stats, a server
stops its worker) install their own handler and restore this one after.
"""

import contextlib
import os
import signal
import sys
from types import FrameType


def _leave_now(signum: int, frame: FrameType | None) -> None:
    _flush()
    os._exit(130)


def run() -> int:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored (a background job)
        signal.signal(signal.SIGINT, _leave_now)
    try:
        from specdec.cli import main

        return main()
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Run the CLI, then leave without the interpreter's teardown.

    Tearing down torch's and transformers' modules took 1.7 s after the last
    line of output (measured with a tiny model), during which Ctrl-C killed the
    process by signal instead of exiting 130. Output is flushed and ``atexit``
    handlers run first, so nothing registered for exit is skipped.
    """
    code = run()
    _finish(code)


def _finish(code: int) -> None:
    import atexit
    import logging

    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        _flush()
        os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing more to say
            stream.flush()


if __name__ == "__main__":
    entry()
