"""A warm pool: sandboxes created ahead of time, so a claimed session starts at once."""

from __future__ import annotations

import logging
from collections import deque

import anyio

from ..backend import BaseBackend
from ..errors import SandboxError
from ..models import SandboxSpec
from ..sandbox import Sandbox

log = logging.getLogger("agent_sandbox.worker")


class WarmPool:
    """Keeps up to ``size`` idle sandboxes of ``spec`` ready on ``backend``.

    :meth:`take` hands one out (or ``None`` when the pool is empty: create one then) and wakes
    the filler. :meth:`fill` runs until cancelled; :meth:`aclose` destroys the idle ones.
    A pooled sandbox's TTL runs from its creation, so size the spec's TTL for idle time plus
    the longest session.
    """

    def __init__(self, backend: BaseBackend, spec: SandboxSpec, size: int, *, owner: str) -> None:
        if size < 0:
            raise ValueError("warm pool size must be >= 0")
        self.backend = backend
        self.spec = spec
        self.size = size
        self.owner = owner
        self._idle: deque[Sandbox] = deque()
        self._wanted = anyio.Event()
        self._creating = 0

    @property
    def idle(self) -> int:
        """Sandboxes ready right now."""
        return len(self._idle)

    def take(self) -> Sandbox | None:
        """A ready sandbox, or None."""
        sandbox = self._idle.popleft() if self._idle else None
        self._wanted.set()
        return sandbox

    async def fill(self) -> None:
        """Create sandboxes until ``size`` are idle; wait when full; retry failures slowly."""
        failures = 0
        while True:
            while len(self._idle) + self._creating < self.size:
                self._creating += 1
                try:
                    sandbox = await Sandbox.create(
                        self.spec, backend=self.backend, owner=self.owner
                    )
                except SandboxError as exc:
                    failures += 1
                    log.warning("warm pool: create failed (%s); retrying", exc)
                    await anyio.sleep(min(2.0**failures, 60.0))
                    continue
                finally:
                    self._creating -= 1
                failures = 0
                self._idle.append(sandbox)
            self._wanted = anyio.Event()
            await self._wanted.wait()

    async def aclose(self) -> None:
        """Destroy the idle sandboxes."""
        with anyio.CancelScope(shield=True):
            while self._idle:
                sandbox = self._idle.popleft()
                try:
                    await sandbox.destroy()
                except SandboxError as exc:
                    log.warning("warm pool: destroy of %s failed: %s", sandbox.id, exc)
