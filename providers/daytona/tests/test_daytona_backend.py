"""DaytonaBackend through the real SDK against the fake: vendor-specific mappings, and the vendor
behaviours the adapter works around (each one a test)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from agent_sandbox_daytona import DaytonaBackend
from agent_sandbox_daytona._process import encode_input
from fake_daytona import FakeDaytona

from agent_sandbox import Sandbox
from agent_sandbox.errors import FileNotFound, IsADirectory, SandboxNotFound, Unsupported
from agent_sandbox.models import NetworkPolicy, SandboxSpec
from agent_sandbox.process import ExitStatus, from_shell

pytestmark = pytest.mark.anyio

BINARY = bytes(range(256)) * 4 + b"\x00\x00no newline at the end"


@pytest.fixture
async def sb(backend: DaytonaBackend) -> AsyncIterator[Sandbox]:
    async with await Sandbox.create(backend=backend) as sandbox:
        yield sandbox


def _process_routes(fake: FakeDaytona, since: int) -> list[tuple[str, str]]:
    return [r for r in fake.requests[since:] if "/process/" in r[1]]


async def test_output_is_byte_exact(sb: Sandbox) -> None:
    """The daemon relays output line by line through the shell (NUL bytes lost, a newline
    added); the adapter's channel keeps every byte, on its own stream."""
    await sb.write_file("blob", BINARY)
    result = await sb.exec("cat blob; cat blob >&2; exit 3")
    assert (result.exit_code, result.stdout_bytes, result.stderr_bytes) == (3, BINARY, BINARY)
    assert (await sb.exec("printf 'no newline'")).stdout == "no newline"
    assert (await sb.exec("true")).stdout_bytes == b""


async def test_stdin_is_byte_exact_and_not_echoed(sb: Sandbox) -> None:
    """The daemon echoes input into the log as output unless told not to, and adds a newline to
    input that has none: the adapter's stdin arrives exactly, and only once."""
    piped = await sb.exec(["cat"], stdin=BINARY)
    assert piped.stdout_bytes == BINARY
    big = os.urandom(300_000)
    digest = (await sb.exec(["sha256sum"], stdin=big)).stdout.split()[0]
    assert digest == hashlib.sha256(big).hexdigest()
    assert (await sb.exec(["cat"], stdin=b"")).stdout_bytes == b""


async def test_partial_lines_stream(sb: Sandbox) -> None:
    """Output without a newline reaches the caller while the command still runs (the daemon's
    relay would hold it until a newline comes)."""
    proc = await sb.start("printf partial; sleep 30")
    try:
        with anyio.fail_after(20):
            seen = b""
            async for event in proc:
                seen += event.data or b""
                if seen == b"partial":
                    break
        assert seen == b"partial"
    finally:
        await proc.end()


async def test_download_round_trips_binary_files(sb: Sandbox, tmp_path: Path) -> None:
    """``download`` is a tar over the command's output: it needs the byte-exact channel."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "blob.bin").write_bytes(BINARY)
    (src / "sub" / "zeros").write_bytes(b"\x00" * 70_000)
    await sb.upload(src, "tree")
    await sb.download("tree", tmp_path / "out")
    assert (tmp_path / "out" / "blob.bin").read_bytes() == BINARY
    assert (tmp_path / "out" / "sub" / "zeros").read_bytes() == b"\x00" * 70_000


async def test_file_operations_use_the_toolbox_file_api(
    sb: Sandbox, fake_daytona: FakeDaytona
) -> None:
    """Every session command costs the daemon's log wait on the real Daytona: reads, listings,
    stat, mkdir and remove go to the toolbox's file endpoints, never through a command."""
    await sb.write_file("d/f.txt", b"x")
    since = len(fake_daytona.requests)
    assert await sb.read_file("d/f.txt") == b"x"
    assert [e.name for e in await sb.list_dir("d")] == ["f.txt"]
    assert (await sb.stat("d/f.txt")).size == 1
    await sb.mkdir("d/e/deeper")
    await sb.remove("d", recursive=True)
    assert not await sb.exists("d")
    assert _process_routes(fake_daytona, since) == []


async def test_processes_report_command_and_status(sb: Sandbox) -> None:
    """``processes()`` reads the daemon's sessions: the command as started, the status the
    daemon recorded for it (the wrapper exits with the command's)."""
    proc = await sb.start(["sh", "-c", "exit 5"], env={"A": "x y"})
    try:
        assert (await proc.wait()).exit_code == 5
        (listed,) = [p for p in await sb.processes() if p.ref == proc.ref]
        assert listed.command == ("sh", "-c", "exit 5")
        assert (listed.running, listed.exit_code) == (False, 5)
    finally:
        await proc.end()


async def test_read_file_of_a_directory(sb: Sandbox) -> None:
    with pytest.raises(IsADirectory) as caught:
        await sb.read_file("/tmp")
    assert "path points to a directory" in str(caught.value)
    with pytest.raises(FileNotFound):
        await sb.read_file("nope")


async def test_exec_ends_without_the_daemons_log_wait(
    sb: Sandbox, fake_daytona: FakeDaytona
) -> None:
    """The daemon ends a followed log only after 50 empty polls: the adapter closes the stream
    itself once the wrapper reports the status, so the daemon never gets to end one."""
    before = fake_daytona.logs_ended_by_daemon
    for _ in range(3):
        assert (await sb.exec("echo hi")).stdout == "hi\n"
    assert fake_daytona.logs_ended_by_daemon == before


async def test_an_exec_leaves_no_session_behind(sb: Sandbox, fake_daytona: FakeDaytona) -> None:
    await sb.exec("echo once")
    with pytest.raises(Exception):  # noqa: B017, PT011 - any failure; the session must go
        await sb.exec("sleep 30", timeout=0.5)
    with anyio.fail_after(20):
        while fake_daytona.sandboxes[sb.id].sessions:  # noqa: ASYNC110 - the fake's own thread
            await anyio.sleep(0.05)


async def test_destroy_is_idempotent_while_the_delete_is_pending(
    backend: DaytonaBackend, fake_daytona: FakeDaytona
) -> None:
    """Daytona's delete is a soft delete; a second one while it is pending answers 409."""
    info = await backend.create(SandboxSpec())
    await backend.destroy(info.id)
    assert fake_daytona.sandboxes[info.id].pending  # still being deleted
    await backend.destroy(info.id)  # the 409 is not an error here
    assert ("DELETE", f"/api/sandbox/{info.id}") in fake_daytona.requests
    with anyio.fail_after(10):
        while fake_daytona.sandboxes[info.id].dto["state"] != "destroyed":  # noqa: ASYNC110
            await anyio.sleep(0.05)
    await backend.destroy(info.id)
    with pytest.raises(SandboxNotFound):
        await backend.connect(info.id)
    with pytest.raises(SandboxNotFound):
        await backend.read_file(info.id, "/tmp/x")


async def test_sweep_then_context_exit(backend: DaytonaBackend) -> None:
    """A sweep deletes the sandbox; the context manager's destroy meets the pending delete."""
    async with await Sandbox.create(backend=backend, labels={"sweep-case": "1"}) as sandbox:
        await backend.destroy(sandbox.id)


async def test_spec_maps_to_create_params(
    backend: DaytonaBackend, fake_daytona: FakeDaytona
) -> None:
    spec = SandboxSpec(
        image="python:3.12-slim",
        cpus=1.5,
        memory_mib=1500,
        disk_mib=3000,
        env={"K": "v"},
        labels={"team": "x"},
        ttl_seconds=90,
        idle_timeout_seconds=30,
        network=NetworkPolicy(mode="allowlist", allow=("10.0.0.0/8", "1.2.3.4", "pypi.org")),
    )
    info = await backend.create(spec)
    try:
        body = fake_daytona.created_bodies[-1]
        assert (body["cpu"], body["memory"], body["disk"]) == (2, 2, 3)
        assert body["env"] == {"K": "v"}
        assert body["labels"]["team"] == "x"
        assert (body["ttlMinutes"], body["autoStopInterval"], body["autoDeleteInterval"]) == (
            2,
            1,
            0,
        )
        assert body["networkAllowList"] == "10.0.0.0/8,1.2.3.4/32"
        assert body["domainAllowList"] == "pypi.org"
        assert body["buildInfo"]["dockerfileContent"].startswith("FROM python:3.12-slim")
        assert info.labels["team"] == "x"
        assert info.image == "python:3.12-slim"
        sandbox = await Sandbox.connect(info.id, backend=backend)
        assert (await sandbox.exec("echo $K")).stdout == "v\n"
    finally:
        await backend.destroy(info.id)


async def test_network_none_blocks(backend: DaytonaBackend, fake_daytona: FakeDaytona) -> None:
    info = await backend.create(SandboxSpec(network=NetworkPolicy(mode="none")))
    try:
        assert fake_daytona.created_bodies[-1]["networkBlockAll"] is True
    finally:
        await backend.destroy(info.id)


async def test_resources_without_image_unsupported(backend: DaytonaBackend) -> None:
    with pytest.raises(Unsupported):
        await backend.create(SandboxSpec(cpus=2))


async def test_files_and_workdir(backend: DaytonaBackend) -> None:
    async with await Sandbox.create(backend=backend, workdir="/home/daytona/project") as sb:
        assert sb.info.workdir == "/home/daytona/project"
        await sb.write_file("a/b.txt", b"hello")
        assert await sb.read_file("/home/daytona/project/a/b.txt") == b"hello"
        assert (await sb.exec("cat a/b.txt")).stdout == "hello"
        assert (await backend.connect(sb.id)).workdir == "/home/daytona/project"


async def test_workdir_is_the_images(backend: DaytonaBackend, fake_daytona: FakeDaytona) -> None:
    """Without a workdir of ours, the sandbox's is the toolbox's work dir (the image's WORKDIR),
    not a fixed path."""
    info = await backend.create(SandboxSpec())
    try:
        assert info.workdir == "/home/daytona"
        fake_daytona.sandboxes[info.id].dto["_workDir"] = "/tmp"  # an image with WORKDIR /tmp
        assert (await backend.connect(info.id)).workdir == "/tmp"
    finally:
        await backend.destroy(info.id)


async def test_expose_port_signed_url_opens(sb: Sandbox, backend: DaytonaBackend) -> None:
    import aiohttp

    url = await backend.expose_port(sb.id, 1)  # nothing listens: the proxy says so
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 502
        async with http.get(url.replace("/signed/", "/signed/x")) as resp:
            assert resp.status == 401


async def test_snapshot_pause_resume(backend: DaytonaBackend) -> None:
    async with await Sandbox.create(backend=backend) as sb:
        await sb.write_file("kept.txt", b"from the snapshot")
        snap = await backend.snapshot(sb.id)
        await backend.pause(sb.id)
        assert (await backend.connect(sb.id)).state == "paused"
        await backend.resume(sb.id)
        assert (await backend.connect(sb.id)).state == "running"
        assert (await sb.exec("echo back")).stdout == "back\n"
    async with await Sandbox.create(backend=backend, snapshot=snap) as copy:
        assert await copy.read_file("kept.txt") == b"from the snapshot"


async def test_found_through_the_entry_point(fake_daytona: FakeDaytona) -> None:
    from agent_sandbox.registry import load

    assert load("daytona") is DaytonaBackend
    options = {"api_url": fake_daytona.api_url}
    async with await Sandbox.create(provider="daytona", options=options) as sb:
        assert (await sb.exec(["echo", "via config"])).stdout == "via config\n"


def test_sync_handle(fake_daytona: FakeDaytona) -> None:
    from agent_sandbox import sync

    with sync.Sandbox.create(provider="daytona", options={"api_url": fake_daytona.api_url}) as sb:
        assert sb.exec("echo sync").stdout == "sync\n"


def test_wrapper_status_and_input_encoding() -> None:
    assert from_shell(0) == ExitStatus(0, None)
    assert from_shell(137) == ExitStatus(137, 9)
    assert from_shell(255) == ExitStatus(255, None)
    assert encode_input(b"") == ""
    lines = encode_input(b"\x00" * 100_000).splitlines()
    assert len(lines) == 3
    assert all(len(line) <= 64 * 1024 for line in lines)
