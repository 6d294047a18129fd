# The polling loops watch other processes, files and containers (no event to wait on).
# ruff: noqa: ASYNC110, ASYNC221
"""The worker as real processes (``agent-sandbox worker``), on SQLite and Redis: many sessions over
four workers, kill -9 in the middle of a session, SIGTERM during a long call.

In-flight semantics under test: a call that a killed worker had started is answered as failed
(``interrupted``) by the worker that reclaims the session, and is not run again; the calls after
it run in a fresh sandbox. A call running when a worker drains gets the grace period, then is
answered as ``cancelled``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_sandbox.worker import WorkSource
from agent_sandbox.worker.dispatcher import INTERRUPTED, MOVED_NOTE

sys.path.insert(0, str(Path(__file__).parent))
from worker_helpers import process_lines

pytestmark = pytest.mark.anyio

COMMAND = Path(sys.executable).parent / "agent-sandbox"


class WorkerProcess:
    """One ``agent-sandbox worker`` process, its log in a file."""

    def __init__(self, url: str, log: Path, *args: str) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(
            [str(COMMAND), "worker", "--source", url, *args],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, timeout: float = 90.0) -> None:
        with anyio.fail_after(timeout):
            while " serving " not in self.text():
                assert self.proc.poll() is None, self.text()
                await anyio.sleep(0.05)

    async def exited(self, timeout: float) -> int:
        with anyio.fail_after(timeout):
            while self.proc.poll() is None:
                await anyio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.handle.close()


@pytest.fixture
def workers(queue_url: str, sandbox_root: Path, tmp_path: Path) -> Iterator[Any]:
    """Start worker processes on the test's queue and local sandboxes; all killed after."""
    started: list[WorkerProcess] = []

    def start(*args: str, provider: tuple[str, ...] | None = None) -> WorkerProcess:
        chosen = provider or ("--provider", "local", "-o", f"root={sandbox_root}")
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(queue_url, log, *chosen, "--worker-id", f"w{len(started)}", *args)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.kill()


def sandboxes(root: Path) -> list[str]:
    return (
        sorted(p.name for p in root.iterdir() if p.name.startswith("loc-")) if root.exists() else []
    )


def marker() -> str:
    return f"{random.randint(100, 999)}.{random.randint(1000, 9999)}"


async def test_many_sessions_four_workers_every_call_answered_once_in_order(
    queue: WorkSource, workers: Any, sandbox_root: Path
) -> None:
    started = [workers("--concurrency", "8") for _ in range(4)]
    for worker in started:
        await worker.ready()
    sessions = queue.sessions  # type: ignore[attr-defined]
    n_sessions, n_calls = 200, 10
    answers: dict[int, list[str]] = {}

    async def agent(index: int) -> None:
        session = await sessions.create(metadata={"index": str(index)})
        got = answers.setdefault(index, [])
        for call in range(n_calls):
            # each call appends a line: the count proves order and that nothing ran twice
            result = await sessions.call_tool(
                session, "bash", {"command": f"echo {call} >> calls.log; wc -l < calls.log"}
            )
            assert not result.is_error, result.content
            got.append(result.content.strip())
        await sessions.close(session)

    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            for index in range(n_sessions):
                tg.start_soon(agent, index)
    expected = [str(n + 1) for n in range(n_calls)]
    assert len(answers) == n_sessions
    wrong = {i: got for i, got in answers.items() if got != expected}
    assert not wrong
    for worker in started:  # every worker took part
        assert "serving session" in worker.text()
    with anyio.fail_after(30):
        while sandboxes(sandbox_root):
            await anyio.sleep(0.1)
    for worker in started:
        worker.proc.send_signal(signal.SIGTERM)
    for worker in started:
        assert await worker.exited(30) == 0, worker.text()


async def test_kill_9_mid_session_another_worker_reclaims(
    queue: WorkSource, workers: Any, sandbox_root: Path
) -> None:
    sleeper = f"sleep {marker()}"
    first = workers("--lease-ttl", "2", "--concurrency", "1")
    await first.ready()
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    made = await sessions.call_tool(session, "bash", {"command": "echo kept > state.txt; echo ok"})
    assert made.content.strip() == "ok"
    (old_box,) = sandboxes(sandbox_root)
    results: dict[str, Any] = {}

    async def in_flight() -> None:
        results["flight"] = await sessions.call_tool(session, "bash", {"command": sleeper})

    async with anyio.create_task_group() as tg:
        tg.start_soon(in_flight)
        with anyio.fail_after(20):
            while not process_lines(sleeper):
                await anyio.sleep(0.05)
        first.proc.send_signal(signal.SIGKILL)
        await first.exited(10)
        second = workers("--lease-ttl", "2", "--concurrency", "1")
        await second.ready()
    flight = results["flight"]
    assert flight.is_error
    assert flight.content == INTERRUPTED  # answered as failed, not run again
    after = await sessions.call_tool(session, "bash", {"command": "cat state.txt"})
    assert "No such file" in after.content  # a fresh sandbox, as the interrupted answer said
    assert MOVED_NOTE not in after.content  # said once
    # the dead worker's sandbox was swept, its command killed
    assert old_box not in sandboxes(sandbox_root)
    assert not process_lines(sleeper)
    assert "destroying leftover sandbox " + old_box in second.text()
    await sessions.close(session)


async def test_a_worker_that_lost_its_lease_stops_and_cannot_answer(
    queue: WorkSource, workers: Any, sandbox_root: Path
) -> None:
    """A worker frozen past its lease TTL (SIGSTOP) wakes up to a session another worker now
    holds: it must cancel its call and never answer, leaving nothing running."""
    sleeper = f"sleep {marker()}"
    frozen = workers("--lease-ttl", "2", "--concurrency", "1")
    await frozen.ready()
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    results: dict[str, Any] = {}

    async def in_flight() -> None:
        results["flight"] = await sessions.call_tool(session, "bash", {"command": sleeper})

    async with anyio.create_task_group() as tg:
        tg.start_soon(in_flight)
        with anyio.fail_after(60):
            while not process_lines(sleeper):
                await anyio.sleep(0.05)
        frozen.proc.send_signal(signal.SIGSTOP)
        successor = workers("--lease-ttl", "2", "--concurrency", "1")
        await successor.ready()
    assert results["flight"].content == INTERRUPTED  # answered once, by the successor
    frozen.proc.send_signal(signal.SIGCONT)
    with anyio.fail_after(60):
        while "lease lost" not in frozen.text() and "no longer held" not in frozen.text():
            await anyio.sleep(0.1)
    after = await sessions.call_tool(session, "bash", {"command": "echo still served"})
    assert after.content.strip() == "still served"
    assert not process_lines(sleeper)
    assert frozen.proc.poll() is None  # it lost one session, not its mind
    await sessions.close(session)
    with anyio.fail_after(30):
        while sandboxes(sandbox_root):
            await anyio.sleep(0.1)


async def test_sigterm_during_a_long_call_drains_and_leaves_nothing(
    queue: WorkSource, workers: Any, sandbox_root: Path
) -> None:
    sleeper = f"sleep {marker()}"
    worker = workers("--grace-period", "1")
    await worker.ready()
    sessions = queue.sessions  # type: ignore[attr-defined]
    slow, quick = await sessions.create(), await sessions.create()
    results: dict[str, Any] = {}

    async def call(name: str, session: Any, command: str) -> None:
        results[name] = await sessions.call_tool(session, "bash", {"command": command})

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "slow", slow, sleeper)
        tg.start_soon(call, "quick", quick, "sleep 0.5; echo made it")
        with anyio.fail_after(20):
            while not process_lines(sleeper) or len(sandboxes(sandbox_root)) < 2:
                await anyio.sleep(0.05)
        signalled = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.exited(20) == 0, worker.text()
    took = time.monotonic() - signalled
    assert took < 30, f"drain took {took:.1f} s: it waited for the long call"
    assert results["quick"].content.strip() == "made it"
    assert results["slow"].is_error
    assert "cancelled" in results["slow"].content
    assert not sandboxes(sandbox_root)
    assert not process_lines(sleeper)


async def test_second_signal_forces(queue: WorkSource, workers: Any, sandbox_root: Path) -> None:
    sleeper = f"sleep {marker()}"
    worker = workers("--grace-period", "120")
    await worker.ready()
    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    results: dict[str, Any] = {}

    async def call() -> None:
        results["slow"] = await sessions.call_tool(session, "bash", {"command": sleeper})

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        with anyio.fail_after(20):
            while not process_lines(sleeper):
                await anyio.sleep(0.05)
        worker.proc.send_signal(signal.SIGINT)
        await anyio.sleep(0.5)
        assert worker.proc.poll() is None  # draining, within its long grace period
        worker.proc.send_signal(signal.SIGINT)
        assert await worker.exited(20) == 1, worker.text()
    assert results["slow"].is_error
    assert "cancelled" in results["slow"].content
    assert not sandboxes(sandbox_root)
    assert not process_lines(sleeper)


def _docker_problem() -> str | None:
    if shutil.which("docker") is None or not os.path.exists("/var/run/docker.sock"):
        return "no Docker engine on this machine"
    try:
        import agent_sandbox_docker  # noqa: F401
    except ImportError:
        return 'the docker provider is not installed (pip install "agent-sandbox[docker]")'
    probe = subprocess.run(
        ["docker", "image", "inspect", "agent-sandbox/busybox:latest"], capture_output=True
    )
    if probe.returncode != 0:
        return "the local image agent-sandbox/busybox:latest is missing (see .ci/run)"
    return None


@pytest.mark.skipif(_docker_problem() is not None, reason=_docker_problem() or "")
async def test_sigterm_on_docker_leaves_no_container(
    queue: WorkSource, workers: Any, queue_url: str
) -> None:
    if not queue_url.startswith("sqlite"):
        pytest.skip("the Docker variant runs once, on SQLite")
    sleeper = f"sleep {marker()}"
    worker = workers(
        "--grace-period", "1",
        provider=("--provider", "docker", "--image", "agent-sandbox/busybox:latest"),
    )  # fmt: skip
    await worker.ready()
    label = "agent-sandbox.worker.id=w0"

    def containers() -> list[str]:
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={label}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.split()

    sessions = queue.sessions  # type: ignore[attr-defined]
    session = await sessions.create()
    results: dict[str, Any] = {}

    async def call() -> None:
        results["slow"] = await sessions.call_tool(session, "bash", {"command": sleeper})

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(60):
                while not containers() or not process_lines(sleeper):
                    await anyio.sleep(0.1)
            worker.proc.send_signal(signal.SIGTERM)
            assert await worker.exited(30) == 0, worker.text()
        assert results["slow"].is_error
        assert "cancelled" in results["slow"].content
        assert containers() == []
        assert not process_lines(sleeper)
    finally:
        for container in containers():
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
