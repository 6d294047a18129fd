"""The lease keeper: heartbeats one work item while a worker serves it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import anyio

from ..errors import SandboxError
from .source import NO_HEARTBEAT, Lease, LeaseLost, WorkItem, WorkSource

log = logging.getLogger("agent_sandbox.worker")

MAX_INTERVAL = 30.0
"""Heartbeats are at most this many seconds apart (and at most half the lease's TTL)."""

LeaseEnd = Literal["lost", "stopping"]


def heartbeat_interval(ttl_seconds: float) -> float:
    """Seconds between heartbeats for a lease of ``ttl_seconds``: min(ttl/2, 30 s)."""
    return max(min(ttl_seconds / 2, MAX_INTERVAL), 0.05)


class LeaseKeeper:
    """Holds the lease of one item: :meth:`claim` takes it, :meth:`keep` heartbeats until the
    lease is lost or the item is asked to stop, then calls ``on_end`` with the reason.

    A heartbeat that fails for a reason other than a refusal is retried; when no heartbeat has
    succeeded for a whole TTL the lease is taken as lost, so two workers never serve one
    session.
    """

    def __init__(
        self,
        source: WorkSource,
        item: WorkItem,
        *,
        desired_ttl_seconds: float | None = None,
        on_end: Callable[[LeaseEnd], None],
    ) -> None:
        self.source = source
        self.item = item
        self.desired_ttl_seconds = desired_ttl_seconds
        self.on_end = on_end
        self.last = NO_HEARTBEAT
        self.ttl = 60.0
        self.lost = False
        self.beats = 0

    async def _beat(self) -> Lease:
        lease = await self.source.heartbeat(
            self.item.id,
            expected_last_heartbeat=self.last,
            desired_ttl_seconds=self.desired_ttl_seconds,
        )
        self.beats += 1
        self.last = lease.last_heartbeat
        if lease.ttl_seconds > 0:
            self.ttl = lease.ttl_seconds
        return lease

    async def claim(self) -> Lease:
        """Take the lease with the first heartbeat. Raises :class:`LeaseLost`."""
        try:
            lease = await self._beat()
        except LeaseLost:
            self.lost = True
            raise
        return lease

    async def keep(self) -> None:
        """Heartbeat every min(ttl/2, 30 s) until the lease ends; returns after ``on_end``."""
        last_success = anyio.current_time()
        while True:
            await anyio.sleep(heartbeat_interval(self.ttl))
            try:
                with anyio.fail_after(heartbeat_interval(self.ttl)):
                    lease = await self._beat()
            except LeaseLost as exc:
                log.warning("work item %s: lease lost (%s)", self.item.id, exc)
                self.lost = True
                self.on_end("lost")
                return
            except (SandboxError, TimeoutError, OSError) as exc:
                if anyio.current_time() - last_success > self.ttl:
                    log.error(
                        "work item %s: no heartbeat succeeded for %.0f s, lease assumed lost (%s)",
                        self.item.id,
                        self.ttl,
                        exc,
                    )
                    self.lost = True
                    self.on_end("lost")
                    return
                log.warning("work item %s: heartbeat failed, retrying (%s)", self.item.id, exc)
                continue
            last_success = anyio.current_time()
            if lease.state in ("stopping", "stopped") or not lease.lease_extended:
                log.info("work item %s: asked to stop (state %s)", self.item.id, lease.state)
                self.on_end("stopping")
                return
