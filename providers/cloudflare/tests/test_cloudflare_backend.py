"""What is Cloudflare's own in CloudflareBackend, through the fake Worker: how a spec maps onto the
Worker's API, idempotent creates, sandboxes whose container stopped or whose TTL passed, ports,
snapshots, output past one response's share, the Worker's timeout backstop and byte-exact
quoting."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from agent_sandbox_cloudflare import CloudflareBackend, CloudflareOptions
from fake_bridge import FakeWorker, serve

from agent_sandbox import Sandbox
from agent_sandbox import labels as _labels
from agent_sandbox.errors import (
    AuthenticationError,
    ConfigError,
    FileNotFound,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    SandboxNotFound,
    Unsupported,
)
from agent_sandbox.models import NetworkPolicy, SandboxSpec, StartOptions
from agent_sandbox.process import ProcessHandle

pytestmark = pytest.mark.anyio
MiB = 1024 * 1024


@pytest.fixture
async def sandbox(backend: CloudflareBackend) -> AsyncIterator[Sandbox]:
    sb = await Sandbox.create(backend=backend, ttl_seconds=600)
    try:
        yield sb
    finally:
        await sb.destroy()


def _sessions(fake: FakeWorker, path: str) -> int:
    return sum(1 for method, p in fake.requests if method == "POST" and p == path)


async def test_env_and_workdir_go_through_the_bridge_session(
    fake_worker: FakeWorker, backend: CloudflareBackend
) -> None:
    sb = await Sandbox.create(
        backend=backend, env={"GREETING": "hé 'x' $y"}, workdir="/home/sandbox/project"
    )
    try:
        session = fake_worker.boxes[sb.id].sessions["asb"]
        assert session.env == {"GREETING": "hé 'x' $y"}
        assert session.cwd == "/home/sandbox/project"
        assert _sessions(fake_worker, f"/v1/sandbox/{sb.id}/session") == 1
        r = await sb.exec('printf "%s|" "$GREETING"; pwd')
        assert r.stdout == "hé 'x' $y|/home/sandbox/project\n"
        again = await backend.connect(sb.id)
        assert again.workdir == "/home/sandbox/project"
        assert _labels.WORKDIR not in again.labels
    finally:
        await sb.destroy()


async def test_a_lost_create_answer_is_retried_without_a_second_sandbox(
    fake_worker: FakeWorker, backend: CloudflareBackend
) -> None:
    label = {"asb-test": uuid.uuid4().hex}
    fake_worker.fail_next("POST", "/asb/v1/sandboxes", 502, "pool_error", after_effect=True)
    sb = await Sandbox.create(backend=backend, labels=label)
    try:
        assert [i.id for i in await backend.list(label)] == [sb.id]
        assert (await sb.exec("echo ok")).stdout == "ok\n"
    finally:
        await sb.destroy()


async def test_a_create_that_fails_after_the_record_leaves_nothing(
    fake_worker: FakeWorker, backend: CloudflareBackend
) -> None:
    label = {"asb-test": uuid.uuid4().hex}
    fake_worker.fail_next("POST", "/v1/sandbox/", 502, "session_error", "session create failed")
    with pytest.raises(ProviderUnavailable, match="session create failed"):
        await Sandbox.create(backend=backend, labels=label)
    assert await backend.list(label) == []


async def test_full_capacity_is_a_retryable_quota_error(tmp_path: Path) -> None:
    with serve(max_instances=1) as fake:
        options = CloudflareOptions(
            url=fake.url, api_key=fake.api_key, create_attempts=2, retry_backoff_seconds=0.01
        )
        backend = CloudflareBackend(options)
        first = await Sandbox.create(backend=backend)
        try:
            with pytest.raises(QuotaExceeded) as caught:
                await Sandbox.create(backend=backend)
            assert caught.value.retryable
            assert "max_instances" in str(caught.value)
            assert [i.id for i in await backend.list()] == [first.id]
        finally:
            await first.destroy()
            await backend.aclose()
        assert not fake.violations


async def test_destroying_a_sandbox_whose_container_slept_starts_none() -> None:
    # The bridge's own DELETE gets the id a container first (its pool middleware also matches
    # the bare path): at capacity that is a 503, elsewhere a container started to be destroyed.
    # The Worker answers DELETE itself, looking the container up without starting one.
    with serve(max_instances=1) as fake:
        backend = CloudflareBackend(CloudflareOptions(url=fake.url, api_key=fake.api_key))
        slept = await Sandbox.create(backend=backend)
        fake.stop_container(slept.id)
        busy = await Sandbox.create(backend=backend)  # the one container there may be
        try:
            await slept.destroy()
            assert [i.id for i in await backend.list()] == [busy.id]
            assert (await busy.exec("echo still here")).stdout == "still here\n"
        finally:
            await busy.destroy()
            await backend.aclose()
        assert not fake.violations


async def test_credentials_and_the_worker_are_checked(fake_worker: FakeWorker) -> None:
    wrong = CloudflareBackend(CloudflareOptions(url=fake_worker.url, api_key="not-the-key"))
    with pytest.raises(AuthenticationError):
        await wrong.list()
    await wrong.aclose()
    nowhere = CloudflareBackend(CloudflareOptions())
    with pytest.raises(ConfigError, match="Worker's URL"):
        await nowhere.list()
    fake_worker.plain_bridge = True
    try:
        plain = CloudflareBackend(
            CloudflareOptions(url=fake_worker.url, api_key=fake_worker.api_key)
        )
        with pytest.raises(ConfigError, match="providers/cloudflare/worker"):
            await plain.list()
        await plain.aclose()
    finally:
        fake_worker.plain_bridge = False


@pytest.mark.parametrize(
    "spec",
    [
        SandboxSpec(image="python:3.12"),
        SandboxSpec(cpus=2),
        SandboxSpec(memory_mib=512),
        SandboxSpec(disk_mib=1024),
        SandboxSpec(network=NetworkPolicy(mode="none")),
        SandboxSpec(user="root"),
    ],
)
async def test_what_the_worker_cannot_honour_is_refused_before_any_request(
    fake_worker: FakeWorker, backend: CloudflareBackend, spec: SandboxSpec
) -> None:
    before = len(fake_worker.requests)
    with pytest.raises(Unsupported):
        await backend.create(spec)
    assert len(fake_worker.requests) == before


async def test_a_sandbox_whose_container_stopped_is_gone(
    fake_worker: FakeWorker, backend: CloudflareBackend
) -> None:
    sb = await Sandbox.create(backend=backend)
    await sb.write_file("kept.txt", b"x")
    fake_worker.stop_container(sb.id)  # what idling past the sleep timeout does
    with pytest.raises(SandboxNotFound, match="container stopped"):
        await sb.exec("cat kept.txt")
    with anyio.fail_after(10):
        while True:  # the Worker destroys it and forgets it on the way
            try:
                await backend.connect(sb.id)
            except SandboxNotFound:
                break
            await anyio.sleep(0.05)
    await sb.destroy()


async def test_expired_sandboxes_are_listed_stopped_until_destroyed(
    fake_worker: FakeWorker, backend: CloudflareBackend
) -> None:
    label = {"asb-test": uuid.uuid4().hex}
    short = await Sandbox.create(backend=backend, labels=label, ttl_seconds=1)
    await anyio.sleep(1.2)
    with pytest.raises(SandboxNotFound, match="expired"):
        await backend.connect(short.id)
    listed = await backend.list(label)
    assert [(i.id, i.state) for i in listed] in ([(short.id, "stopped")], [])
    fake_worker.cron()  # the Worker's scheduled sweep
    assert await backend.list(label) == []
    assert short.id not in fake_worker.boxes


async def test_idle_timeout_is_the_containers_sleep(backend: CloudflareBackend) -> None:
    sb = await Sandbox.create(backend=backend, idle_timeout_seconds=1800)
    try:
        assert sb.info.metadata["idle_timeout_seconds"] == "1800.0"
    finally:
        await sb.destroy()


async def test_expose_port_through_the_tunnel_route(sandbox: Sandbox) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await sandbox.start(["python3", "-m", "http.server", str(port), "-b", "127.0.0.1"])
    try:
        await sandbox.write_file("/workspace/hello.txt", b"through the tunnel")
        url = await sandbox.expose_port(port)
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(30):
                while True:
                    try:
                        answer = await client.get(f"{url}/hello.txt")
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.1)
        assert answer.text == "through the tunnel"
        for bad in (80, 3000, 70000):
            with pytest.raises(ConfigError):
                await sandbox.expose_port(bad)
    finally:
        await server.end()


async def test_snapshots_restore_the_workspace(backend: CloudflareBackend, tmp_path: Path) -> None:
    sb = await Sandbox.create(backend=backend)
    try:
        await sb.write_file("/workspace/src/main.py", b"print('restored')\n")
        snapshot = await sb.snapshot()
    finally:
        await sb.destroy()
    assert (Path(backend.opts.snapshot_dir or "") / f"{snapshot}.tar").is_file()
    again = await Sandbox.create(backend=backend, snapshot=snapshot)
    try:
        assert (await again.exec(["python3", "src/main.py"])).stdout == "restored\n"
    finally:
        await again.destroy()
    with pytest.raises(ConfigError, match="no snapshot"):
        await Sandbox.create(backend=backend, snapshot="cfsnap-" + "0" * 32)
    with pytest.raises(ConfigError, match="not a snapshot"):
        await Sandbox.create(backend=backend, snapshot="../../etc/passwd")


async def test_a_snapshot_past_what_hydrate_takes_is_refused(sandbox: Sandbox) -> None:
    made = await sandbox.exec("head -c 33554432 /dev/urandom > /workspace/big.bin")
    assert made.ok
    with pytest.raises(QuotaExceeded, match="hydrate"):
        await sandbox.snapshot()


async def test_output_past_one_responses_share_is_exact(sandbox: Sandbox) -> None:
    # The Worker carries at most 8 MiB of output per response, then the client follows again.
    data = os.urandom(12 * MiB)
    await sandbox.write_file("blob.bin", data)
    r = await sandbox.exec(["cat", "blob.bin"], output_limit=20 * MiB)
    assert hashlib.sha256(r.stdout_bytes).digest() == hashlib.sha256(data).digest()


async def test_attach_replays_the_output_from_the_start(
    sandbox: Sandbox, cloudflare_options: CloudflareOptions
) -> None:
    proc = await sandbox.start("echo one; echo two >&2; sleep 60")
    other = CloudflareBackend(cloudflare_options)
    try:
        seen = b""
        async for event in proc:
            seen += event.data
            if b"two" in seen:
                break
        again = await Sandbox.connect(sandbox.id, backend=other)
        attached = await again.attach(proc.ref)
        replay: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        async for event in attached:
            replay[event.kind] += event.data
            if replay["stdout"] and replay["stderr"]:
                break
        assert replay == {"stdout": b"one\n", "stderr": b"two\n"}
        await attached.kill()
    finally:
        await proc.end()
        await other.aclose()


async def test_the_workers_timeout_backstop_kills_an_abandoned_process(
    fake_worker: FakeWorker, sandbox: Sandbox
) -> None:
    # A client that dies mid-command: the Worker's own timeout ends the process tree.
    async with httpx.AsyncClient(base_url=fake_worker.url) as client:
        headers = {"Authorization": f"Bearer {fake_worker.api_key}"}
        body = {"ref": "p-abandoned", "argv": ["sleep", "60"], "timeout_ms": 1000, "detached": True}
        async with client.stream(
            "POST", f"/asb/v1/sandboxes/{sandbox.id}/processes", json=body, headers=headers
        ) as answer:
            assert answer.status_code == 200
        with anyio.fail_after(20):
            while True:
                listed = {p.ref: p for p in await sandbox.processes()}
                if not listed["p-abandoned"].running:
                    break
                await anyio.sleep(0.2)
    assert listed["p-abandoned"].exit_code == 137


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "two\nlines",
        "tab\there",
        "back\\slash",
        'quote\'s "double"',
        "$HOME `x` $(id)",
        "ünï 🎉",
    ],
)
async def test_arguments_and_environment_arrive_exactly(sandbox: Sandbox, arg: str) -> None:
    r = await sandbox.exec(["printf", "%s|%s", arg, "end"], env={"ODD-NAME": arg})
    assert r.stdout == f"{arg}|end"
    env = await sandbox.exec(["printenv", "ODD-NAME"], env={"ODD-NAME": arg})
    assert env.stdout == (f"{arg}\n" if arg else "\n")


async def test_a_missing_working_directory_is_file_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(FileNotFound):
        await sandbox.exec("pwd", cwd="/no/such/dir")


async def test_the_bridges_own_exec_route_loses_bytes(
    fake_worker: FakeWorker, sandbox: Sandbox
) -> None:
    """Why the provider runs processes through the Worker's own route: the bridge's exec route
    delivers output as UTF-8 lines (routes.ts, session.ts), so bytes are replaced and a last
    line gains a newline -- where the provider's route is byte-exact."""
    async with httpx.AsyncClient(base_url=fake_worker.url) as client:
        headers = {"Authorization": f"Bearer {fake_worker.api_key}"}
        body = {"argv": ["printf", "\\377out"]}
        async with client.stream(
            "POST", f"/v1/sandbox/{sandbox.id}/exec", json=body, headers=headers
        ) as answer:
            lines = [line async for line in answer.aiter_lines()]
    chunks = [line[6:] for line in lines if line.startswith("data: ") and "exit_code" not in line]
    assert b"".join(base64.b64decode(c) for c in chunks) == "\ufffdout\n".encode()
    exact = await sandbox.exec(["printf", "\\377out"])
    assert exact.stdout_bytes == b"\xffout"


async def test_the_fake_refuses_what_the_bridges_document_forbids(
    fake_worker: FakeWorker, sandbox: Sandbox
) -> None:
    headers = {"Authorization": f"Bearer {fake_worker.api_key}"}
    async with httpx.AsyncClient(base_url=fake_worker.url, headers=headers) as client:
        low_port = await client.post(f"/v1/sandbox/{sandbox.id}/tunnel/80")
        assert (low_port.status_code, low_port.json()["code"]) == (400, "invalid_request")
        bad_env = await client.post(
            f"/v1/sandbox/{sandbox.id}/session", json={"id": "x", "env": {"A": 1}}
        )
        assert bad_env.status_code == 400
        bad_id = await client.post("/v1/sandbox/NOT-BASE32/exec", json={"argv": ["true"]})
        assert bad_id.json() == {"error": "Invalid sandbox ID format", "code": "invalid_request"}
        unknown_field = await client.post("/asb/v1/sandboxes", json={"ttl": 5})
        assert unknown_field.status_code == 400
    async with httpx.AsyncClient(base_url=fake_worker.url) as anonymous:
        assert (await anonymous.delete(f"/v1/sandbox/{sandbox.id}")).status_code == 401
        assert (await anonymous.get("/asb/v1/sandboxes")).status_code == 401
    document = json.loads((Path(__file__).parent / "bridge-openapi-0.12.10.json").read_text())
    assert document["openapi"] == "3.1.0"


@pytest.mark.parametrize(
    ("head", "flood"),
    [
        (b"event: stdout\ndata: ", b"A" * 65536),
        (b"event: stdout\n", b"data: " + b"A" * 65530 + b"\n"),
    ],
    ids=["one endless line", "endless data of one event"],
)
async def test_an_endless_event_is_refused_without_being_buffered(
    head: bytes, flood: bytes
) -> None:
    # A process can write into its runner's output (same user: /proc/<runner>/fd/1), so the
    # lines the Worker relays are the sandbox's: a stand-in for the Worker floods one event.
    sent = 0

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(b'event: start\ndata: {"ref": "p-0"}\n\n' + head)
        try:
            while sent < 64 * MiB:
                writer.write(flood)
                await writer.drain()
                sent += len(flood)
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(worker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = CloudflareBackend(CloudflareOptions(url=f"http://127.0.0.1:{port}", api_key="k"))

    async def read_all(handle: ProcessHandle) -> None:
        while await handle.read() is not None:
            pass

    try:
        with anyio.fail_after(30):
            handle = await backend.start("a" * 26, ["true"], StartOptions())
            with pytest.raises(ProviderError, match="too long"):
                await read_all(handle)
            await handle.close()
    finally:
        await backend.aclose()
        server.close()
        await server.wait_closed()
    assert sent < 8 * MiB  # the bound plus what the sockets hold, not the flood
