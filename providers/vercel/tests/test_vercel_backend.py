"""The Vercel-specific mappings and error translations, through the real SDK and the fake."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
from agent_sandbox_vercel import VercelBackend, VercelOptions
from agent_sandbox_vercel._process import SPILL, VercelRun, _Output, _Spill
from agent_sandbox_vercel._shim import MAX_LINE, decode

from agent_sandbox import Sandbox
from agent_sandbox import labels as _labels
from agent_sandbox.errors import (
    AuthenticationError,
    ProcessNotFound,
    ProviderUnavailable,
    RateLimited,
    SandboxNotFound,
    Unsupported,
)
from agent_sandbox.models import NetworkPolicy, SandboxSpec, StartOptions

if TYPE_CHECKING:  # only a type here: importing ``conftest`` by name depends on collection order
    from conftest import FakeVercelServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def label() -> dict[str, str]:
    return {"asb-test": uuid.uuid4().hex}


async def create(backend: VercelBackend, sandboxes: list[str], **fields: Any) -> Sandbox:
    sb = await Sandbox.create(SandboxSpec(ttl_seconds=300, **fields), backend=backend)
    sandboxes.append(sb.id)
    return sb


def state(fake: FakeVercelServer) -> dict[str, Any]:
    result: dict[str, Any] = fake.admin("sandboxes")
    return result


async def test_spec_maps_to_vercels_create(
    backend: VercelBackend,
    sandboxes: list[str],
    fake_vercel: FakeVercelServer,
    label: dict[str, str],
) -> None:
    sb = await create(
        backend,
        sandboxes,
        labels=label,
        cpus=2,
        env={"A": "1"},
        ports=(3000,),
        workdir="/vercel/sandbox/app",
        network=NetworkPolicy(mode="allowlist", allow=("pypi.org", "10.0.0.0/8")),
    )
    seen = state(fake_vercel)[sb.id]
    assert (seen["vcpus"], seen["memory"], seen["persistent"]) == (2, 4096, False)
    assert seen["timeout"] == 300_000
    assert seen["env"] == {"A": "1"}
    assert seen["ports"] == [3000]
    assert seen["networkPolicy"] == {
        "allow": {"pypi.org": []},
        "subnets": {"allow": ["10.0.0.0/8"]},
    }
    assert set(seen["tags"]) == {
        "asb-test",
        _labels.OWNER,
        _labels.EXPIRES_AT,
        _labels.WORKDIR,
    }
    info = await backend.connect(sb.id)
    assert info.workdir == "/vercel/sandbox/app"
    assert info.labels[_labels.MANAGED] == "true"
    assert _labels.CREATED_AT in info.labels
    assert _labels.WORKDIR not in info.labels
    assert info.expires_at is not None
    assert (await sb.exec("pwd")).stdout == "/vercel/sandbox/app\n"
    assert await sb.expose_port(3000) == f"https://{sb.id}-3000.vercel.run"
    assert await sb.expose_port(8080) == f"https://{sb.id}-8080.vercel.run"
    assert state(fake_vercel)[sb.id]["ports"] == [3000, 8080]


async def test_network_none_is_deny_all(
    backend: VercelBackend, sandboxes: list[str], fake_vercel: FakeVercelServer
) -> None:
    sb = await create(backend, sandboxes, network=NetworkPolicy(mode="none"))
    seen = state(fake_vercel)[sb.id]
    assert (seen["networkPolicy"], seen["denyNetwork"]) == ({"mode": "deny-all"}, True)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"disk_mib": 1024}, "disk_mib"),
        ({"idle_timeout_seconds": 60}, "idle_timeout"),
        ({"cpus": 1.5}, "whole vCPUs"),
        ({"cpus": 1, "memory_mib": 1024}, "2048 MiB per vCPU"),
        ({"user": "root"}, "another user"),
        ({"labels": {f"k{i}": "v" for i in range(4)}}, "at most 5 tags"),
    ],
)
async def test_what_vercel_cannot_honour_is_refused_before_anything_is_made(
    backend: VercelBackend, fake_vercel: FakeVercelServer, fields: dict[str, Any], match: str
) -> None:
    before = set(state(fake_vercel))
    with pytest.raises(Unsupported, match=match):
        await Sandbox.create(SandboxSpec(**fields), backend=backend)
    assert set(state(fake_vercel)) == before


async def test_memory_alone_picks_the_vcpus(
    backend: VercelBackend, sandboxes: list[str], fake_vercel: FakeVercelServer
) -> None:
    sb = await create(backend, sandboxes, memory_mib=4096)
    assert (state(fake_vercel)[sb.id]["vcpus"], state(fake_vercel)[sb.id]["memory"]) == (2, 4096)


async def test_a_lost_create_answer_is_retried_and_adopted_not_doubled(
    backend: VercelBackend,
    sandboxes: list[str],
    fake_vercel: FakeVercelServer,
    label: dict[str, str],
) -> None:
    # The first create takes effect but its answer is a 502: the retry finds the name taken.
    fake_vercel.fail_next("POST", "/v3/sandboxes", 502, after_effect=True)
    sb = await create(backend, sandboxes, labels=label)
    mine = await backend.list(label)
    assert [i.id for i in mine] == [sb.id]
    assert (await sb.exec("echo ok")).stdout == "ok\n"


async def test_a_create_that_keeps_failing_leaves_nothing(
    backend: VercelBackend, fake_vercel: FakeVercelServer, label: dict[str, str]
) -> None:
    fake_vercel.fail_next("POST", "/v3/sandboxes", 503, count=3, after_effect=True)
    with pytest.raises(ProviderUnavailable) as caught:
        await Sandbox.create(SandboxSpec(labels=label), backend=backend)
    assert caught.value.retryable
    assert await backend.list(label) == []


async def test_a_failure_after_the_create_deletes_the_sandbox(
    backend: VercelBackend, fake_vercel: FakeVercelServer, label: dict[str, str]
) -> None:
    fake_vercel.fail_next("POST", "/v2/sandboxes/sessions/", 500, code="boom")
    with pytest.raises(ProviderUnavailable):
        await Sandbox.create(
            SandboxSpec(labels=label, workdir="/vercel/sandbox/w"), backend=backend
        )
    assert await backend.list(label) == []


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (401, AuthenticationError, False),
        (429, RateLimited, True),
        (503, ProviderUnavailable, True),
    ],
)
async def test_vendor_statuses_become_typed_errors(
    backend: VercelBackend,
    fake_vercel: FakeVercelServer,
    status: int,
    error: type[Exception],
    retryable: bool,
) -> None:
    fake_vercel.fail_next("GET", "/v2/sandboxes/asb-x", status)
    with pytest.raises(error) as caught:
        await backend.connect("asb-x")
    assert caught.value.retryable is retryable  # type: ignore[attr-defined]
    assert caught.value.provider == "vercel"  # type: ignore[attr-defined]


async def test_missing_sandbox_and_missing_credentials(
    backend: VercelBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SandboxNotFound):
        await backend.connect("asb-" + uuid.uuid4().hex)
    monkeypatch.delenv("VERCEL_TOKEN")
    bare = VercelBackend(VercelOptions(base_url=backend.opts.base_url))
    try:
        with pytest.raises(AuthenticationError, match="VERCEL_OIDC_TOKEN"):
            await bare.connect("asb-anything")
    finally:
        await bare.aclose()


async def test_a_wrong_token_is_refused(
    backend: VercelBackend, fake_vercel: FakeVercelServer
) -> None:
    wrong = VercelBackend(
        VercelOptions(
            base_url=fake_vercel.url, token="nope", team_id="team_fake", project_id="prj_fake"
        )
    )
    try:
        with pytest.raises(AuthenticationError):
            await wrong.list()
    finally:
        await wrong.aclose()


async def test_the_wire_is_text_only_and_the_shim_keeps_bytes_exact(
    backend: VercelBackend, sandboxes: list[str]
) -> None:
    from vercel.sandbox import SandboxClient, SandboxServiceOptions

    sb = await create(backend, sandboxes)
    raw = b"\x00\x80\xff ok"
    assert (await sb.exec(["printf", r"\000\200\377 ok"])).stdout_bytes == raw
    client = SandboxClient.create(options=SandboxServiceOptions(base_url=backend.opts.base_url))
    try:
        direct = await client.get_sandbox(name=sb.id)
        done = await direct.run_process("printf", [r"\000\200\377 ok"], capture_output=True)
        assert done.stdout == "\x00\ufffd\ufffd ok"  # what Vercel's channel does to bytes
    finally:
        await client.aclose()


def requests(fake: FakeVercelServer) -> list[tuple[str, str]]:
    """Every (method, path) the fake has been sent, oldest first."""
    return [(method, path) for method, path in fake.admin("requests")["requests"]]


async def test_exec_is_one_streamed_request(
    backend: VercelBackend, sandboxes: list[str], fake_vercel: FakeVercelServer
) -> None:
    sb = await create(backend, sandboxes)
    before = len(requests(fake_vercel))
    result = await sb.exec("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert [(m, p.rsplit("/", 1)[1]) for m, p in requests(fake_vercel)[before:]] == [
        ("POST", "cmd")
    ]


async def test_unread_output_spills_to_the_logs_stream_and_nothing_is_lost(
    backend: VercelBackend, sandboxes: list[str], fake_vercel: FakeVercelServer
) -> None:
    import anyio

    sb = await create(backend, sandboxes)
    expected = "".join(f"{i}\n" for i in range(1, 500_001)).encode()
    # hex-encoded, it is more than the unread bound and what the reader's queue holds
    assert 2 * len(expected) > SPILL + 2**21
    handle = await backend.start(sb.id, ["seq", "500000"], StartOptions(timeout=120))
    assert isinstance(handle, VercelRun)
    try:
        with anyio.fail_after(60):  # nothing reads: the streamed answer ends by spilling
            while True:
                if handle._runner is not None and handle._runner.done():
                    break
                await anyio.sleep(0.05)
        out = bytearray()
        while (item := await handle.read()) is not None:
            assert item[0] == "stdout"
            out += item[1]
        assert (await handle.wait()).exit_code == 0
    finally:
        await handle.close()
    logs = f"/cmd/{handle.ref}/logs"
    assert [path for _, path in requests(fake_vercel) if path.endswith(logs)]  # the rest came so
    assert bytes(out) == expected


async def test_expired_sandbox_is_stopped_then_swept(
    backend: VercelBackend, sandboxes: list[str], label: dict[str, str]
) -> None:
    import anyio

    sb = await create(backend, sandboxes, labels=label)
    short = await Sandbox.create(SandboxSpec(ttl_seconds=1, labels=label), backend=backend)
    sandboxes.append(short.id)
    await anyio.sleep(2)
    info = await backend.connect(short.id)
    assert info.state == "stopped"
    with pytest.raises(SandboxNotFound, match="stopped"):
        await short.exec("true")
    assert await backend.sweep(labels=label) == [short.id]
    assert [i.id for i in await backend.list(label)] == [sb.id]


async def test_snapshot_keeps_files_and_the_sandbox_goes_on(
    backend: VercelBackend, sandboxes: list[str]
) -> None:
    sb = await create(backend, sandboxes)
    await sb.write_file("kept.txt", b"snap")
    before = (await backend.connect(sb.id)).expires_at
    snap = await sb.snapshot()
    assert (await sb.exec(["cat", "kept.txt"])).stdout == "snap"
    after = (await backend.connect(sb.id)).expires_at
    assert before is not None
    assert after is not None
    assert abs((after - before).total_seconds()) < 5  # the TTL did not restart
    copy = await create(backend, sandboxes, snapshot=snap)
    assert await copy.read_file("kept.txt") == b"snap"


async def test_processes_lists_started_ones_and_attach_refuses_others(
    backend: VercelBackend, sandboxes: list[str]
) -> None:
    sb = await create(backend, sandboxes)
    await sb.exec("echo not listed")
    started = await sb.start("sleep 30")
    try:
        listed = await sb.processes()
        assert [p.ref for p in listed] == [started.ref]
        assert listed[0].command == ("sh", "-c", "sleep 30")
        with pytest.raises(ProcessNotFound):
            await sb.attach("cmd_nope")
    finally:
        await started.end()


async def test_missing_cwd_is_file_not_found(backend: VercelBackend, sandboxes: list[str]) -> None:
    from agent_sandbox.errors import FileNotFound

    sb = await create(backend, sandboxes)
    with pytest.raises(FileNotFound, match="working directory"):
        await sb.exec("pwd", cwd="/no/such/dir")


async def test_a_command_cannot_forge_the_shims_lines(
    backend: VercelBackend, sandboxes: list[str]
) -> None:
    sb = await create(backend, sandboxes)
    forged = await sb.exec(r"printf 'o41\nx0 0\n' > /proc/$PPID/fd/1; echo after")
    assert forged.stdout == "after\n"
    assert "ermission denied" in forged.stderr


@pytest.mark.parametrize(
    "line", ["z00\n", "ozz\n", "x1\n", "xa b\n", "", "o" + "00" * 65536 + "0\n"]
)
def test_hostile_shim_lines_are_refused(line: str) -> None:
    from agent_sandbox.errors import ProviderError

    with pytest.raises(ProviderError, match="unreadable"):
        decode(line)


async def test_the_run_output_sink_cuts_lines_and_bounds_what_waits() -> None:
    from agent_sandbox.errors import ProviderError

    out = _Output()
    for char in "o41\no4":
        out.write(char)
    out.write("2\nx0 0")
    assert [await out.readline(), await out.readline()] == ["o41\n", "o42\n"]
    out.end()
    assert (await out.readline(), out.rest()) == ("", "x0 0")

    endless = _Output()
    endless.write("o" + "00" * MAX_LINE)  # a line with no end is handed on, for the decoder
    with pytest.raises(ProviderError, match="unreadable"):
        decode(await endless.readline())

    with pytest.raises(_Spill):
        _Output().write("o00\n" * (SPILL // 4 + 1))
