"""The dispatcher: claims sessions from a :class:`WorkSource` and serves each in its own sandbox.

Per claimed item: acknowledge it, take its lease (first heartbeat), destroy any sandbox an
earlier holder of the session left behind, get a sandbox (from the warm pool or a new one), then
answer the session's tool calls one by one through a :class:`~agent_sandbox.ToolKit` (policy
and audit on every call) while the lease keeper heartbeats. When the session ends, is stopped or
the lease is lost, the sandbox is destroyed; the item is stopped unless the lease was lost (it
belongs to someone else then).

Calls in flight when the worker stops:

* graceful stop (:meth:`Worker.drain`, SIGTERM): no new call starts; a running call has the
  grace period to finish and is then cancelled and answered with an error result;
* lease lost: the call is cancelled at once and not answered (the new holder answers);
* the worker died (kill -9): the next holder answers the call that was in flight as failed,
  without running it again (at most once), and runs the calls after it in a fresh sandbox.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc

from ..audit import AuditLog
from ..backend import BaseBackend
from ..config import resolve
from ..errors import SandboxError
from ..labels import default_owner
from ..models import SandboxSpec
from ..policy import Policy
from ..sandbox import Sandbox
from ..tools import ToolKit, ToolResult
from .lease import LeaseEnd, LeaseKeeper
from .metrics import WorkerMetrics
from .pool import WarmPool
from .source import LeaseLost, SessionChannel, ToolCall, WorkItem, WorkSource

log = logging.getLogger("agent_sandbox.worker")

SESSION_LABEL = "agent-sandbox.worker.session"
ITEM_LABEL = "agent-sandbox.worker.item"
WORKER_LABEL = "agent-sandbox.worker.id"
CLEANUP_TIMEOUT = 60.0
"""Seconds allowed for posting, destroying and stopping once a session ends."""

MOVED_NOTE = (
    "[note: this session moved to another worker and a fresh sandbox; files and shell state "
    "from earlier calls are gone]\n"
)
INTERRUPTED = (
    "interrupted: the worker running this call stopped before answering it, so it may have "
    "partly run. It was not run again. The session continues in a fresh sandbox: files and "
    "shell state from earlier calls are gone."
)


class _SessionRun:
    """The state of one session being served, as drain and lease loss need to reach it."""

    def __init__(self, item: WorkItem) -> None:
        self.item = item
        self.scope = anyio.CancelScope()
        self.wait_scope: anyio.CancelScope | None = None
        self.call_scope: anyio.CancelScope | None = None
        self.winding_down = False
        self.deadline = math.inf
        self.end_reason = "closed"

    def wind_down(self, deadline: float, reason: str) -> None:
        """Start no new call; let the running one go on until ``deadline``."""
        if not self.winding_down:
            self.winding_down = True
            self.end_reason = reason
        self.deadline = min(self.deadline, deadline)
        if self.wait_scope is not None:
            self.wait_scope.cancel()
        if self.call_scope is not None:
            self.call_scope.deadline = self.deadline


class Worker:
    """Serves sessions from ``source``: one sandbox per session, at most ``concurrency`` at once.

    Args:
        source: where sessions come from (:class:`SQLiteQueue`, ``RedisQueue``,
            ``AnthropicEnvironment``).
        provider, options: the sandbox provider and its options (default from config).
        backend: a backend instance to use instead (not closed by the worker).
        spec: the sandbox of every session (image, resources, network policy, TTL).
        concurrency: sessions served at once.
        warm_pool: sandboxes kept created ahead of time (0: none).
        grace_period: seconds running calls get to finish on a graceful stop.
        lease_ttl: the lease TTL to ask for (default: the source's); heartbeats come every
            min(ttl/2, 30 s).
        policy, audit: applied to every tool call (through the :class:`ToolKit`); the audit
            log also records each session's start and end.
        workdir, output_budget: passed to each session's :class:`ToolKit`.
        metrics: counters and gauges to update (see :func:`serve_metrics`).
        poll_block_ms, reclaim_older_than_ms: passed to :meth:`WorkSource.poll`.
        worker_id: this worker's name in labels and logs (default: random).
        owner: the owner label of the sandboxes.
    """

    def __init__(
        self,
        source: WorkSource,
        *,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        backend: BaseBackend | None = None,
        spec: SandboxSpec | None = None,
        concurrency: int = 8,
        warm_pool: int = 0,
        grace_period: float = 30.0,
        lease_ttl: float | None = None,
        policy: Policy | None = None,
        audit: AuditLog | None = None,
        workdir: str | None = None,
        output_budget: int | None = None,
        metrics: WorkerMetrics | None = None,
        poll_block_ms: int = 999,
        reclaim_older_than_ms: int | None = None,
        worker_id: str | None = None,
        owner: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if grace_period < 0:
            raise ValueError("grace_period must be >= 0")
        self.source = source
        self.spec = spec or SandboxSpec()
        self.concurrency = concurrency
        self.warm_pool_size = warm_pool
        self.grace_period = grace_period
        self.lease_ttl = lease_ttl
        self.policy = policy
        self.audit = audit
        self.workdir = workdir
        self.output_budget = output_budget
        self.metrics = metrics
        self.poll_block_ms = poll_block_ms
        self.reclaim_older_than_ms = reclaim_older_than_ms
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self._provider = provider
        self._options = options
        self._backend = backend
        self._owner = owner
        self._runs: dict[str, _SessionRun] = {}
        self._draining = False
        self._drain_deadline = math.inf
        self._poll_scope: anyio.CancelScope | None = None
        self._started = anyio.Event()
        self._runs_changed = anyio.Event()

    # -- control ----------------------------------------------------------------------------

    @property
    def sessions(self) -> int:
        """Sessions being served right now."""
        return len(self._runs)

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` (or :meth:`force_stop`) was called."""
        return self._draining

    async def wait_started(self) -> None:
        """Return once the worker polls (its backend is ready)."""
        await self._started.wait()

    def drain(self, grace_period: float | None = None) -> None:
        """Stop gracefully: poll no more, let running calls finish within the grace period,
        cancel the rest with error results, stop the items, destroy the sandboxes."""
        grace = self.grace_period if grace_period is None else grace_period
        deadline = anyio.current_time() + grace
        self._draining = True
        self._drain_deadline = min(self._drain_deadline, deadline)
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        for run in list(self._runs.values()):
            run.wind_down(self._drain_deadline, "drained")

    def force_stop(self) -> None:
        """Stop now: running calls are cancelled at once (and answered with errors)."""
        self.drain(grace_period=0)

    # -- serving ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`drain`; returns once every session has been wound up."""
        backend = self._backend
        owned_backend = backend is None
        owner = self._owner
        if backend is None:
            resolved = resolve(self._provider, self._options, owner=owner)
            backend = resolved.make_backend()
            owner = owner or resolved.owner
        owner = owner or default_owner()
        pool = (
            WarmPool(backend, self._labelled(self.spec, {}), self.warm_pool_size, owner=owner)
            if self.warm_pool_size
            else None
        )
        try:
            async with anyio.create_task_group() as tg:
                if pool is not None:
                    tg.start_soon(pool.fill)
                if self.metrics is not None:
                    tg.start_soon(self._refresh_stats)
                self._started.set()
                await self._poll_loop(tg, backend, owner, pool)
                # Draining: the sessions wind down by themselves; then stop the helpers.
                while self._runs:
                    self._runs_changed = anyio.Event()
                    await self._runs_changed.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if pool is not None:
                    await pool.aclose()
                if owned_backend:
                    await backend.aclose()

    async def _poll_loop(
        self,
        tg: anyio.abc.TaskGroup,
        backend: BaseBackend,
        owner: str,
        pool: WarmPool | None,
    ) -> None:
        slots = anyio.Semaphore(self.concurrency)
        failures = 0
        with anyio.CancelScope() as self._poll_scope:
            if self._draining:
                self._poll_scope.cancel()
            while True:
                await slots.acquire()
                try:
                    item = await self.source.poll(
                        block_ms=self.poll_block_ms,
                        reclaim_older_than_ms=self.reclaim_older_than_ms,
                    )
                except SandboxError as exc:
                    slots.release()
                    failures += 1
                    log.warning("poll failed (%s); retrying", exc)
                    await anyio.sleep(min(0.5 * 2**failures, 30.0))
                    continue
                except BaseException:
                    slots.release()
                    raise
                failures = 0
                if item is None:
                    slots.release()
                    continue
                run = _SessionRun(item)
                self._runs[item.id] = run
                tg.start_soon(self._serve_and_release, run, backend, owner, pool, slots)

    async def _serve_and_release(
        self,
        run: _SessionRun,
        backend: BaseBackend,
        owner: str,
        pool: WarmPool | None,
        slots: anyio.Semaphore,
    ) -> None:
        try:
            await self._serve(run, backend, owner, pool)
        except Exception:
            log.exception("work item %s: serving failed", run.item.id)
            await anyio.sleep(1.0)  # a session that cannot start must not spin the loop
        finally:
            self._runs.pop(run.item.id, None)
            self._runs_changed.set()
            slots.release()

    async def _serve(
        self, run: _SessionRun, backend: BaseBackend, owner: str, pool: WarmPool | None
    ) -> None:
        item, source = run.item, self.source
        if self._draining:
            return  # polled as the drain began: it goes back to the queue unacknowledged
        await source.ack(item.id)
        if item.kind != "session":
            await source.stop(item.id, force=True)
            return

        def lease_ended(reason: LeaseEnd) -> None:
            if reason == "lost":
                run.end_reason = "lease_lost"
                run.scope.cancel()
            else:
                run.wind_down(anyio.current_time() + self.grace_period, "stopped")

        keeper = LeaseKeeper(source, item, desired_ttl_seconds=self.lease_ttl, on_end=lease_ended)
        try:
            await keeper.claim()
        except LeaseLost:
            log.info("work item %s: another worker holds it", item.id)
            return
        if self._draining:
            run.wind_down(self._drain_deadline, "drained")
        log.info("work item %s: serving session %s", item.id, item.session_id)
        if self.metrics is not None:
            self.metrics.session_started()
        sandbox: Sandbox | None = None
        channel: SessionChannel | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keeper.keep)
                with run.scope:
                    await self._sweep_leftovers(backend, item)
                    sandbox = pool.take() if pool is not None else None
                    if sandbox is None:
                        sandbox = await Sandbox.create(
                            self._labelled(self.spec, self._session_labels(item)),
                            backend=backend,
                            owner=owner,
                        )
                    self._record("worker.session_start", item, sandbox)
                    toolkit = self._toolkit(sandbox)
                    names = set(toolkit.names)
                    channel = source.channel(item, owns=names.__contains__)
                    try:
                        await self._answer_calls(run, channel, toolkit)
                    except LeaseLost as exc:
                        log.warning("work item %s: %s", item.id, exc)
                        run.end_reason = "lease_lost"
                        keeper.lost = True
                # Cleanup runs while the lease keeper still heartbeats.
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                    await self._finish(run, sandbox, channel, keeper)
                tg.cancel_scope.cancel()
        except Exception:
            run.end_reason = "failed"
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT):
                await self._finish(run, sandbox, channel, keeper)
            raise
        finally:
            if self.metrics is not None:
                self.metrics.session_ended(run.end_reason)
            self._record("worker.session_end", item, sandbox, result={"outcome": run.end_reason})

    async def _finish(
        self,
        run: _SessionRun,
        sandbox: Sandbox | None,
        channel: SessionChannel | None,
        keeper: LeaseKeeper,
    ) -> None:
        item = run.item
        if sandbox is not None:
            try:
                await sandbox.destroy()
            except SandboxError as exc:
                log.warning("work item %s: destroy of %s failed: %s", item.id, sandbox.id, exc)
        if channel is not None:
            await channel.aclose()
        if not keeper.lost:
            try:
                await self.source.stop(item.id, force=True)
            except SandboxError as exc:
                log.warning("work item %s: stop failed: %s", item.id, exc)
        log.info("work item %s: done (%s)", item.id, run.end_reason)

    async def _answer_calls(
        self, run: _SessionRun, channel: SessionChannel, toolkit: ToolKit
    ) -> None:
        note = MOVED_NOTE if run.item.attempt > 1 else ""
        while True:
            call: ToolCall | None = None
            with anyio.CancelScope() as wait:
                run.wait_scope = wait
                if run.winding_down:
                    wait.cancel()
                call = await channel.next_call()
            run.wait_scope = None
            if wait.cancelled_caught or call is None:
                return
            started = time.perf_counter()
            if call.interrupted:
                result, outcome = ToolResult(INTERRUPTED, is_error=True), "interrupted"
            else:
                await channel.started(call)
                result, outcome = await self._run_call(run, toolkit, call)
            if note and outcome != "interrupted":
                result = ToolResult(note + result.content, result.is_error)
            note = ""
            with anyio.CancelScope(shield=True):
                posted = await channel.post_result(call, result.content, is_error=result.is_error)
            if self.metrics is not None:
                self.metrics.tool_call(call.name, outcome, time.perf_counter() - started)
            if not posted:
                log.warning("work item %s: result of %s was refused", run.item.id, call.id)

    async def _run_call(
        self, run: _SessionRun, toolkit: ToolKit, call: ToolCall
    ) -> tuple[ToolResult, str]:
        result: ToolResult | None = None
        with anyio.CancelScope() as scope:
            run.call_scope = scope
            scope.deadline = run.deadline
            result = await toolkit.run(call.name, call.input, call_id=call.id)
        run.call_scope = None
        # A provider may answer a killed command instead of raising the cancellation:
        # either way the call was cut short by the stop.
        if result is None or scope.cancel_called:
            message = (
                f"cancelled: the worker stopped ({run.end_reason}) before this call finished "
                f"(grace period {self.grace_period:g} s); it may have partly run"
            )
            return ToolResult(message, is_error=True), "cancelled"
        return result, "error" if result.is_error else "ok"

    # -- helpers ----------------------------------------------------------------------------

    def _toolkit(self, sandbox: Sandbox) -> ToolKit:
        kwargs: dict[str, Any] = {"policy": self.policy, "audit": self.audit}
        if self.workdir is not None:
            kwargs["workdir"] = self.workdir
        if self.output_budget is not None:
            kwargs["output_budget"] = self.output_budget
        return ToolKit(sandbox, **kwargs)

    def _labelled(self, spec: SandboxSpec, extra: Mapping[str, str]) -> SandboxSpec:
        labels = {**spec.labels, WORKER_LABEL: self.worker_id, **extra}
        return spec.model_copy(update={"labels": labels})

    @staticmethod
    def _session_labels(item: WorkItem) -> dict[str, str]:
        return {SESSION_LABEL: item.session_id, ITEM_LABEL: item.id}

    async def _sweep_leftovers(self, backend: BaseBackend, item: WorkItem) -> None:
        """Destroy the sandboxes an earlier holder of this session left (it died)."""
        try:
            stale = await backend.list({SESSION_LABEL: item.session_id})
        except SandboxError as exc:
            log.warning("work item %s: cannot list leftover sandboxes: %s", item.id, exc)
            return
        for info in stale:
            log.info("work item %s: destroying leftover sandbox %s", item.id, info.id)
            try:
                await backend.destroy(info.id)
            except SandboxError as exc:
                log.warning("work item %s: destroy of %s failed: %s", item.id, info.id, exc)

    def _record(
        self,
        op: str,
        item: WorkItem,
        sandbox: Sandbox | None,
        *,
        result: dict[str, Any] | None = None,
    ) -> None:
        if self.audit is None:
            return
        self.audit.record(
            op,
            sandbox_id=sandbox.id if sandbox is not None else None,
            provider=sandbox.provider if sandbox is not None else None,
            arguments={
                "work_id": item.id,
                "session_id": item.session_id,
                "attempt": item.attempt,
                "worker_id": self.worker_id,
            },
            result=result,
        )

    async def _refresh_stats(self) -> None:
        assert self.metrics is not None
        while True:
            try:
                self.metrics.stats = await self.source.stats()
            except SandboxError as exc:
                log.warning("queue stats failed: %s", exc)
            await anyio.sleep(5.0)
