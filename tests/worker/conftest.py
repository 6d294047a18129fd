"""Fixtures of the worker tests: a Redis server of our own, and queues on SQLite and Redis.

The Redis server is Debian's ``redis-server`` started on a free port on 127.0.0.1 for the test
session (no persistence) and stopped after it; each test gets a queue name of its own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent_sandbox.worker import WorkSource, open_source

sys.path.insert(0, str(Path(__file__).parent))

from worker_helpers import free_port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``redis://`` URL of a redis-server started for this test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh queue's URL: a new SQLite file, or a new queue name on the test Redis."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'queue.db'}"
    base: str = request.getfixturevalue("redis_url")
    return f"{base}?queue=test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def queue(queue_url: str) -> AsyncIterator[WorkSource]:
    source = open_source(queue_url, worker_id="test-worker")
    try:
        yield source
    finally:
        await source.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
