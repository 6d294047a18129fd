"""The work-queue contract a worker claims sessions from, and the channel of one session.

It mirrors the work queue that self-hosted agent environments use (Anthropic's managed-agents
environments): a session waiting for a sandbox is a *work item*. A worker

1. ``poll``\\s an item (a long poll; an item polled but never acknowledged comes back after
   ``reclaim_older_than_ms``, and an item whose lease ran out goes back to the queue),
2. ``ack``\\s it (it leaves the queue),
3. holds its *lease* by ``heartbeat``: a compare-and-swap on the last heartbeat — the first one
   expects :data:`NO_HEARTBEAT`, each later one echoes the value the previous one returned — so
   two workers can never both hold an item; a stale expectation raises :class:`LeaseLost`,
4. serves the session's tool calls through the source's :class:`SessionChannel`,
5. ``stop``\\s the item when done (``force=False`` asks the holder to wind down instead).

Item states: ``queued`` → ``starting`` (acknowledged) → ``active`` (heartbeating) →
``stopping`` (a stop was asked for) → ``stopped``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from ..errors import LeaseLost, SessionClosed, WorkNotFound

__all__ = [
    "NO_HEARTBEAT",
    "Lease",
    "LeaseLost",
    "QueueStats",
    "SessionChannel",
    "SessionClosed",
    "ToolCall",
    "WorkItem",
    "WorkNotFound",
    "WorkSource",
    "WorkState",
]

NO_HEARTBEAT = "NO_HEARTBEAT"
"""What the first heartbeat of a lease expects: nobody has heartbeated the item yet."""

WorkState = Literal["queued", "starting", "active", "stopping", "stopped"]


@dataclass(frozen=True)
class WorkItem:
    """One claimed unit of work: a session that needs a sandbox.

    Attributes:
        id: the work item's id.
        session_id: the session to serve.
        kind: ``"session"``; other kinds (health checks) are acknowledged and stopped unserved.
        state: the item's state when polled.
        attempt: how many times the item has been handed out after a lost lease (1 the first
            time). Results are fenced by it: a worker whose lease was taken over cannot post.
        metadata: free-form strings set by whoever queued the session.
        secret: a credential the source issued for this item only (never logged).
    """

    id: str
    session_id: str
    kind: str = "session"
    state: WorkState = "queued"
    attempt: int = 1
    metadata: dict[str, str] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Lease:
    """The answer to a heartbeat.

    Attributes:
        last_heartbeat: the value the next heartbeat must expect.
        lease_extended: False when the item is stopping or stopped: wind down.
        state: the item's state.
        ttl_seconds: how long the lease lasts without another heartbeat.
    """

    last_heartbeat: str
    lease_extended: bool
    state: WorkState
    ttl_seconds: float


@dataclass(frozen=True)
class QueueStats:
    """A queue's load, for autoscaling.

    Attributes:
        depth: items waiting to be polled.
        pending: items polled but not yet acknowledged.
        oldest_queued_at: when the oldest waiting or pending item was queued, if any.
        workers_polling: workers that polled in the last 30 seconds (None when unknown).
    """

    depth: int
    pending: int
    oldest_queued_at: datetime | None
    workers_polling: int | None = None


@dataclass(frozen=True)
class ToolCall:
    """One tool call of a session, as the worker receives it.

    Attributes:
        id: the call's id (the model's ``tool_use`` id where there is one).
        name: the tool to run.
        input: the tool's input.
        interrupted: True when a worker that lost the session had started this call and
            died before answering it; the dispatcher answers it as failed without running it
            again (see the worker documentation on in-flight calls).
        handle: the source's own bookkeeping for the call.
    """

    id: str
    name: str
    input: dict[str, Any]
    interrupted: bool = False
    handle: Any = field(default=None, repr=False, compare=False)


class SessionChannel(Protocol):
    """How one session's tool calls reach the worker, and their results go back.

    Calls come in session order; the dispatcher answers each before asking for the next.
    """

    async def next_call(self) -> ToolCall | None:
        """Wait for the session's next unanswered call; ``None`` once the session has ended.

        Raises :class:`LeaseLost` when the source can tell the session moved elsewhere.
        """
        ...

    async def started(self, call: ToolCall) -> None:
        """Record that this worker starts running ``call`` (so a successor knows it was in
        flight if this worker dies)."""
        ...

    async def post_result(self, call: ToolCall, content: str, *, is_error: bool) -> bool:
        """Answer ``call``; False when it was already answered or the lease moved on (the
        answer was not recorded)."""
        ...

    async def aclose(self) -> None:
        """Release the channel's connections."""
        ...


class WorkSource(Protocol):
    """A work queue: SQLite (one host), Redis Streams (many hosts), or a managed environment.

    Every method raises the :class:`~agent_sandbox.errors.SandboxError` family:
    :class:`WorkNotFound` for an unknown item, :class:`LeaseLost` for a refused heartbeat,
    ``ProviderUnavailable`` when the queue cannot be reached (retryable).
    """

    url: str
    """Where the queue is (secrets left out), for logs and metrics."""

    async def poll(
        self, *, block_ms: int = 999, reclaim_older_than_ms: int | None = None
    ) -> WorkItem | None:
        """Claim the next queued item, waiting up to ``block_ms`` for one; None if none came.

        Also gives back to the queue the items whose lease ran out, and hands out again items
        polled more than ``reclaim_older_than_ms`` ago (default 5000) but never acknowledged.
        """
        ...

    async def ack(self, item_id: str) -> None:
        """Acknowledge a polled item: it leaves the queue and enters ``starting``."""
        ...

    async def heartbeat(
        self,
        item_id: str,
        *,
        expected_last_heartbeat: str,
        desired_ttl_seconds: float | None = None,
    ) -> Lease:
        """Take or extend the item's lease (compare-and-swap on ``expected_last_heartbeat``).

        Raises :class:`LeaseLost` when the expectation is stale. The expectation is not
        compared once the item is stopping or stopped; the answer then says so.
        """
        ...

    async def stop(self, item_id: str, *, force: bool = False) -> None:
        """End an item: ``force`` stops it now; otherwise it enters ``stopping`` and its holder
        winds down. Stopping a stopped item is not an error."""
        ...

    async def stats(self) -> QueueStats:
        """The queue's depth, pending count, oldest item and polling workers."""
        ...

    def channel(self, item: WorkItem, *, owns: Callable[[str], bool]) -> SessionChannel:
        """The channel of ``item``'s session. ``owns(name)`` says whether this worker runs a
        tool of that name (a source shared with other clients leaves the others' calls alone)."""
        ...

    async def aclose(self) -> None:
        """Release the source's connections."""
        ...
