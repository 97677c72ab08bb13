"""Print a stream to a terminal: committed text as it lands, draft text dimmed and taken back.

The CLI (``specdec generate [--show-drafts]``) calls::

    await render_stream(stream, file=sys.stdout, show_drafts=args.show_drafts)

On a TTY with ``show_drafts``, each ``provisional`` event is drawn dimmed after
the committed text (newlines shown as ``⏎``, cut to the room left on the
current line so it never wraps or scrolls), and erased in place (restore the
saved cursor, clear to end of line) when the next commit or draft arrives.
Anywhere else (a pipe, a file, ``color=False``) only committed text is written,
with no escape codes, so the output is exactly the completion.
"""

from __future__ import annotations

import shutil
import sys
import unicodedata
from typing import IO, Any

from .events import CommitEvent, EndEvent, ErrorEvent, Event, ProvisionalEvent

__all__ = ["TerminalRenderer", "render_stream"]

SAVE_CURSOR = "\x1b7"
RESTORE_CURSOR = "\x1b8"
CLEAR_TO_EOL = "\x1b[K"
DIM = "\x1b[2m"
RESET = "\x1b[0m"


def _cell_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _printable(text: str) -> str:
    """Draft text made safe to draw on one line: no newlines or control characters."""
    return "".join("⏎" if c == "\n" else c for c in text if c == "\n" or unicodedata.category(c)[0] != "C")


class TerminalRenderer:
    """Feed it events (:meth:`feed`); it writes them to ``file``.

    ``color=None`` means "escape codes only if ``file`` is a TTY". Provisional
    text is drawn only when ``show_drafts`` and escape codes are on.
    """

    def __init__(self, file: IO[str] | None = None, *, show_drafts: bool = False, color: bool | None = None) -> None:
        self.file = file if file is not None else sys.stdout
        if color is None:
            isatty = getattr(self.file, "isatty", None)
            color = bool(isatty()) if callable(isatty) else False
        self.color = color
        self.show_drafts = show_drafts and color
        self._column = 0  # approximate cell column of the cursor after committed text
        self._draft_shown = False

    def _width(self) -> int:
        return shutil.get_terminal_size(fallback=(80, 24)).columns

    def _retract(self) -> None:
        if self._draft_shown:
            self.file.write(RESTORE_CURSOR + CLEAR_TO_EOL)
            self._draft_shown = False

    def _advance(self, text: str, width: int) -> None:
        for char in text:
            if char == "\n" or char == "\r":
                self._column = 0
                continue
            self._column += _cell_width(char)
            if self._column >= width:
                self._column %= width

    def feed(self, event: Event) -> None:
        if isinstance(event, CommitEvent):
            self._retract()
            if event.text:
                self.file.write(event.text)
                if self.color:
                    self._advance(event.text, self._width())
            self.file.flush()
        elif isinstance(event, ProvisionalEvent):
            if not self.show_drafts:
                return
            self._retract()
            room = self._width() - self._column - 1
            shown: list[str] = []
            for char in _printable(event.text):
                room -= _cell_width(char)
                if room < 0:
                    break
                shown.append(char)
            if shown:
                self.file.write(SAVE_CURSOR + DIM + "".join(shown) + RESET)
                self._draft_shown = True
            self.file.flush()
        elif isinstance(event, (EndEvent, ErrorEvent)):
            self.close()

    def close(self) -> None:
        """Take back any draft still shown."""
        self._retract()
        self.file.flush()


async def render_stream(
    stream: Any, file: IO[str] | None = None, *, show_drafts: bool = False, color: bool | None = None
) -> EndEvent | None:
    """Print ``stream``'s committed text to ``file`` (default stdout) as it lands; return its ``end`` event.

    With ``show_drafts`` (and a TTY, or ``color=True``) draft tokens appear
    dimmed and are retracted in place. Writes no trailing newline. A failed
    generation ends with ``end(finish_reason="error")``; ``await
    stream.result()`` raises its exception. Start the stream with
    ``provisional=True`` for drafts to exist.
    """
    renderer = TerminalRenderer(file, show_drafts=show_drafts, color=color)
    end: EndEvent | None = None
    try:
        async for event in stream.subscribe():
            renderer.feed(event)
            if isinstance(event, EndEvent):
                end = event
    finally:
        renderer.close()
    return end
