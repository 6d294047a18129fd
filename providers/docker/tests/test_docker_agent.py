"""The exec agent on a real engine: it is the sandbox's main process, serves many clients at once
over one stream each, survives its clients, refuses what it must, and falls back to the
engine's exec (never failing the sandbox) where it cannot run."""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from agent_sandbox_docker import DockerBackend, DockerOptions, _agent
from docker_testkit import BUSYBOX, RUN_LABEL, LabelledDockerBackend

from agent_sandbox import Sandbox
from agent_sandbox.models import SandboxSpec

pytestmark = pytest.mark.anyio


async def make(backend: DockerBackend, image: str = BUSYBOX, **spec: Any) -> Sandbox:
    return await Sandbox.create(
        backend=backend, spec=SandboxSpec(image=image, ttl_seconds=300, **spec)
    )


def other_backend(docker_label: str) -> LabelledDockerBackend:
    backend = LabelledDockerBackend(DockerOptions())
    backend.run_label = docker_label
    return backend


async def test_the_agent_is_the_main_process(backend: DockerBackend, docker_api: Any) -> None:
    sb = await make(backend)
    try:
        attrs = docker_api.inspect_container(sb.id)
        assert attrs["Config"]["Entrypoint"] == [_agent.PATH, "--ttl"]
        assert attrs["Config"]["Labels"]["agent-sandbox.agent"] == str(_agent.PROTOCOL)
        assert attrs["HostConfig"]["LogConfig"]["Type"] == "none"  # output is never logged
        assert attrs["Config"]["OpenStdin"]
        assert not attrs["Config"]["StdinOnce"]
        one = await sb.exec("cat /proc/1/cmdline | tr '\\0' ' '; echo $$")
        assert one.stdout.startswith(f"{_agent.PATH} --ttl ")
        # each command is its own process group under a shim, not a child of a shell of ours
        assert (await sb.exec(["sh", "-c", "ps -o pid,ppid,comm | grep -c agent"])).ok
    finally:
        await sb.destroy()


async def test_many_processes_over_one_stream(backend: DockerBackend) -> None:
    sb = await make(backend)
    try:
        results: dict[int, str] = {}

        async def one(i: int) -> None:
            results[i] = (await sb.exec(f"sleep 0.2; echo {i}")).stdout

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert results == {i: f"{i}\n" for i in range(40)}
        assert len(backend._agents) == 1
    finally:
        await sb.destroy()


async def test_an_unread_background_process_never_blocks_other_commands(
    backend: DockerBackend,
) -> None:
    sb = await make(backend)
    try:
        chatty = await sb.start("yes agent-sandbox")  # megabytes a second, read by no one
        for _ in range(5):
            assert (await sb.exec("echo still-answering")).stdout == "still-answering\n"
        # what the client holds for it is bounded by the flow-control window
        channel = next(iter(backend._agents[sb.id]._channels.values()))
        assert channel.unread <= _agent.WINDOW
        await chatty.kill()
        assert (await chatty.wait()).exit_code == 137
    finally:
        await sb.destroy()


async def test_two_clients_at_once_and_a_dropped_client(
    backend: DockerBackend, docker_label: str
) -> None:
    sb = await make(backend)
    second = other_backend(docker_label)
    try:
        server = await sb.start("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done")
        again = await Sandbox.connect(sb.id, backend=second)

        async def run(sandbox: Sandbox, tag: str) -> list[str]:
            return [(await sandbox.exec(f"echo {tag}{i}")).stdout for i in range(10)]

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, sb, "a")
            tg.start_soon(run, again, "b")
        assert (await run(again, "b"))[-1] == "b9\n"
        # the creator goes away (its attach stream closes): the process keeps running
        await backend.aclose()
        attached = await again.attach(server.ref)
        seen = b""
        with anyio.fail_after(30):
            async for event in attached:
                seen += event.data
                if seen.count(b"tick") > 15:
                    break
        assert b"tick 0\n" in seen  # replayed from the start
        await attached.kill()
        assert (await attached.wait()).exit_code == 137
    finally:
        await second.destroy(sb.id)
        await second.aclose()


async def test_output_is_replayed_to_a_late_attach_after_the_end(backend: DockerBackend) -> None:
    sb = await make(backend)
    try:
        proc = await sb.start("printf 'all of it'; printf ' err' >&2; exit 7")
        await proc.wait()
        await proc.close()
        again = await sb.attach(proc.ref)
        result = await again.wait()
        assert (result.stdout, result.stderr, result.exit_code) == ("all of it", " err", 7)
    finally:
        await sb.destroy()


async def test_code_in_the_sandbox_cannot_write_into_the_agents_stream(
    backend: DockerBackend,
) -> None:
    """The agent is not dumpable: not even root in the sandbox opens its stdio through /proc
    (an attacker would forge frames there, or send the agent requests)."""
    sb = await make(backend)
    try:
        for fd in (0, 1):
            forged = await sb.exec(f"printf 'forged' > /proc/1/fd/{fd}")
            assert forged.exit_code != 0
            assert "denied" in forged.stderr.lower()
        assert (await sb.exec("id -u")).stdout == "0\n"
        assert (await sb.exec("echo intact")).stdout == "intact\n"
    finally:
        await sb.destroy()


async def test_a_replaced_agent_cannot_harm_a_new_client(
    backend: DockerBackend, docker_label: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Root in the sandbox replaces the agent's binary; a client arriving later runs the
    attacker's relay, whose garbage is refused: commands still run, through the engine."""
    sb = await make(backend)
    second = other_backend(docker_label)
    try:
        hostile = "#!/bin/sh\nprintf '\\377\\377\\377\\377garbage'\ncat >/dev/null\n"
        await sb.exec(
            f"rm -f {_agent.PATH}; cat > {_agent.PATH}; chmod 755 {_agent.PATH}",
            stdin=hostile.encode(),
        )
        again = await Sandbox.connect(sb.id, backend=second)
        with caplog.at_level(logging.WARNING, logger="agent_sandbox.docker"):
            with anyio.fail_after(60):
                result = await again.exec("echo through the engine")
        assert result.stdout == "through the engine\n"
        assert "broke its protocol" in caplog.text
        assert (await sb.exec("echo creator unaffected")).ok  # the creator's stream is its own
    finally:
        await sb.destroy()
        await second.aclose()


async def test_the_agent_refuses_an_incompatible_client(
    backend: DockerBackend, docker_api: Any
) -> None:
    sb = await make(backend)
    try:
        stream = await anyio.to_thread.run_sync(_agent.relay, docker_api, sb.id)
        try:
            await stream.send(_agent.frame("h", 0, struct.pack(">H", 999)))
            with anyio.fail_after(30):
                frames = await stream.frames()
        finally:
            stream.close()
        assert frames is not None
        data = b"".join(d for kind, d in frames if kind == "stdout")
        assert data[4:5] == b"N"
        assert b"protocol 1, the client protocol 999" in data
    finally:
        await sb.destroy()


@pytest.fixture
def foreign_arch_image(docker_api: Any) -> Iterator[str]:
    """The busybox image relabelled as arm64 (its programs still run here: only the agent picks
    its binary by that label), so the aarch64 agent really cannot execute."""
    tag = f"agent-sandbox-test/arm64-label:{uuid.uuid4().hex[:10]}"
    saved = b"".join(docker_api.get_image(BUSYBOX))
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(saved)) as source,
        tarfile.open(fileobj=out, mode="w") as target,
    ):
        manifest = json.loads(source.extractfile("manifest.json").read())  # type: ignore[union-attr]
        for member in source.getmembers():
            data = source.extractfile(member) if member.isfile() else None
            if member.name == manifest[0]["Config"]:
                config = json.loads(data.read())  # type: ignore[union-attr]
                config["architecture"] = "arm64"
                raw = json.dumps(config).encode()
                member.size, data = len(raw), io.BytesIO(raw)
            if member.name == "manifest.json":
                manifest[0]["RepoTags"] = [tag]
                raw = json.dumps(manifest).encode()
                member.size, data = len(raw), io.BytesIO(raw)
            target.addfile(member, data)
    docker_api.load_image(out.getvalue())
    try:
        yield tag
    finally:
        docker_api.remove_image(tag, force=True)


async def test_where_the_agent_cannot_run_the_engine_serves(
    backend: DockerBackend,
    docker_api: Any,
    foreign_arch_image: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent_sandbox.docker"):
        sb = await make(backend, image=foreign_arch_image)
    try:
        assert "could not start" in caplog.text
        assert "engine's exec" in caplog.text
        attrs = docker_api.inspect_container(sb.id)
        assert attrs["Config"]["Entrypoint"] == ["sleep"]
        assert RUN_LABEL in attrs["Config"]["Labels"]
        result = await sb.exec("echo served; echo err >&2; exit 4")
        assert (result.stdout, result.stderr, result.exit_code) == ("served\n", "err\n", 4)
        await sb.write_file("/tmp/f", b"files too")
        assert await sb.read_file("/tmp/f") == b"files too"
        with pytest.raises(Exception, match="exec agent"):
            await sb.processes()
    finally:
        await sb.destroy()


async def test_commands_as_another_user_go_through_the_engine(backend: DockerBackend) -> None:
    sb = await make(backend)
    try:
        assert (await sb.exec("id -u", user="nobody")).stdout == "65534\n"
        assert (await sb.exec("id -u")).stdout == "0\n"
    finally:
        await sb.destroy()
