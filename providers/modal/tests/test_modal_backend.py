"""Modal-specific mappings of ModalBackend, checked against what reaches the fake Modal."""

from __future__ import annotations

import uuid

import pytest
from agent_sandbox_modal import ModalBackend, ModalOptions
from agent_sandbox_modal._process import REGISTRY
from fake_modal import FakeModal
from grpclib import Status
from modal_proto import api_pb2

from agent_sandbox import Sandbox
from agent_sandbox import labels as _labels
from agent_sandbox.errors import (
    CommandTimeout,
    ConfigError,
    FileTooLarge,
    ProcessNotFound,
    ProviderUnavailable,
    Unsupported,
)
from agent_sandbox.models import ExecOptions, NetworkPolicy, SandboxSpec, StartOptions

pytestmark = pytest.mark.anyio
BLOCKED = api_pb2.NetworkAccess.NetworkAccessType.BLOCKED
ALLOWLIST = api_pb2.NetworkAccess.NetworkAccessType.ALLOWLIST
OPEN = api_pb2.NetworkAccess.NetworkAccessType.OPEN


def _last_create(fake: FakeModal) -> api_pb2.SandboxCreateV2Request:
    return fake.create_requests[-1]


def _env(request: api_pb2.SandboxCreateV2Request) -> dict[str, str]:
    found: dict[str, str] = {}
    for source in request.secret_sources:
        found.update(source.env.contents)
    return found


async def test_spec_maps_to_the_create_request(
    fake_modal: FakeModal, backend: ModalBackend, sandboxes: list[str]
) -> None:
    spec = SandboxSpec(
        env={"A": "1"},
        labels={"team": "x"},
        ttl_seconds=90.2,
        idle_timeout_seconds=30,
        cpus=0.5,
        memory_mib=768,
        workdir="/srv/app",
    )
    info = await backend.create(spec)
    sandboxes.append(info.id)
    request = _last_create(fake_modal)
    definition = request.definition
    assert definition.timeout_secs == 91  # whole seconds, rounded up: never shorter than asked
    assert definition.idle_timeout_secs == 30
    assert definition.workdir == "/srv/app"
    assert (definition.resources.milli_cpu, definition.resources.memory_mb) == (500, 768)
    assert definition.network_access.network_access_type == OPEN
    assert _env(request) == {"A": "1"}
    tags = {t.tag_name: t.tag_value for t in request.tags}
    assert tags["team"] == "x"
    assert tags[_labels.WORKDIR] == "/srv/app"
    assert definition.name == f"asb-{tags[_labels.CREATE_KEY]}"  # the name a retry finds
    assert info.labels["team"] == "x"
    assert _labels.CREATE_KEY not in info.labels  # bookkeeping tags stay hidden
    assert (info.workdir, info.state, info.metadata["app"]) == (
        "/srv/app",
        "running",
        "agent-sandbox",
    )
    r = await backend.exec(info.id, 'printf "%s %s %s" "$A" "$(id -u)" "$PWD"', ExecOptions())
    assert r.stdout == "1 0 /srv/app"  # Modal runs commands as the image's root


async def test_network_policies_map_to_modal_arguments(
    fake_modal: FakeModal, backend: ModalBackend, sandboxes: list[str]
) -> None:
    none = await backend.create(SandboxSpec(network=NetworkPolicy(mode="none")))
    sandboxes.append(none.id)
    assert _last_create(fake_modal).definition.network_access.network_access_type == BLOCKED
    allow = await backend.create(
        SandboxSpec(
            network=NetworkPolicy(mode="allowlist", allow=("10.1.2.3", "10.9.0.0/16", "pypi.org"))
        )
    )
    sandboxes.append(allow.id)
    access = _last_create(fake_modal).definition.network_access
    assert access.network_access_type == ALLOWLIST
    assert list(access.allowed_cidrs) == ["10.1.2.3/32", "10.9.0.0/16"]
    assert list(access.allowed_domains) == ["pypi.org"]
    only_hosts = await backend.create(
        SandboxSpec(network=NetworkPolicy(mode="allowlist", allow=("pypi.org",)))
    )
    sandboxes.append(only_hosts.id)
    access = _last_create(fake_modal).definition.network_access
    # no CIDR at all, not "every CIDR": Modal reads a missing CIDR list as allow-all
    assert (access.network_access_type, list(access.allowed_cidrs)) == (ALLOWLIST, [])


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"disk_mib": 4096}, "disk_mib"),
        ({"ttl_seconds": 25 * 3600}, "ttl_seconds"),
        ({"user": "nobody"}, "another user"),
    ],
)
async def test_what_modal_cannot_do_is_unsupported(
    fake_modal: FakeModal, backend: ModalBackend, fields: dict[str, object], what: str
) -> None:
    before = len(fake_modal.create_requests)
    with pytest.raises(Unsupported, match=what):
        await backend.create(SandboxSpec(**fields))  # type: ignore[arg-type]
    assert len(fake_modal.create_requests) == before  # refused before anything was sent


async def test_images_registry_and_snapshot_ids(
    fake_modal: FakeModal, backend: ModalBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec(image="python:3.12-slim"))
    sandboxes.append(info.id)
    assert info.image == "python:3.12-slim"
    assert _last_create(fake_modal).definition.image_id.startswith("im-")
    with pytest.raises(ConfigError, match="could not build the image"):
        await backend.create(SandboxSpec(image="example.com/does-not-exist:1"))
    with pytest.raises(ConfigError, match="not a Modal snapshot id"):
        await backend.create(SandboxSpec(snapshot="my-snapshot"))


async def test_snapshot_then_create_from_it(
    fake_modal: FakeModal, backend: ModalBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    await backend.write_file(info.id, "/root/state.txt", b"snapshotted")
    snap = await backend.snapshot(info.id)
    assert snap.startswith("im-")
    clone = await backend.create(SandboxSpec(snapshot=snap))
    sandboxes.append(clone.id)
    assert _last_create(fake_modal).definition.image_id == snap
    assert await backend.read_file(clone.id, "/root/state.txt") == b"snapshotted"


async def test_expose_port_is_the_tunnel_of_a_declared_port(
    backend: ModalBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec(ports=(8000,)))
    sandboxes.append(info.id)
    url = await backend.expose_port(info.id, 8000)
    assert url.startswith("https://")
    assert "8000" in url
    with pytest.raises(ConfigError, match=r"SandboxSpec\.ports"):
        await backend.expose_port(info.id, 9000)


async def test_signal_deaths_are_exact(backend: ModalBackend, sandboxes: list[str]) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    r = await backend.exec(info.id, "kill -SEGV $$", ExecOptions())
    assert (r.exit_code, r.signal) == (139, 11)
    plain = await backend.exec(info.id, "exit 139", ExecOptions())
    assert (plain.exit_code, plain.signal) == (139, None)  # the router tells them apart


async def test_argv_stays_argv_and_a_missing_command_is_127(
    backend: ModalBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    r = await backend.exec(info.id, ["printf", "%s|", "$HOME", "a b", "; echo no"], ExecOptions())
    assert r.stdout == "$HOME|a b|; echo no|"
    missing = await backend.exec(info.id, ["no-such-command-here"], ExecOptions())
    assert missing.exit_code == 127
    assert "no-such-command-here" in missing.stderr


async def test_timeout_kills_the_tree_and_arms_modal_as_a_backstop(
    fake_modal: FakeModal, backend: ModalBackend, sandboxes: list[str]
) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    nap = f"300.{uuid.uuid4().int % 10**9}"
    with pytest.raises(CommandTimeout) as caught:
        await backend.exec(
            info.id, f"echo before; setsid sleep {nap} & sleep {nap}", ExecOptions(timeout=1)
        )
    assert caught.value.stdout == b"before\n"
    started = [r for r in fake_modal.exec_requests if nap in " ".join(r.command_args)]
    assert started[0].timeout_secs == 1 + 30  # Modal kills it should this client vanish
    left = await backend.exec(info.id, ["pgrep", "-f", f"sleep {nap}"], ExecOptions())
    assert (left.exit_code, left.stdout) == (1, "")


async def test_processes_skip_forged_registry_lines(
    backend: ModalBackend, sandboxes: list[str]
) -> None:
    sb = await Sandbox.create(backend=backend)
    sandboxes.append(sb.id)
    proc = await sb.start("sleep 60")
    try:
        forged = (
            b"not json\n"
            b'{"ref": "x", "command": "not a list", "started_at": "2024-01-01T00:00:00+00:00"}\n'
            b'{"ref": "' + b"r" * 100 + b'", "command": [], "started_at": "2024-01-01T00:00:00"}\n'
            b'{"ref": "ghost", "command": ["true"], "started_at": "2024-01-01T00:00:00+00:00"}\n'
        )
        await sb.exec(["sh", "-c", f'cat >> "{REGISTRY}"'], stdin=forged)
        found = {p.ref: p for p in await sb.processes()}
        assert proc.ref in found
        assert found[proc.ref].running
        assert "x" not in found
        assert "r" * 100 not in found
        assert "ghost" not in found  # well-formed, but the router never ran it
        with pytest.raises(ProcessNotFound):
            await backend.attach(sb.id, "ghost")
    finally:
        await proc.end()


async def test_a_lost_create_answer_is_found_by_name(
    fake_modal: FakeModal, backend: ModalBackend, sandboxes: list[str]
) -> None:
    before = len(fake_modal.running_sandboxes())
    fake_modal.fail_next("SandboxCreateV2", Status.UNAVAILABLE, "lost", after_effect=True)
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    assert len(fake_modal.running_sandboxes()) == before + 1  # one sandbox, not two
    assert fake_modal.calls["SandboxGetFromNameV2"] >= 1
    assert (await backend.exec(info.id, ["true"], ExecOptions())).ok


async def test_a_create_that_keeps_failing_leaves_nothing(
    fake_modal: FakeModal, modal_options: ModalOptions
) -> None:
    backend = ModalBackend(modal_options.model_copy(update={"create_attempts": 2}))
    before = set(fake_modal.running_sandboxes())
    fake_modal.fail_next("SandboxCreateV2", Status.INTERNAL, "boom", count=20, after_effect=True)
    fake_modal.fail_next("SandboxGetFromNameV2", Status.INTERNAL, "boom", count=20)
    try:
        with pytest.raises(ProviderUnavailable, match="boom") as caught:
            await backend.create(SandboxSpec())
        assert caught.value.retryable
    finally:
        fake_modal.faults.clear()
        await backend.aclose()
    assert set(fake_modal.running_sandboxes()) == before


async def test_a_file_larger_than_it_says_is_cut_at_max_bytes(
    backend: ModalBackend, sandboxes: list[str]
) -> None:
    """The attack: a regular file that passes the size check, then streams without end (a file
    swapped after the check does the same). ``/proc/self/pagemap`` reports a size of 0 and reads
    as hundreds of GiB: the read stops past ``max_bytes`` instead of keeping it all."""
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    with pytest.raises(FileTooLarge, match="grew after its size was checked"):
        await backend.read_file(info.id, "/proc/self/pagemap", max_bytes=1 << 20)
    left = await backend.exec(info.id, ["pgrep", "-f", "modal-sandbox-fs-tools"], ExecOptions())
    assert (left.exit_code, left.stdout) == (1, "")  # the reader was killed, not left running
    await backend.write_file(info.id, "/root/small", b"fits")
    assert await backend.read_file(info.id, "/root/small", max_bytes=4) == b"fits"


async def test_stdin_fed_and_left_open(backend: ModalBackend, sandboxes: list[str]) -> None:
    info = await backend.create(SandboxSpec())
    sandboxes.append(info.id)
    handle = await backend.start(info.id, ["cat"], StartOptions(stdin=b"first ", stdin_open=True))
    try:
        await handle.write_stdin(b"second")
        await handle.close_stdin()
        out = b""
        while (item := await handle.read()) is not None:
            out += item[1]
        assert out == b"first second"
        assert (await handle.wait()).exit_code == 0
    finally:
        await handle.close()
