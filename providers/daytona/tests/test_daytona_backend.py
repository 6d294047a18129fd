"""DaytonaBackend through the real SDK against the fake: vendor-specific mappings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from agent_sandbox_daytona import DaytonaBackend, DaytonaOptions
from fake_daytona import FakeDaytona

from agent_sandbox import Sandbox
from agent_sandbox.errors import CommandTimeout, FileNotFound, SandboxNotFound, Unsupported
from agent_sandbox.models import NetworkPolicy, SandboxSpec

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(fake_daytona: FakeDaytona) -> AsyncIterator[DaytonaBackend]:
    b = DaytonaBackend(DaytonaOptions(api_key=fake_daytona.api_key, api_url=fake_daytona.api_url))
    try:
        yield b
    finally:
        await b.aclose()


async def test_exec_streams_apart_and_reports_exit(backend: DaytonaBackend) -> None:
    async with await Sandbox.create(backend=backend) as sb:
        result = await sb.exec("printf out; printf err >&2; exit 7")
        assert (result.exit_code, result.stdout, result.stderr) == (7, "out", "err")
        binary = await sb.exec(
            ["python3", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"]
        )
        assert binary.stdout_bytes == bytes(range(256))
        piped = await sb.exec(["cat"], stdin=b"\x00line\n\xff")
        assert piped.stdout_bytes == b"\x00line\n\xff"
        env = await sb.exec("echo $A:$PWD", env={"A": "it's"}, cwd="/tmp")
        assert env.stdout == "it's:/tmp\n"


async def test_timeout_kills_and_raises(backend: DaytonaBackend, fake_daytona: FakeDaytona) -> None:
    async with await Sandbox.create(backend=backend) as sb:
        with pytest.raises(CommandTimeout) as caught:
            await sb.exec("echo started; sleep 30", timeout=1)
        assert caught.value.stdout == b"started\n"
        sandbox = fake_daytona.sandboxes[sb.id]
        assert sandbox.sessions == {}  # the session (and with it the command) is gone


async def test_timeout_backstop_inside_the_sandbox(
    backend: DaytonaBackend, fake_daytona: FakeDaytona
) -> None:
    # A daemon whose session deletion leaves the command running: the in-sandbox backstop
    # (GNU timeout on the command's process group) still ends the whole tree.
    fake_daytona.delete_kills_commands = False
    try:
        async with await Sandbox.create(backend=backend) as sb:
            with pytest.raises(CommandTimeout):
                await sb.exec("sleep 60 & sleep 60; echo never", timeout=1)
            detached = fake_daytona.sandboxes[sb.id].detached
            assert len(detached) == 1
            with anyio.fail_after(20):
                while not detached[0].done.is_set():  # noqa: ASYNC110 - set by the fake's loop in another thread
                    await anyio.sleep(0.1)
    finally:
        fake_daytona.delete_kills_commands = True


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
        assert body["cpu"] == 2
        assert body["memory"] == 2
        assert body["disk"] == 3
        assert body["env"] == {"K": "v"}
        assert body["labels"]["team"] == "x"
        assert body["ttlMinutes"] == 2
        assert body["autoStopInterval"] == 1
        assert body["autoDeleteInterval"] == 0
        assert body["networkAllowList"] == "10.0.0.0/8,1.2.3.4/32"
        assert body["domainAllowList"] == "pypi.org"
        assert body["buildInfo"]["dockerfileContent"].startswith("FROM python:3.12-slim")
        assert info.labels["team"] == "x"
        assert info.image == "python:3.12-slim"
        assert info.expires_at is not None
        assert (await backend.exec(info.id, "echo $K", _opts())).stdout == "v\n"
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


async def test_destroy_idempotent_and_not_found(backend: DaytonaBackend) -> None:
    info = await backend.create(SandboxSpec())
    await backend.destroy(info.id)
    await backend.destroy(info.id)
    with pytest.raises(SandboxNotFound):
        await backend.connect(info.id)
    with pytest.raises(SandboxNotFound):
        await backend.read_file(info.id, "/tmp/x")


async def test_files_and_workdir(backend: DaytonaBackend) -> None:
    async with await Sandbox.create(backend=backend, workdir="/home/daytona/project") as sb:
        assert sb.info.workdir == "/home/daytona/project"
        await sb.write_file("a/b.txt", b"hello")
        assert await sb.read_file("/home/daytona/project/a/b.txt") == b"hello"
        assert (await sb.exec("cat a/b.txt")).stdout == "hello"
        with pytest.raises(FileNotFound):
            await sb.read_file("nope")
        again = await backend.connect(sb.id)
        assert again.workdir == "/home/daytona/project"


async def test_expose_port_signed_url_opens(backend: DaytonaBackend) -> None:
    import aiohttp

    async with await Sandbox.create(backend=backend) as sb:
        url = await backend.expose_port(sb.id, 1)  # nothing listens: the proxy says so
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 502
            async with http.get(url.replace("/signed/", "/signed/x")) as resp:
                assert resp.status == 401


def _opts():  # type: ignore[no-untyped-def]
    from agent_sandbox.models import ExecOptions

    return ExecOptions(timeout=10)


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
    options = {"api_key": fake_daytona.api_key, "api_url": fake_daytona.api_url}
    async with await Sandbox.create(provider="daytona", options=options) as sb:
        assert (await sb.exec(["echo", "via config"])).stdout == "via config\n"


def test_sync_handle(fake_daytona: FakeDaytona) -> None:
    from agent_sandbox import sync

    options = {"api_key": fake_daytona.api_key, "api_url": fake_daytona.api_url}
    with sync.Sandbox.create(provider="daytona", options=options) as sb:
        assert sb.exec("echo sync").stdout == "sync\n"


def test_command_line_prologue() -> None:
    from agent_sandbox.models import ExecOptions

    on = DaytonaBackend(DaytonaOptions(api_key="k"))
    off = DaytonaBackend(DaytonaOptions(api_key="k", timeout_backstop=False))
    opts = ExecOptions(cwd="/w d", env={"A": "x y"}, timeout=2.5)
    line = on._command_line(["printf", "%s", "a b"], opts, "/tmp/in")
    assert line.startswith("{ rm -f -- /tmp/in && cd -- '/w d' && export A='x y' && ")
    assert "timeout -s KILL 4 printf %s 'a b'" in line
    assert line.endswith("; } < /tmp/in")
    assert "timeout" not in off._command_line(["true"], opts, None)
    assert off._command_line(["true"], ExecOptions(), None) == "{ true; } < /dev/null"
