# The polling loops watch the fake control plane's event log and other processes.
# ruff: noqa: ASYNC110, ASYNC240
"""The Anthropic managed-agents adapter: the real ``anthropic`` SDK against a fake control plane
on 127.0.0.1 (``fake_anthropic.py``), with real local sandboxes and real worker processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_sandbox.errors import AuthenticationError
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.worker import NO_HEARTBEAT, LeaseLost, Worker, open_source
from agent_sandbox.worker.anthropic_env import AnthropicEnvironment, sessions_token

sys.path.insert(0, str(Path(__file__).parent))
from fake_anthropic import FakeAnthropic
from worker_helpers import process_lines

pytestmark = pytest.mark.anyio

COMMAND = Path(sys.executable).parent / "agent-sandbox"


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    control = FakeAnthropic().start()
    try:
        yield control
    finally:
        control.stop()


@pytest.fixture
async def env(fake: FakeAnthropic) -> AsyncIterator[AnthropicEnvironment]:
    source = AnthropicEnvironment(
        fake.environment_id,
        environment_key=fake.environment_key,
        base_url=fake.url,
        worker_id="test-worker",
        max_idle=0.5,
    )
    try:
        yield source
    finally:
        await source.aclose()


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    with anyio.fail_after(timeout):
        while not (value := check()):
            await anyio.sleep(0.02)
    return value


def text_of(result: dict[str, Any]) -> str:
    return "".join(block["text"] for block in result["content"])


async def test_queue_contract_through_the_sdk(
    fake: FakeAnthropic, env: AnthropicEnvironment
) -> None:
    assert await env.poll(block_ms=50) is None
    session_id, work_id = fake.create_session(metadata={"team": "infra"})
    stats = await env.stats()
    assert (stats.depth, stats.pending) == (1, 0)
    item = await env.poll(block_ms=100)
    assert item is not None
    assert (item.id, item.session_id, item.kind, item.metadata) == (
        work_id,
        session_id,
        "session",
        {"team": "infra"},
    )
    assert sessions_token(item.secret) == fake.sessions[session_id]["token"]
    assert "secret" not in repr(item) or item.secret not in repr(item)
    await env.ack(item.id)
    lease = await env.heartbeat(
        item.id, expected_last_heartbeat=NO_HEARTBEAT, desired_ttl_seconds=7
    )
    assert (lease.state, lease.lease_extended, lease.ttl_seconds) == ("active", True, 7)
    with pytest.raises(LeaseLost):  # a second claimant gets the 412
        await env.heartbeat(item.id, expected_last_heartbeat=NO_HEARTBEAT)
    renewed = await env.heartbeat(item.id, expected_last_heartbeat=lease.last_heartbeat)
    assert renewed.last_heartbeat != lease.last_heartbeat
    # the per-item calls carry the item's sessions token, poll and ack the environment key
    bearers = {(method, path.rsplit("/", 1)[-1]): bearer for method, path, bearer in fake.requests}
    assert bearers[("POST", "heartbeat")] == fake.sessions[session_id]["token"]
    assert bearers[("GET", "poll")] == fake.environment_key
    assert bearers[("POST", "ack")] == fake.environment_key
    await env.stop(item.id)
    told = await env.heartbeat(item.id, expected_last_heartbeat="stale")
    assert (told.state, told.lease_extended) == ("stopping", False)
    await env.stop(item.id, force=True)
    await env.stop(item.id, force=True)  # the 409 of a stopped item is not an error


async def test_wrong_key_is_an_authentication_error(fake: FakeAnthropic) -> None:
    source = AnthropicEnvironment(fake.environment_id, environment_key="nope", base_url=fake.url)
    try:
        with pytest.raises(AuthenticationError):
            await source.poll(block_ms=10)
    finally:
        await source.aclose()


async def test_worker_serves_a_session_through_its_events(
    fake: FakeAnthropic, env: AnthropicEnvironment, sandbox_root: Path
) -> None:
    worker = Worker(env, backend=LocalBackend(LocalOptions(root=sandbox_root)), poll_block_ms=200)
    session_id, work_id = fake.create_session()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        wrote = fake.tool_use(session_id, "write", {"file_path": "hello.txt", "content": "hi\n"})
        shell = fake.tool_use(session_id, "bash", {"command": "cat hello.txt; echo done"})
        answered = await eventually(lambda: fake.result(session_id, shell))
        assert text_of(answered) == "hi\ndone"
        assert answered["is_error"] is False
        assert fake.result(session_id, wrote) is not None
        # a custom tool this worker does not own is left for its owner
        custom = fake.tool_use(session_id, "lookup_customer", {"id": 7}, custom=True)
        # a call gated behind a confirmation waits for it; a denied one never runs
        gated = fake.tool_use(session_id, "bash", {"command": "echo gated"}, permission="ask")
        denied = fake.tool_use(session_id, "bash", {"command": "touch denied"}, permission="deny")
        after = fake.tool_use(session_id, "bash", {"command": "ls"})
        await anyio.sleep(0.5)
        assert fake.result(session_id, gated) is None
        fake.confirm(session_id, gated, "allow")
        assert text_of(await eventually(lambda: fake.result(session_id, gated))) == "gated"
        listing = await eventually(lambda: fake.result(session_id, after))
        assert "denied" not in text_of(listing)
        assert fake.result(session_id, custom) is None
        assert fake.result(session_id, denied) is None
        # idle at the end of the turn: after max_idle the worker lets the session go
        fake.idle(session_id, "end_turn")
        await eventually(lambda: fake.work[work_id]["state"] == "stopped")
        await eventually(lambda: not any(p.name.startswith("loc-") for p in sandbox_root.iterdir()))
        worker.drain()
    results = fake.results(session_id)
    assert len(results) == len({r["tool_use_id"] for r in results}) == 4  # each answered once


async def test_termination_ends_the_session(
    fake: FakeAnthropic, env: AnthropicEnvironment, sandbox_root: Path
) -> None:
    worker = Worker(env, backend=LocalBackend(LocalOptions(root=sandbox_root)), poll_block_ms=200)
    session_id, work_id = fake.create_session()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        call = fake.tool_use(session_id, "bash", {"command": "echo once"})
        await eventually(lambda: fake.result(session_id, call))
        fake.idle(session_id, "requires_action")  # waiting on someone else: not the end
        await anyio.sleep(1.0)
        assert fake.work[work_id]["state"] == "active"
        fake.terminate(session_id)
        await eventually(lambda: fake.work[work_id]["state"] == "stopped")
        worker.drain()


def start_worker(fake: FakeAnthropic, log: Path, root: Path, *args: str) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "ANTHROPIC_ENVIRONMENT_KEY": fake.environment_key,
        "ANTHROPIC_BASE_URL": fake.url,
    }
    return subprocess.Popen(
        [
            str(COMMAND), "worker",
            "--source", f"anthropic://{fake.environment_id}",
            "--provider", "local", "-o", f"root={root}",
            *args,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=environ,
    )  # fmt: skip


async def test_worker_process_reruns_the_call_a_killed_worker_had_in_flight(
    fake: FakeAnthropic, sandbox_root: Path, tmp_path: Path
) -> None:
    marker = f"2.{random.randint(100000, 999999)}"  # a two-second command, told apart
    first = start_worker(fake, tmp_path / "a.log", sandbox_root, "--lease-ttl", "2")
    second: subprocess.Popen[bytes] | None = None
    try:
        session_id, work_id = fake.create_session()
        call = fake.tool_use(session_id, "bash", {"command": f"sleep {marker}; echo ran"})
        await eventually(lambda: process_lines(f"sleep {marker}"), timeout=90)
        first.kill()
        first.wait()
        second = start_worker(fake, tmp_path / "b.log", sandbox_root, "--lease-ttl", "2")
        result = await eventually(lambda: fake.result(session_id, call), timeout=60)
        assert text_of(result) == "ran"  # run again by the worker that reclaimed the session
        assert len(fake.results(session_id)) == 1
        fake.terminate(session_id)
        await eventually(lambda: fake.work[work_id]["state"] == "stopped")
        second.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            while second.poll() is None:
                await anyio.sleep(0.05)
        assert second.returncode == 0, (tmp_path / "b.log").read_text()
        assert not process_lines(f"sleep {marker}")
        assert not [p for p in sandbox_root.iterdir() if p.name.startswith("loc-")]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_worker_process_drains_on_sigterm(
    fake: FakeAnthropic, sandbox_root: Path, tmp_path: Path
) -> None:
    marker = f"{random.randint(100, 999)}.{random.randint(100000, 999999)}"
    proc = start_worker(fake, tmp_path / "w.log", sandbox_root, "--grace-period", "1")
    try:
        session_id, work_id = fake.create_session()
        call = fake.tool_use(session_id, "bash", {"command": f"sleep {marker}"})
        await eventually(lambda: process_lines(f"sleep {marker}"), timeout=90)
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            while proc.poll() is None:
                await anyio.sleep(0.05)
        assert proc.returncode == 0, (tmp_path / "w.log").read_text()
        result = fake.result(session_id, call)
        assert result is not None
        assert result["is_error"] is True
        assert "cancelled" in text_of(result)
        assert fake.work[work_id]["state"] == "stopped"
        assert not process_lines(f"sleep {marker}")
        assert not [p for p in sandbox_root.iterdir() if p.name.startswith("loc-")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_anthropic_url_needs_the_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_sandbox.errors import ConfigError

    monkeypatch.delenv("ANTHROPIC_ENVIRONMENT_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_ENVIRONMENT_KEY"):
        open_source("anthropic://env_x")
    monkeypatch.setenv("ANTHROPIC_ENVIRONMENT_KEY", "k")
    source = open_source("anthropic://env_x")
    assert source.url == "anthropic://env_x"
