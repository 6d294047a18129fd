# wait_for polls state other tasks and processes change (sandbox directories, the worker's runs).
# ruff: noqa: ASYNC110
"""The dispatcher in-process, on SQLite and Redis, with real local sandboxes."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_sandbox import AuditLog, JsonlSink, Policy, verify_chain
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.worker import (
    NO_HEARTBEAT,
    LeaseKeeper,
    LeaseLost,
    Worker,
    WorkerMetrics,
    WorkSource,
    heartbeat_interval,
    serve_metrics,
)
from agent_sandbox.worker.dispatcher import SESSION_LABEL, WORKER_LABEL

sys.path.insert(0, str(Path(__file__).parent))
from worker_helpers import process_lines

pytestmark = pytest.mark.anyio


def sandboxes(root: Path) -> list[str]:
    return (
        sorted(p.name for p in root.iterdir() if p.name.startswith("loc-")) if root.exists() else []
    )


async def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


@pytest.fixture
def backend(sandbox_root: Path) -> LocalBackend:
    return LocalBackend(LocalOptions(root=sandbox_root))


@pytest.fixture
async def running(queue: WorkSource, backend: LocalBackend) -> AsyncIterator[Callable[..., Any]]:
    """Start a worker on ``queue`` (keyword arguments go to :class:`Worker`); drained after."""
    workers: list[Worker] = []
    async with anyio.create_task_group() as tg:

        async def start(**kwargs: Any) -> Worker:
            worker = Worker(queue, backend=backend, poll_block_ms=100, **kwargs)
            workers.append(worker)
            tg.start_soon(worker.run)
            await worker.wait_started()
            return worker

        yield start
        for worker in workers:
            worker.drain(grace_period=0)


async def test_each_session_gets_its_own_sandbox_destroyed_at_close(
    queue: WorkSource, running: Callable[..., Any], sandbox_root: Path, tmp_path: Path
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    await running(audit=AuditLog(JsonlSink(audit_path)), concurrency=2)
    sessions = queue.sessions  # type: ignore[attr-defined]
    a, b = await sessions.create(), await sessions.create()
    wrote = await sessions.call_tool(a, "write", {"file_path": "note.txt", "content": "from a"})
    assert not wrote.is_error, wrote.content
    seen_a = await sessions.call_tool(a, "read", {"file_path": "note.txt"})
    assert "from a" in seen_a.content
    seen_b = await sessions.call_tool(b, "bash", {"command": "cat note.txt"})
    assert "No such file" in seen_b.content
    # the shell persists between calls of one session
    await sessions.call_tool(a, "bash", {"command": "export COLOUR=teal"})
    echoed = await sessions.call_tool(a, "bash", {"command": "echo $COLOUR"})
    assert echoed.content.strip() == "teal"
    assert len(sandboxes(sandbox_root)) == 2
    await sessions.close(a)
    await sessions.close(b)
    await wait_for(lambda: not sandboxes(sandbox_root))
    await wait_for(lambda: audit_path.exists() and "worker.session_end" in audit_path.read_text())
    assert verify_chain(audit_path).ok
    events = [json.loads(line) for line in audit_path.read_text().splitlines()]
    ops = [e["op"] for e in events]
    assert ops.count("worker.session_start") == 2
    assert ops.count("tool_call") == 5
    calls = [e for e in events if e["op"] == "tool_call"]
    assert all(e["decision"] == "allow" and e["sandbox_id"] for e in calls)


async def test_policy_is_asked_before_every_call(
    queue: WorkSource, running: Callable[..., Any], tmp_path: Path
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    policy = Policy(deny_commands=[r"\bcurl\b"], deny_tools=["write"])
    await running(policy=policy, audit=AuditLog(JsonlSink(audit_path)))
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    denied = await sessions.call_tool(session, "bash", {"command": "curl http://example.com"})
    assert denied.is_error
    assert "denied by policy" in denied.content
    refused = await sessions.call_tool(session, "write", {"file_path": "x", "content": "y"})
    assert refused.is_error
    assert "denied by policy" in refused.content
    allowed = await sessions.call_tool(session, "bash", {"command": "echo fine"})
    assert allowed.content.strip() == "fine"
    await sessions.close(session)
    events = [json.loads(line) for line in audit_path.read_text().splitlines()]
    decisions = [(e["tool"], e["decision"]) for e in events if e["op"] == "tool_call"]
    assert decisions == [("bash", "deny"), ("write", "deny"), ("bash", "allow")]


async def test_drain_finishes_short_calls_cancels_long_ones_and_cleans_up(
    queue: WorkSource, backend: LocalBackend, sandbox_root: Path
) -> None:
    marker = (
        f"3{abs(hash(str(sandbox_root))) % 100:02d}.{abs(hash(str(sandbox_root))) % 10_000:04d}"
    )
    worker = Worker(queue, backend=backend, poll_block_ms=100, grace_period=1.5)
    sessions = queue.sessions  # type: ignore[attr-defined]
    short, long = await sessions.create(), await sessions.create()
    results: dict[str, Any] = {}

    async def call(name: str, session: Any, command: str) -> None:
        results[name] = await sessions.call_tool(session, "bash", {"command": command})

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        tg.start_soon(call, "short", short, "sleep 0.6; echo finished")
        tg.start_soon(call, "long", long, f"sleep {marker}")
        await wait_for(lambda: bool(process_lines(f"sleep {marker}")) and worker.sessions == 2)
        started = anyio.current_time()
        worker.drain()
    took = anyio.current_time() - started
    assert took < 30, f"drain took {took:.1f} s: it waited for the long call"
    assert results["short"].content.strip() == "finished"
    assert results["long"].is_error
    assert "cancelled" in results["long"].content
    assert not sandboxes(sandbox_root)
    assert not process_lines(f"sleep {marker}")
    # the sessions are still open: their work goes back to the queue for another worker
    stats = await queue.stats()
    assert stats.depth == 2


async def test_stop_request_winds_the_session_down(
    queue: WorkSource, running: Callable[..., Any], sandbox_root: Path
) -> None:
    worker = await running(lease_ttl=2, grace_period=5)
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    first = await sessions.call_tool(session, "bash", {"command": "echo one"})
    assert first.content.strip() == "one"
    (item_id,) = list(worker._runs)
    (first_sandbox,) = sandboxes(sandbox_root)
    await queue.stop(item_id)  # an operator asks the holder to stop
    await wait_for(lambda: item_id not in worker._runs, timeout=10)
    assert first_sandbox not in sandboxes(sandbox_root)
    # the session carries on in a new item, on a fresh sandbox, and says so
    again = await sessions.call_tool(session, "bash", {"command": "echo two"})
    assert again.content.startswith("[note: this session moved")
    assert again.content.rstrip().endswith("two")
    await sessions.close(session)


async def test_warm_pool_hands_out_ready_sandboxes(
    queue: WorkSource, running: Callable[..., Any], sandbox_root: Path, backend: LocalBackend
) -> None:
    worker = await running(warm_pool=2)
    await wait_for(lambda: len(sandboxes(sandbox_root)) == 2)
    pooled = {info.id for info in await backend.list({WORKER_LABEL: worker.worker_id})}
    assert len(pooled) == 2
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    reply = await sessions.call_tool(session, "bash", {"command": "echo warm"})
    assert reply.content.strip() == "warm"
    await wait_for(lambda: len(sandboxes(sandbox_root)) == 3)  # refilled
    in_use = set(sandboxes(sandbox_root)) & pooled
    assert len(in_use) == 2  # the session took one of the pooled ones... and one stayed idle
    await sessions.close(session)
    worker.drain(grace_period=0)
    await wait_for(lambda: not sandboxes(sandbox_root))


async def test_leftover_sandbox_of_the_session_is_destroyed_on_claim(
    queue: WorkSource, running: Callable[..., Any], backend: LocalBackend, sandbox_root: Path
) -> None:
    import agent_sandbox as asb

    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    stale = await asb.Sandbox.create(backend=backend, labels={SESSION_LABEL: session.id})
    assert stale.id in sandboxes(sandbox_root)
    await running()
    await sessions.call_tool(session, "bash", {"command": "true"})
    assert stale.id not in sandboxes(sandbox_root)
    await sessions.close(session)


async def test_lease_keeper_reports_a_stolen_lease(queue: WorkSource) -> None:
    sessions = queue.sessions  # type: ignore[attr-defined]
    await sessions.create()
    item = await queue.poll(block_ms=100)
    assert item is not None
    await queue.ack(item.id)
    ended: list[str] = []
    keeper = LeaseKeeper(queue, item, desired_ttl_seconds=1, on_end=ended.append)
    lease = await keeper.claim()
    assert lease.ttl_seconds == 1
    assert heartbeat_interval(1) == 0.5
    assert heartbeat_interval(600) == 30.0
    # a thief that learned the token heartbeats first: the keeper's next beat is refused
    await queue.heartbeat(item.id, expected_last_heartbeat=keeper.last)
    with anyio.fail_after(5):
        await keeper.keep()
    assert ended == ["lost"]
    assert keeper.lost
    second = LeaseKeeper(queue, item, on_end=ended.append)
    with pytest.raises(LeaseLost):
        await second.claim()
    assert second.last == NO_HEARTBEAT


async def test_metrics_in_prometheus_text_format(
    queue: WorkSource, running: Callable[..., Any]
) -> None:
    metrics = WorkerMetrics()
    await running(metrics=metrics)
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    await sessions.call_tool(session, "bash", {"command": "echo hi"})
    await sessions.call_tool(session, "read", {"file_path": "missing.txt"})
    await sessions.create()  # waits in the queue... or is claimed; either way it is counted
    metrics.stats = await queue.stats()
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_metrics, metrics, 0, "127.0.0.1")
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{port}/metrics")
            missing = await client.get(f"http://127.0.0.1:{port}/nope")
        tg.cancel_scope.cancel()
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert missing.status_code == 404
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    prefix = "agent_sandbox_worker_"
    assert samples[(prefix + "tool_calls_total", (("outcome", "ok"), ("tool", "bash")))] == 1
    assert samples[(prefix + "tool_calls_total", (("outcome", "error"), ("tool", "read")))] == 1
    assert samples[(prefix + "tool_call_duration_seconds_count", (("tool", "bash"),))] == 1
    assert samples[(prefix + "sessions_running", ())] >= 1
    assert (prefix + "queue_depth", ()) in samples
    assert families[prefix + "tool_call_duration_seconds"].type == "histogram"
