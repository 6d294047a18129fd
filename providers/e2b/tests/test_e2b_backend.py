"""E2B-specific mappings of E2BBackend, checked against what reaches the fake E2B."""

from __future__ import annotations

import uuid

import anyio
import pytest
from agent_sandbox_e2b import E2BBackend, E2BOptions
from fake_e2b import FakeE2B

from agent_sandbox import Sandbox
from agent_sandbox.errors import (
    CommandTimeout,
    ConfigError,
    ProviderError,
    SandboxNotFound,
    Unsupported,
)
from agent_sandbox.labels import CREATE_KEY
from agent_sandbox.models import ExecOptions, NetworkPolicy, SandboxSpec
from agent_sandbox.process import ExitStatus, from_shell
from agent_sandbox.testing._processes import HEARTBEAT, assert_stops_growing

pytestmark = pytest.mark.anyio


def _last_create(fake: FakeE2B) -> dict:
    return fake.create_bodies[-1]


async def test_spec_maps_to_the_create_request(
    fake_e2b: FakeE2B, backend: E2BBackend, sandboxes: list[str]
) -> None:
    spec = SandboxSpec(env={"A": "1"}, labels={"team": "x"}, ttl_seconds=90.2)
    info = await backend.create(spec)
    sandboxes.append(info.id)
    body = _last_create(fake_e2b)
    assert body["templateID"] == "base"
    assert body["timeout"] == 91  # whole seconds, rounded up: never shorter than asked
    assert body["envVars"] == {"A": "1"}
    assert body["metadata"]["team"] == "x"
    assert CREATE_KEY in body["metadata"]
    assert "allow_internet_access" not in body
    assert "network" not in body
    assert info.labels == {"team": "x"}  # bookkeeping labels stay hidden
    assert info.workdir == "/home/user"
    assert info.expires_at is not None
    assert info.created_at is not None
    described = await backend.connect(info.id)
    assert (described.labels, described.state, described.image) == (
        {"team": "x"},
        "running",
        "base",
    )
    # the SDK's default user and our exec env both arrive
    r = await backend.exec(info.id, 'printf "%s %s" "$A" "$(id -un)"', ExecOptions())
    assert r.stdout == "1 user"


async def test_network_policies_map_to_e2b_options(
    fake_e2b: FakeE2B, backend: E2BBackend, sandboxes: list[str]
) -> None:
    none = await backend.create(SandboxSpec(network=NetworkPolicy(mode="none")))
    sandboxes.append(none.id)
    assert _last_create(fake_e2b)["allow_internet_access"] is False
    allow = await backend.create(
        SandboxSpec(network=NetworkPolicy(mode="allowlist", allow=("10.1.2.0/24", "pypi.org")))
    )
    sandboxes.append(allow.id)
    assert _last_create(fake_e2b)["network"] == {
        "allowOut": ["10.1.2.0/24", "pypi.org"],
        "denyOut": ["0.0.0.0/0"],
    }


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"cpus": 2}, "cpus"),
        ({"memory_mib": 1024}, "memory"),
        ({"disk_mib": 4096}, "disk_mib"),
        ({"idle_timeout_seconds": 60}, "idle_timeout"),
    ],
)
async def test_template_defined_resources_are_unsupported(
    fake_e2b: FakeE2B, backend: E2BBackend, fields: dict, what: str
) -> None:
    before = len(fake_e2b.create_bodies)
    with pytest.raises(Unsupported, match=what):
        await backend.create(SandboxSpec(**fields))
    assert len(fake_e2b.create_bodies) == before  # refused before anything was sent


async def test_workdir_and_user_survive_a_reconnect(
    e2b_options: E2BOptions, backend: E2BBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec(workdir="/srv/app", user="root"))
    sandboxes.append(info.id)
    assert info.workdir == "/srv/app"
    other = E2BBackend(e2b_options)
    try:
        again = await other.connect(info.id)
        assert again.workdir == "/srv/app"
        r = await other.exec(info.id, "id -un; pwd", ExecOptions(cwd=again.workdir))
        assert r.stdout == "root\n/srv/app\n"
        as_user = await other.exec(info.id, ["id", "-un"], ExecOptions(user="user"))
        assert as_user.stdout == "user\n"
    finally:
        await other.aclose()


async def test_connect_from_another_backend_keeps_the_ttl(
    fake_e2b: FakeE2B, e2b_options: E2BOptions, backend: E2BBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec(ttl_seconds=120))
    sandboxes.append(info.id)
    end_before = fake_e2b.sandboxes[info.id].end_at
    other = E2BBackend(e2b_options)
    try:
        assert (await other.exec(info.id, ["true"], ExecOptions())).ok
    finally:
        await other.aclose()
    # E2B's connect defaults to 300 s and would have extended a 120 s sandbox.
    assert fake_e2b.sandboxes[info.id].end_at == end_before


async def test_signal_deaths_become_128_plus_n(backend: E2BBackend, sandboxes: list[str]) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    r = await backend.exec(info.id, "kill -SEGV $$", ExecOptions())
    assert (r.exit_code, r.signal) == (139, 11)
    # The supervisor reports what a shell would: a plain "exit 139" reads as signal 11 too.
    assert from_shell(139) == ExitStatus(139, 11)
    assert from_shell(2) == ExitStatus(2)
    assert from_shell(255) == ExitStatus(255)


async def test_timeout_raises_with_partial_output(
    backend: E2BBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    nap = f"300.{uuid.uuid4().int % 10**9}"  # a sleep no other process on this machine runs
    with pytest.raises(CommandTimeout) as caught:
        # a child in a session of its own still dies: the kill goes by the command's env mark
        await backend.exec(
            info.id, f"echo before; setsid sleep {nap} & sleep {nap}", ExecOptions(timeout=1)
        )
    assert caught.value.stdout == b"before\n"
    assert caught.value.provider == "e2b"
    left = await backend.exec(info.id, ["pgrep", "-f", f"^sleep {nap}"], ExecOptions())
    assert (left.exit_code, left.stdout) == (1, "")  # pgrep: nothing matched


async def test_timeout_kills_children_of_another_user_with_a_cleared_environment(
    backend: E2BBackend, sandboxes: list[str]
) -> None:
    """The shape of ``sudo``: a child under another identity whose environment was reset (the
    fake has no setuid helper, so root drops to ``user`` here); the kill runs as root."""
    sb = await Sandbox.create(backend=backend)
    sandboxes.append(sb.id)
    await sb.write_file("/tmp/heartbeat.sh", HEARTBEAT)
    script = (
        "setpriv --reuid=1000 --regid=1000 --clear-groups env -i /bin/sh /tmp/heartbeat.sh "
        "/tmp/beats.txt </dev/null >/dev/null 2>&1 & echo started; sleep 60"
    )
    with pytest.raises(CommandTimeout):
        await sb.exec(script, timeout=3, user="root")
    owner = await sb.exec(["stat", "-c", "%U", "/tmp/beats.txt"])
    assert owner.stdout == "user\n"
    await assert_stops_growing(sb, "/tmp/beats.txt")


async def test_exec_returns_when_the_command_ends_even_if_a_child_holds_stdout(
    backend: E2BBackend, sandboxes: list[str]
) -> None:
    """envd keeps a command's stream open while anything holds its stdout; the supervisor ends
    what the command left behind, so ``exec("server &")`` returns."""
    sb = await Sandbox.create(backend=backend)
    sandboxes.append(sb.id)
    with anyio.fail_after(30):
        result = await sb.exec("sleep 300 & echo served")
    assert (result.exit_code, result.stdout) == (0, "served\n")


async def test_forged_process_records_are_skipped(
    backend: E2BBackend, sandboxes: list[str]
) -> None:
    """The records ``processes()`` reads are written inside the sandbox, where any command may
    forge them: bad base64, a start time no clock reaches, a status no process exits with."""
    sb = await Sandbox.create(backend=backend)
    sandboxes.append(sb.id)
    async with await sb.start(["sleep", "30"]) as real:
        forge = (
            "cd /tmp/.agent-sandbox && for r in 1 2 3; do printf 'x\\0' > asb-000000000000000$r.argv; "
            "done && echo '0 abc' > asb-0000000000000001.exit && echo 99999 > "
            "asb-0000000000000002.exit && touch -d @300000000000 asb-0000000000000003.argv"
        )
        assert (await sb.exec(forge)).ok
        listed = {p.ref: (p.command, p.running) for p in await sb.processes()}
        assert listed.pop(real.ref) == (("sleep", "30"), True)
        # Where the filesystem keeps that time it is skipped; where it clamps it, the record is
        # well formed (and, unknown to envd, ended).
        assert listed in ({}, {"asb-0000000000000003": (("x",), False)})


async def test_exec_streams_through_the_handle(backend: E2BBackend, sandboxes: list[str]) -> None:
    sb = await Sandbox.create(backend=backend)
    sandboxes.append(sb.id)
    kinds = [e.kind async for e in sb.exec_stream("echo a; echo b >&2")]
    assert kinds[-1] == "exit"
    assert set(kinds[:-1]) == {"stdout", "stderr"}


async def test_snapshot_then_create_from_it(
    fake_e2b: FakeE2B, backend: E2BBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    await backend.write_file(info.id, "/home/user/state.txt", b"snapshotted")
    snap = await backend.snapshot(info.id)
    try:
        clone = await backend.create(SandboxSpec(snapshot=snap))
        sandboxes.append(clone.id)
        assert _last_create(fake_e2b)["templateID"] == snap
        assert await backend.read_file(clone.id, "/home/user/state.txt") == b"snapshotted"
    finally:
        from e2b import AsyncSandbox

        await AsyncSandbox.delete_snapshot(snap, api_key=fake_e2b.api_key, api_url=fake_e2b.url)


async def test_pause_and_resume(backend: E2BBackend, sandboxes: list[str]) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    await backend.write_file(info.id, "/tmp/kept", b"still here")
    await backend.pause(info.id)
    assert (await backend.connect(info.id)).state == "paused"
    with pytest.raises(ProviderError, match="paused"):
        await backend.exec(info.id, ["true"], ExecOptions())
    await backend.resume(info.id)
    assert (await backend.connect(info.id)).state == "running"
    assert await backend.read_file(info.id, "/tmp/kept") == b"still here"


async def test_expose_port_is_the_e2b_host(backend: E2BBackend, sandboxes: list[str]) -> None:
    info = await backend.create(SandboxSpec(ports=(8080,)))
    sandboxes.append(info.id)
    assert await backend.expose_port(info.id, 8080) == f"https://8080-{info.id}.e2b.local"


async def test_list_filters_by_labels(backend: E2BBackend, sandboxes: list[str]) -> None:
    tag = uuid.uuid4().hex
    a = await backend.create(SandboxSpec(labels={"t": tag, "role": "a b&c=d"}))
    sandboxes.append(a.id)
    b = await backend.create(SandboxSpec(labels={"t": tag, "role": "other"}))
    sandboxes.append(b.id)
    assert {i.id for i in await backend.list({"t": tag})} == {a.id, b.id}
    assert [i.id for i in await backend.list({"t": tag, "role": "a b&c=d"})] == [a.id]


def _fake_options(fake: FakeE2B) -> dict[str, str]:
    return {
        "api_key": fake.api_key,
        "api_url": fake.url,
        "sandbox_url": fake.url,
        "domain": "e2b.local",
    }


async def test_chosen_by_name_through_the_registry(fake_e2b: FakeE2B) -> None:
    async with await Sandbox.create(provider="e2b", options=_fake_options(fake_e2b)) as sb:
        assert sb.provider == "e2b"
        assert isinstance(sb.backend, E2BBackend)
        assert (await sb.exec(["echo", "by name"])).stdout == "by name\n"
    with pytest.raises(ConfigError, match="no_such_option"):
        await Sandbox.create(provider="e2b", options={"no_such_option": 1})


async def test_workdir_is_the_templates(
    e2b_options: E2BOptions, backend: E2BBackend, sandboxes: list[str]
) -> None:
    """envd starts commands in the template's WORKDIR (``/init``'s ``defaultWorkdir``): the
    sandbox's workdir is read from inside it, not assumed."""
    info = await backend.create(SandboxSpec(image="web-app"))
    sandboxes.append(info.id)
    assert info.workdir == "/srv/app"
    other = E2BBackend(e2b_options)
    try:
        sb = await Sandbox.connect(info.id, backend=other)
        assert sb.info.workdir == "/srv/app"
        await sb.write_file("here.txt", b"x")
        assert (await sb.exec(["ls", "/srv/app"])).stdout == "here.txt\n"
    finally:
        await other.aclose()


async def test_a_large_write_is_streamed_under_a_deadline_that_grows_with_it(
    fake_e2b: FakeE2B, e2b_options: E2BOptions, sandboxes: list[str]
) -> None:
    """8 MiB at 4 MiB/s takes two seconds, twice the request timeout: the upload is streamed
    (octet-stream, in chunks) and its deadline allows for its size."""
    backend = E2BBackend(e2b_options.model_copy(update={"request_timeout": 1.0}))
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    data = bytes(range(256)) * (8 * 4096)
    fake_e2b.upload_rate = 4 * 1024 * 1024
    try:
        await backend.write_file(info.id, "/tmp/big.bin", data)
    finally:
        fake_e2b.upload_rate = None
    assert fake_e2b.uploads[-1] == ("/tmp/big.bin", len(data), "octet-stream")
    assert await backend.read_file(info.id, "/tmp/big.bin") == data


async def test_a_paused_sandbox_ends_at_its_ttl_without_a_sweep(
    fake_e2b: FakeE2B, e2b_options: E2BOptions, backend: E2BBackend, sandboxes: list[str]
) -> None:
    """E2B keeps a paused sandbox forever; any later list, connect, resume or create of this
    provider ends one whose TTL has passed."""
    info = await backend.create(SandboxSpec(ttl_seconds=2, labels=stamped_labels()))
    sandboxes.append(info.id)
    await backend.pause(info.id)
    assert fake_e2b.sandboxes[info.id].state == "paused"
    await anyio.sleep(2.5)
    other = E2BBackend(e2b_options)
    try:
        keeper = await other.create(SandboxSpec(labels=stamped_labels()))
        sandboxes.append(keeper.id)
        with anyio.fail_after(20):  # the create ends it in the background
            while True:
                if info.id not in fake_e2b.sandboxes:
                    break
                await anyio.sleep(0.1)
        with pytest.raises(SandboxNotFound):
            await other.resume(info.id)
    finally:
        await other.aclose()


def stamped_labels() -> dict[str, str]:
    """What ``Sandbox.create`` adds: managed, owner, created-at and expires-at."""
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    return {
        "agent-sandbox.managed": "true",
        "agent-sandbox.owner": "e2b-tests@fake",
        "agent-sandbox.created-at": now.isoformat(timespec="seconds"),
        "agent-sandbox.expires-at": (now + timedelta(seconds=2)).isoformat(timespec="seconds"),
    }
