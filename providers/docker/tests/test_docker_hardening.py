"""Docker's own hardening on every sandbox (all capabilities dropped but the few a root user in
the sandbox needs; no-new-privileges where that user is root), each tried as an attack; and
cancellation: a command whose caller is cancelled is cancelled (never reported as an exit
status) and killed, with the exec agent and with the engine's exec."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from agent_sandbox_docker import DockerBackend, DockerOptions
from agent_sandbox_docker._backend import CAPABILITIES
from docker_testkit import IMAGE, LabelledDockerBackend

from agent_sandbox import Sandbox
from agent_sandbox.models import SandboxSpec
from agent_sandbox.tools import ToolKit

pytestmark = pytest.mark.anyio

# CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, NET_BIND_SERVICE 10
KEPT_MASK = (
    f"{(1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 10):016x}"
)


async def make(backend: DockerBackend, **spec: Any) -> Sandbox:
    return await Sandbox.create(
        backend=backend, spec=SandboxSpec(image=IMAGE, ttl_seconds=300, **spec)
    )


@pytest.fixture(params=[True, False], ids=["agent", "engine-exec"])
async def either(request: pytest.FixtureRequest, docker_label: str) -> AsyncIterator[Sandbox]:
    """A sandbox served by the exec agent, then one served by the engine's exec."""
    backend = LabelledDockerBackend(DockerOptions(agent=request.param))
    backend.run_label = docker_label
    try:
        sb = await make(backend)
        try:
            yield sb
        finally:
            await sb.destroy()
    finally:
        await backend.aclose()


async def test_capabilities_are_dropped_and_no_new_privileges(
    either: Sandbox, docker_api: Any
) -> None:
    host = docker_api.inspect_container(either.id)["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert sorted(c.removeprefix("CAP_") for c in host["CapAdd"]) == sorted(CAPABILITIES)
    assert "no-new-privileges:true" in host["SecurityOpt"]
    status = await either.exec("grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status")
    fields = dict(line.split(":\t") for line in status.stdout.splitlines())
    assert fields == {"CapBnd": KEPT_MASK, "CapEff": KEPT_MASK, "NoNewPrivs": "1"}
    # the same for a command of another user (the engine's exec), with no capability at all
    other = await either.exec("grep -E '^(CapEff|NoNewPrivs)' /proc/self/status", user="nobody")
    assert other.stdout == "CapEff:\t0000000000000000\nNoNewPrivs:\t1\n"


async def test_root_in_the_sandbox_cannot_make_devices_or_raw_sockets(either: Sandbox) -> None:
    device = await either.exec("mknod /tmp/disk b 8 0")  # a block device: the host's first disk
    assert device.exit_code != 0
    assert "not permitted" in device.stderr
    raw = await either.exec(
        ["python3", "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)"]
    )
    assert raw.exit_code != 0
    assert "PermissionError" in raw.stderr
    # what root in a sandbox does every day still works: own files, switch users
    fine = await either.exec(
        "touch /tmp/f && chown nobody /tmp/f && chmod 600 /tmp/f && "
        "su nobody -s /bin/sh -c 'id -u' && cat /tmp/f && echo ok"
    )
    assert (fine.stdout, fine.exit_code) == ("65534\nok\n", 0), fine


async def test_a_setuid_program_gives_no_privilege(either: Sandbox) -> None:
    prepared = await either.exec("cp /usr/bin/id /tmp/id && chmod 4755 /tmp/id && ls -l /tmp/id")
    assert prepared.stdout.startswith("-rwsr-xr-x"), prepared
    assert (await either.exec("/tmp/id -u", user="nobody")).stdout == "65534\n"
    as_nobody = await either.exec("su nobody -s /bin/sh -c '/tmp/id -u'")
    assert as_nobody.stdout == "65534\n"


async def test_root_in_a_sandbox_of_another_user_keeps_its_capabilities(
    docker_label: str, docker_api: Any
) -> None:
    """Under no-new-privileges the engine gives an exec as root in a non-root container no
    capability at all; such sandboxes go without it, so ``user="root"`` stays root."""
    backend = LabelledDockerBackend(DockerOptions())
    backend.run_label = docker_label
    try:
        sb = await make(backend, user="nobody")
        try:
            host = docker_api.inspect_container(sb.id)["HostConfig"]
            assert host["CapDrop"] == ["ALL"]
            assert not host["SecurityOpt"]
            assert (await sb.exec("id -u")).stdout == "65534\n"
            status = await sb.exec("grep -E '^CapEff' /proc/self/status", user="root")
            assert status.stdout == f"CapEff:\t{KEPT_MASK}\n"
            added = await sb.exec("groupadd -g 1234 added && getent group added", user="root")
            assert added.stdout == "added:x:1234:\n", added
        finally:
            await sb.destroy()
    finally:
        await backend.aclose()


async def _sleepers(sb: Sandbox, tag: str) -> list[str]:
    listing = await sb.exec("for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline; echo; done")
    return [line for line in listing.stdout.splitlines() if f"sleep {tag}" in line]


async def _until_gone(sb: Sandbox, tag: str) -> None:
    for _ in range(60):  # the kill is asynchronous: allow it a few seconds
        if not await _sleepers(sb, tag):
            return
        await anyio.sleep(0.25)
    raise AssertionError(f"still running: {await _sleepers(sb, tag)}")


async def test_a_cancelled_exec_is_cancelled_and_its_tree_killed(either: Sandbox) -> None:
    result = None
    with anyio.move_on_after(1.5) as scope:
        result = await either.exec("sleep 731 & sleep 732; echo late")
    assert scope.cancelled_caught
    assert result is None
    await _until_gone(either, "73")
    assert (await either.exec("echo next")).stdout == "next\n"


async def test_a_cancelled_tool_call_is_cancelled_not_an_exit_status(either: Sandbox) -> None:
    kit = ToolKit(either)
    assert (await kit.run("bash", {"command": "echo warm"})).content == "warm"
    result = None
    with anyio.move_on_after(1.5) as scope:
        result = await kit.run("bash", {"command": "sleep 741; echo late"})
    assert scope.cancelled_caught
    assert result is None  # not a ToolResult saying "exit code: 137"
    # a cancelled task group, as an agent framework cancels a tool call
    outcome: list[Any] = []
    other = ToolKit(either)

    async def call() -> None:
        outcome.append(await other.run("bash", {"command": "sleep 742"}))

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await anyio.sleep(1.5)
        group.cancel_scope.cancel()
    assert outcome == []
