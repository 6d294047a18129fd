"""The work-queue contract, on SQLite and on a real Redis: claims, leases, reclaim, fencing."""

from __future__ import annotations

import anyio
import pytest

from agent_sandbox.worker import (
    NO_HEARTBEAT,
    LeaseLost,
    SessionClosed,
    WorkNotFound,
    WorkSource,
    open_source,
)
from agent_sandbox.worker.sqlite import Session

pytestmark = pytest.mark.anyio


def everything(name: str) -> bool:
    return True


async def sessions_of(queue: WorkSource) -> object:
    return queue.sessions  # type: ignore[attr-defined]


async def test_empty_poll_waits_then_returns_none(queue: WorkSource) -> None:
    start = anyio.current_time()
    assert await queue.poll(block_ms=200) is None
    assert anyio.current_time() - start >= 0.15


async def test_poll_claims_once_and_stats_follow(queue: WorkSource, queue_url: str) -> None:
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create(metadata={"user": "ada"})
    stats = await queue.stats()
    assert (stats.depth, stats.pending) == (1, 0)
    assert stats.oldest_queued_at is not None
    item = await queue.poll(block_ms=100)
    assert item is not None
    assert item.session_id == session.id
    assert (item.attempt, item.kind, item.metadata) == (1, "session", {"user": "ada"})
    stats = await queue.stats()
    assert (stats.depth, stats.pending, stats.workers_polling) == (0, 1, 1)
    other = open_source(queue_url, worker_id="other")
    try:
        assert await other.poll(block_ms=50) is None  # polled, not yet reclaimable
    finally:
        await other.aclose()
    await queue.ack(item.id)
    stats = await queue.stats()
    assert (stats.depth, stats.pending, stats.oldest_queued_at) == (0, 0, None)


async def test_poll_wakes_when_work_arrives(queue: WorkSource) -> None:
    sessions = queue.sessions  # type: ignore[attr-defined]
    async with anyio.create_task_group() as tg:

        async def later() -> None:
            await anyio.sleep(0.2)
            await sessions.create()

        tg.start_soon(later)
        start = anyio.current_time()
        item = await queue.poll(block_ms=999)
        assert item is not None
        assert anyio.current_time() - start < 0.9


async def test_unacknowledged_item_is_reclaimed(queue: WorkSource, queue_url: str) -> None:
    session = await queue.sessions.create()  # type: ignore[attr-defined]
    first = await queue.poll(block_ms=100)
    assert first is not None
    await anyio.sleep(0.3)
    other = open_source(queue_url, worker_id="other")
    try:
        again = await other.poll(block_ms=100, reclaim_older_than_ms=200)
        assert again is not None
        assert (again.id, again.session_id) == (first.id, session.id)
    finally:
        await other.aclose()


async def test_heartbeat_is_compare_and_swap(queue: WorkSource) -> None:
    await queue.sessions.create()  # type: ignore[attr-defined]
    item = await queue.poll(block_ms=100)
    assert item is not None
    await queue.ack(item.id)
    lease = await queue.heartbeat(item.id, expected_last_heartbeat=NO_HEARTBEAT)
    assert (lease.state, lease.lease_extended) == ("active", True)
    # a second worker claiming the same lease is refused
    with pytest.raises(LeaseLost):
        await queue.heartbeat(item.id, expected_last_heartbeat=NO_HEARTBEAT)
    renewed = await queue.heartbeat(
        item.id, expected_last_heartbeat=lease.last_heartbeat, desired_ttl_seconds=5
    )
    assert renewed.last_heartbeat != lease.last_heartbeat
    assert renewed.ttl_seconds == 5
    with pytest.raises(LeaseLost):  # the stale value no longer matches
        await queue.heartbeat(item.id, expected_last_heartbeat=lease.last_heartbeat)
    with pytest.raises(WorkNotFound):
        await queue.heartbeat("work_missing", expected_last_heartbeat=NO_HEARTBEAT)


async def test_expired_lease_goes_back_to_the_queue_and_fences_the_old_holder(
    queue: WorkSource, queue_url: str
) -> None:
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    item = await queue.poll(block_ms=100)
    assert item is not None
    await queue.ack(item.id)
    lease = await queue.heartbeat(
        item.id, expected_last_heartbeat=NO_HEARTBEAT, desired_ttl_seconds=1
    )
    old = queue.channel(item, owns=everything)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sessions.call_tool, session, "bash", {"command": "true"})
        call = await old.next_call()
        assert call is not None
        await old.started(call)
        await anyio.sleep(1.3)
        other = open_source(queue_url, worker_id="other")
        try:
            again = await other.poll(block_ms=100)
            assert again is not None
            assert (again.id, again.attempt) == (item.id, 2)
            with pytest.raises(LeaseLost):
                await queue.heartbeat(item.id, expected_last_heartbeat=lease.last_heartbeat)
            # the old holder can neither answer nor read on
            assert not await old.post_result(call, "late", is_error=False)
            with pytest.raises(LeaseLost):
                await old.next_call()
            await other.ack(again.id)
            await other.heartbeat(again.id, expected_last_heartbeat=NO_HEARTBEAT)
            new = other.channel(again, owns=everything)
            resumed = await new.next_call()
            assert resumed is not None
            assert resumed.id == call.id
            assert resumed.interrupted  # started by the holder that lost the lease
            assert await new.post_result(resumed, "answered", is_error=True)
            assert not await new.post_result(resumed, "twice", is_error=False)
        finally:
            await other.aclose()


async def test_calls_come_in_order_and_are_answered_once(queue: WorkSource) -> None:
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    item = await queue.poll(block_ms=100)
    assert item is not None
    await queue.ack(item.id)
    await queue.heartbeat(item.id, expected_last_heartbeat=NO_HEARTBEAT)
    channel = queue.channel(item, owns=everything)
    results: list[object] = []

    async def agent() -> None:
        for n in range(5):
            results.append(await sessions.call_tool(session, "bash", {"command": f"echo {n}"}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(agent)
        for n in range(5):
            call = await channel.next_call()
            assert call is not None
            assert (call.name, call.input, call.interrupted) == (
                "bash",
                {"command": f"echo {n}"},
                False,
            )
            await channel.started(call)
            assert await channel.post_result(call, f"out {n}", is_error=n == 3)
    assert [(r.content, r.is_error) for r in results] == [  # type: ignore[attr-defined]
        ("out 0", False),
        ("out 1", False),
        ("out 2", False),
        ("out 3", True),
        ("out 4", False),
    ]
    await sessions.close(session)
    assert await channel.next_call() is None
    with pytest.raises(SessionClosed):
        await sessions.call_tool(session, "bash", {"command": "true"})
    with pytest.raises(WorkNotFound):
        await sessions.call_tool(Session("sess_missing"), "bash", {"command": "true"})


async def test_stop_asks_the_holder_and_requeues_an_open_session(queue: WorkSource) -> None:
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    item = await queue.poll(block_ms=100)
    assert item is not None
    await queue.ack(item.id)
    lease = await queue.heartbeat(item.id, expected_last_heartbeat=NO_HEARTBEAT)
    await queue.stop(item.id)  # graceful: the holder hears it on its next heartbeat
    told = await queue.heartbeat(item.id, expected_last_heartbeat=lease.last_heartbeat)
    assert (told.state, told.lease_extended) == ("stopping", False)
    await queue.stop(item.id, force=True)
    await queue.stop(item.id, force=True)  # idempotent
    told = await queue.heartbeat(item.id, expected_last_heartbeat="anything")
    assert told.state == "stopped"
    # the session is still open: a new item carries it on, one attempt later
    moved = await queue.poll(block_ms=100)
    assert moved is not None
    assert (moved.session_id, moved.attempt) == (session.id, 2)
    assert moved.id != item.id
    await queue.ack(moved.id)
    await queue.heartbeat(moved.id, expected_last_heartbeat=NO_HEARTBEAT)
    await sessions.close(session)
    await queue.stop(moved.id, force=True)
    assert await queue.poll(block_ms=100) is None  # closed: nothing requeued
    with pytest.raises(WorkNotFound):
        await queue.stop("work_missing")


async def test_closing_a_queued_session_takes_it_off_the_queue(queue: WorkSource) -> None:
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    await sessions.close(session)
    await sessions.close(session)  # idempotent
    assert await queue.poll(block_ms=100) is None
    assert (await queue.stats()).depth == 0


async def test_call_tool_times_out_without_a_worker(queue: WorkSource) -> None:
    from agent_sandbox.errors import OperationTimeout

    session = await queue.sessions.create()  # type: ignore[attr-defined]
    with pytest.raises(OperationTimeout):
        await queue.sessions.call_tool(session, "bash", {"command": "true"}, timeout=0.3)  # type: ignore[attr-defined]
