"""A status line on stderr while a person waits: a bar with sizes and rate when the total is known,
the elapsed time otherwise. Silent unless stderr is a terminal and the output is not ``--json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

import anyio

from .output import size

_REDRAW_S = 0.1
_BAR = 24


class Progress:
    """What is done of one step; :func:`progress` draws it."""

    def __init__(self, label: str, total: int | None, stream: TextIO | None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self._started = time.monotonic()

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes as done."""
        self.done += n

    @property
    def elapsed(self) -> float:
        """Seconds since the step started."""
        return time.monotonic() - self._started

    def line(self) -> str:
        """The status line as it stands."""
        elapsed = self.elapsed
        parts = [self.label]
        if self.total and self.done:
            filled = min(_BAR, _BAR * self.done // self.total)
            parts.append(f"[{'#' * filled}{'.' * (_BAR - filled)}]")
            parts.append(f"{100 * self.done // self.total:3d}%")
            parts.append(f"{size(self.done)} / {size(self.total)}")
            parts.append(f"{size(self.done / max(elapsed, 1e-6))}/s")
        elif self.total:
            parts.append(size(self.total))
        parts.append(f"{elapsed:.1f} s")
        return "  ".join(parts)

    def draw(self) -> None:
        """Redraw the line in place (nothing when silent)."""
        if self._stream is not None:
            self._stream.write("\r" + self.line() + "\x1b[K")
            self._stream.flush()

    def clear(self) -> None:
        """Remove the line (nothing when silent)."""
        if self._stream is not None:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def report(self, message: str) -> None:
        """Leave ``message`` on its own line where the status line was (nothing when silent)."""
        if self._stream is not None:
            self._stream.write(f"\r{message}\x1b[K\n")
            self._stream.flush()


def wanted(as_json: bool) -> bool:
    """Progress is for people: on when stderr is a terminal and the output is not JSON."""
    return not as_json and sys.stderr.isatty()


@asynccontextmanager
async def progress(
    label: str, *, enabled: bool, total: int | None = None
) -> AsyncIterator[Progress]:
    """Draw a :class:`Progress` every 0.1 s while the block runs, then clear it."""
    state = Progress(label, total, sys.stderr if enabled else None)
    if not enabled:
        yield state
        return

    async def redraw() -> None:
        while True:
            state.draw()
            await anyio.sleep(_REDRAW_S)

    async with anyio.create_task_group() as tg:
        tg.start_soon(redraw)
        try:
            yield state
        finally:
            tg.cancel_scope.cancel()
            state.clear()
