"""A shared wake-up: many coroutines waiting for "something may have changed", one poller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


class ChangeWatch:
    """Wakes every waiter when ``probe`` reports a change; probes only while someone waits.

    ``probe()`` returns a value that changes whenever the watched store changed (SQLite's
    ``PRAGMA data_version``); it is called every ``interval`` seconds by one task at most.
    """

    def __init__(self, probe: Callable[[], Awaitable[object]], interval: float = 0.002) -> None:
        self._probe = probe
        self._interval = interval
        self._event = anyio.Event()
        self._waiters = 0
        self._polling = False
        self._last: object = None

    def notify(self) -> None:
        """Wake every current waiter."""
        self._event.set()
        self._event = anyio.Event()

    async def wait(self, timeout: float | None = None) -> None:
        """Return after the next change (or ``timeout`` seconds, whichever first)."""
        event = self._event
        self._waiters += 1
        try:
            with anyio.move_on_after(timeout):
                if self._polling:
                    await event.wait()
                else:
                    await self._poll(event)
        finally:
            self._waiters -= 1

    async def _poll(self, event: anyio.Event) -> None:
        # This waiter polls for everyone until it is woken; then the next one takes over.
        self._polling = True
        try:
            if self._last is None:
                self._last = await self._probe()
            while not event.is_set():
                await anyio.sleep(self._interval)
                current = await self._probe()
                if current != self._last:
                    self._last = current
                    self.notify()
        finally:
            self._polling = False
            if self._waiters > 1 and not event.is_set():
                # Cancelled while others still wait: hand the polling over to them.
                self.notify()
