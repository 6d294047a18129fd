"""Image pulls report their progress, from a registry on 127.0.0.1 (Debian's docker-registry).

The test builds an image with a layer of random bytes that nothing else has, pushes it to a
registry it starts on loopback, removes it from the engine, and has a sandbox pull it back.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_sandbox_docker import DockerOptions
from docker_testkit import BUSYBOX, RUN_LABEL, LabelledDockerBackend

from agent_sandbox.models import SandboxSpec
from agent_sandbox.progress import Step, listening

REGISTRY = shutil.which("docker-registry")
BLOB_MB = 24


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pushed_image(tmp_path: Path, docker_api: Any) -> Iterator[str]:
    """An image only the loopback registry holds: ``127.0.0.1:PORT/agent-sandbox-test/pull:TAG``."""
    if REGISTRY is None:
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    server = subprocess.Popen(
        [REGISTRY, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ref = f"127.0.0.1:{port}/agent-sandbox-test/pull:{uuid.uuid4().hex[:12]}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the loopback registry did not start")
                time.sleep(0.1)
        dockerfile = f"FROM {BUSYBOX}\nRUN head -c {BLOB_MB * 1_000_000} /dev/urandom > /blob\n"
        for _ in docker_api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True):
            pass
        for _ in docker_api.push(ref, stream=True, decode=True):
            pass
        docker_api.remove_image(ref)  # the random layer now lives in the registry only
        yield ref
    finally:
        server.terminate()
        server.wait(timeout=10)
        with contextlib.suppress(Exception):  # never pulled, or already gone
            docker_api.remove_image(ref, force=True)


@pytest.mark.anyio
async def test_pull_reports_bytes(pushed_image: str, docker_label: str) -> None:
    steps: list[Step] = []
    backend = LabelledDockerBackend(DockerOptions())
    backend.run_label = docker_label
    try:
        with listening(steps.append):
            info = await backend.create(SandboxSpec(image=pushed_image, ttl_seconds=120))
        await backend.destroy(info.id)
    finally:
        await backend.aclose()
    pulls = [s for s in steps if s.what == f"pulling {pushed_image}"]
    assert pulls, steps
    last = pulls[-1]
    assert last.total is not None
    assert last.total > BLOB_MB * 1_000_000 // 2  # the layer, compressed by the registry push
    assert last.done == last.total
    assert [s.done for s in pulls] == sorted(s.done or 0 for s in pulls)


def test_cli_shows_the_pull_on_a_terminal(pushed_image: str, docker_label: str) -> None:
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "AGENT_SANDBOX_PROVIDER": "docker"}
    argv = [sys.executable, "-m", "agent_sandbox.cli", "create", "--image", pushed_image]
    proc = subprocess.Popen(
        [*argv, "--label", f"{RUN_LABEL}={docker_label}", "--ttl", "120"],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    out = proc.stdout.read() if proc.stdout else b""
    assert proc.wait(timeout=120) == 0, shown
    os.close(leader)
    assert out.strip(), "no sandbox id printed"
    assert f"pulling {pushed_image}".encode() in shown
    assert b" MB" in shown
