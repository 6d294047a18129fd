"""DockerBackend against a real Docker engine (skipped, with the reason, when none answers)."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import docker.errors
import pytest
from agent_sandbox_docker import DockerBackend, DockerOptions
from agent_sandbox_docker._errors import translate
from docker_testkit import BUSYBOX, IMAGE, RUN_LABEL, remove_labelled

from agent_sandbox import Sandbox
from agent_sandbox.backend import close_stream
from agent_sandbox.errors import (
    CommandTimeout,
    ConfigError,
    FileNotFound,
    IsADirectory,
    PermissionDenied,
    ProviderUnavailable,
    SandboxConflict,
    SandboxNotFound,
    Unsupported,
)
from agent_sandbox.labels import stamp
from agent_sandbox.models import ExecOptions, NetworkPolicy, SandboxSpec
from agent_sandbox.testing.conformance import EgressServer

pytestmark = pytest.mark.anyio

PROCS = "for p in /proc/[0-9]*; do tr '\\000' ' ' < $p/cmdline 2>/dev/null; echo; done"


async def make(backend: DockerBackend, **fields: Any) -> Sandbox:
    fields.setdefault("image", IMAGE)
    fields.setdefault("ttl_seconds", 900)
    return await Sandbox.create(backend=backend, **fields)


@pytest.fixture
async def sb(backend: DockerBackend) -> AsyncIterator[Sandbox]:
    sandbox = await make(backend)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()


async def wait_until(predicate: Any, seconds: float, step: float = 0.25) -> bool:
    """Poll an async predicate until true or ``seconds`` pass (bounded wait, not a timing test)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await anyio.sleep(step)
    return bool(await predicate())


# -- lifecycle ------------------------------------------------------------------------------


async def test_create_sets_labels_limits_and_main_process(
    backend: DockerBackend, docker_api: Any
) -> None:
    sandbox = await make(backend, cpus=0.5, memory_mib=128, labels={"team": "a"})
    try:
        attrs = docker_api.inspect_container(sandbox.id)
        labels = attrs["Config"]["Labels"]
        assert labels["team"] == "a"
        for key in ("owner", "created-at", "expires-at", "managed"):
            assert f"agent-sandbox.{key}" in labels
        host = attrs["HostConfig"]
        assert host["NanoCpus"] == 500_000_000
        assert host["Memory"] == 128 * 1024 * 1024
        assert host["MemorySwap"] == 128 * 1024 * 1024
        assert host["PidsLimit"] == 4096
        assert host["AutoRemove"] is True
        assert attrs["Config"]["Entrypoint"] == ["/.agent-sandbox/agent", "--ttl"]
        assert 890 <= int(attrs["Config"]["Cmd"][0]) <= 900
        assert sandbox.info.workdir == "/workspace"
        assert sandbox.info.expires_at is not None
    finally:
        await sandbox.destroy()


async def test_connect_list_destroy_idempotent(backend: DockerBackend, docker_label: str) -> None:
    one = await make(backend, labels={"which": "one"})
    two = await make(backend, labels={"which": "two"})
    try:
        info = await backend.connect(one.id)
        assert info.id == one.id
        assert info.state == "running"
        assert info.labels["which"] == "one"
        mine = await backend.list({RUN_LABEL: docker_label})
        assert {i.id for i in mine} == {one.id, two.id}
        only = await backend.list({RUN_LABEL: docker_label, "which": "two"})
        assert [i.id for i in only] == [two.id]
        assert only[0].workdir == "/workspace"
    finally:
        await one.destroy()
        await two.destroy()
    await backend.destroy(one.id)  # already gone: not an error
    await backend.destroy("0" * 64)
    with pytest.raises(SandboxNotFound):
        await backend.connect(one.id)
    assert await backend.list({RUN_LABEL: docker_label}) == []


async def test_destroy_is_prompt_kill_not_graceful_stop(
    backend: DockerBackend, docker_api: Any
) -> None:
    sandbox = await make(backend)
    await sandbox.destroy()
    # force-remove kills at once: the container is gone when destroy returns
    with pytest.raises(Exception, match="No such container"):
        docker_api.inspect_container(sandbox.id)


async def test_gone_sandbox_errors_are_typed(backend: DockerBackend) -> None:
    sandbox = await make(backend)
    sid = sandbox.id
    await sandbox.destroy()
    with pytest.raises(SandboxNotFound):
        await backend.exec(sid, ["true"], ExecOptions())
    with pytest.raises(SandboxNotFound):
        await backend.read_file(sid, "/etc/hostname")
    with pytest.raises(SandboxNotFound):
        await backend.write_file(sid, "/tmp/x", b"x")
    with pytest.raises(SandboxNotFound):
        await backend.stat(sid, "/etc")


async def test_dead_man_switch_survives_sigkilled_client(
    docker_api: Any, docker_label: str
) -> None:
    """A client killed with SIGKILL leaks nothing past the TTL: the container ends itself."""
    child = textwrap.dedent(
        f"""
        import anyio, sys, time
        from agent_sandbox import Sandbox
        from agent_sandbox_docker import DockerBackend

        async def main():
            sb = await Sandbox.create(backend=DockerBackend(), image={IMAGE!r}, ttl_seconds=5,
                                      labels={{{RUN_LABEL!r}: {docker_label!r}}})
            print(sb.id, flush=True)
            time.sleep(600)

        anyio.run(main)
        """
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - a plain child process to SIGKILL
        [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        sid = proc.stdout.readline().strip()
        assert sid, proc.stderr.read() if proc.stderr else ""
        assert docker_api.inspect_container(sid)["State"]["Running"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    async def gone() -> bool:
        return not docker_api.containers(all=True, filters={"id": sid})

    assert await wait_until(gone, 40), "container still present long after its 5 s TTL"


async def test_sweep_removes_expired_by_label(
    backend: DockerBackend, docker_label: str, docker_api: Any
) -> None:
    # a leftover whose own switch did not fire (say it was paused): expired by its label only
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    labels = stamp(SandboxSpec(ttl_seconds=60), "tester", now=past).labels
    leftover = docker_api.create_container(
        IMAGE,
        entrypoint=["sleep"],
        command=["900"],
        labels={**labels, "agent-sandbox.provider": "docker", RUN_LABEL: docker_label},
        host_config=docker_api.create_host_config(auto_remove=True),
    )["Id"]
    docker_api.start(leftover)
    fresh = await make(backend)
    try:
        removed = await backend.sweep(labels={RUN_LABEL: docker_label})
        assert leftover in removed
        assert fresh.id not in removed
        ids = {i.id for i in await backend.list({RUN_LABEL: docker_label})}
        assert ids == {fresh.id}
    finally:
        await backend.destroy(leftover)
        await fresh.destroy()


def _expired_leftover(api: Any, labels: dict[str, str]) -> str:
    """A sandbox container whose TTL has passed by its labels (its own switch has not fired)."""
    past = datetime.now(timezone.utc) - timedelta(hours=2)
    stamped = stamp(SandboxSpec(ttl_seconds=60), "tester", now=past).labels
    cid: str = api.create_container(
        BUSYBOX,
        entrypoint=["sleep"],
        command=["900"],
        labels={**stamped, "agent-sandbox.provider": "docker", **labels},
        host_config=api.create_host_config(auto_remove=True),
    )["Id"]
    api.start(cid)
    return cid


async def test_sweep_touches_only_the_sandboxes_it_is_scoped_to(
    backend: DockerBackend, docker_label: str, docker_api: Any
) -> None:
    """On a shared engine a scoped sweep leaves everyone else's expired sandboxes alone."""
    mine = _expired_leftover(docker_api, {RUN_LABEL: docker_label, "asb-scope": "mine"})
    theirs = _expired_leftover(docker_api, {RUN_LABEL: docker_label, "asb-scope": "theirs"})
    removed = await backend.sweep(labels={RUN_LABEL: docker_label, "asb-scope": "mine"})
    assert removed == [mine]
    assert docker_api.inspect_container(theirs)["State"]["Running"]
    assert await backend.sweep(labels={RUN_LABEL: docker_label, "asb-scope": "theirs"}) == [theirs]


async def test_destroy_refuses_containers_that_are_not_sandboxes(
    backend: DockerBackend, docker_label: str, docker_api: Any
) -> None:
    """A container we did not create is never removed, whatever id or name is given."""
    name = f"asb-not-a-sandbox-{docker_label}"
    foreign = docker_api.create_container(
        BUSYBOX,
        entrypoint=["sleep"],
        command=["900"],
        name=name,
        labels={RUN_LABEL: docker_label, "agent-sandbox.managed": "true"},
        host_config=docker_api.create_host_config(auto_remove=True),
    )["Id"]
    docker_api.start(foreign)
    for given in (foreign, foreign[:12], name):
        with pytest.raises(SandboxNotFound, match="not an agent-sandbox sandbox"):
            await backend.destroy(given)
    assert docker_api.inspect_container(foreign)["State"]["Running"]


async def test_ttl_counts_down_to_the_stamped_expiry(backend: DockerBackend) -> None:
    """A spec stamped long ago (say, a slow pull) gets only the time left, here none."""
    past = datetime.now(timezone.utc) - timedelta(seconds=600)
    spec = stamp(SandboxSpec(image=IMAGE, ttl_seconds=60), "tester", now=past)
    info = await backend.create(spec)

    async def gone() -> bool:
        try:
            await backend.connect(info.id)
        except SandboxNotFound:
            return True
        return False

    assert await wait_until(gone, 30)


async def test_busybox_image_without_python(backend: DockerBackend) -> None:
    sandbox = await make(backend, image=BUSYBOX)
    try:
        result = await sandbox.exec("echo hi; echo err >&2")
        assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "err\n", 0)
        await sandbox.write_file("/tmp/deep/f.txt", b"data")
        assert await sandbox.read_file("/tmp/deep/f.txt") == b"data"
        with pytest.raises(CommandTimeout):
            await sandbox.exec("sleep 100 & sleep 100", timeout=0.5)
        assert "sleep 100" not in (await sandbox.exec(PROCS)).stdout
    finally:
        await sandbox.destroy()


# -- exec -----------------------------------------------------------------------------------


async def test_exec_streams_exit_codes_and_signals(sb: Sandbox) -> None:
    result = await sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.signal is None
    killed = await sb.exec("kill -TERM $$")
    assert (killed.exit_code, killed.signal) == (143, 15)
    missing = await sb.exec(["no-such-binary-here"])
    assert missing.exit_code == 127
    argv = await sb.exec(["printf", "%s|", "a b", "$HOME", "'q'"])
    assert argv.stdout == "a b|$HOME|'q'|"


async def test_exec_output_is_streamed_before_exit(sb: Sandbox) -> None:
    script = "echo ready; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo done"
    stream = sb.exec_stream(script, timeout=60)
    try:
        first = await stream.__anext__()
        assert (first.kind, first.data) == ("stdout", b"ready\n")
        await sb.write_file("/tmp/go", b"")  # the command is still running, waiting for this
        rest = [event async for event in stream]
    finally:
        await close_stream(stream)
    assert rest[0].data == b"done\n"
    assert rest[-1].kind == "exit"
    assert rest[-1].exit_code == 0


async def test_exec_binary_and_large_output(sb: Sandbox) -> None:
    result = await sb.exec("head -c 5000000 /dev/zero | tr '\\0' 'x'; printf '\\377\\000' >&2")
    assert result.stdout_bytes == b"x" * 5_000_000
    assert result.stderr_bytes == b"\xff\x00"
    capped = await sb.exec("head -c 100000 /dev/zero", output_limit=1000)
    assert len(capped.stdout_bytes) == 1000
    assert capped.stdout_truncated


async def test_exec_stdin_env_cwd_user(sb: Sandbox) -> None:
    assert (await sb.exec("cat", stdin=b"hello")).stdout == "hello"
    assert (await sb.exec("wc -c", stdin=b"")).stdout.strip() == "0"
    big = os.urandom(3 * 1024 * 1024)
    # cat echoes while we still write: both directions must flow at once (no deadlock)
    echoed = await sb.exec(["cat"], stdin=big, timeout=60)
    assert echoed.stdout_bytes == big
    result = await sb.exec('echo "$FOO|$PWD"', env={"FOO": "bar baz"}, cwd="/tmp")
    assert result.stdout == "bar baz|/tmp\n"
    assert (await sb.exec("id -u", user="nobody")).stdout.strip() == "65534"
    assert (await sb.exec("pwd")).stdout.strip() == "/workspace"


async def test_timeout_kills_process_tree_inside_container(sb: Sandbox) -> None:
    with pytest.raises(CommandTimeout) as caught:
        await sb.exec("echo started; sleep 300 & sleep 301; echo never", timeout=1)
    assert caught.value.stdout == b"started\n"

    async def tree_gone() -> bool:
        procs = (await sb.exec(PROCS)).stdout
        return "sleep 300" not in procs and "sleep 301" not in procs

    assert await wait_until(tree_gone, 10), (await sb.exec(PROCS)).stdout
    # the sandbox itself (its TTL process) is still alive
    assert (await sb.exec(["true"])).exit_code == 0


async def test_command_that_closes_its_output_is_still_waited_for(sb: Sandbox) -> None:
    result = await sb.exec("echo bye; exec >&- 2>&-; sleep 4; exit 5")
    assert (result.stdout, result.exit_code) == ("bye\n", 5)
    with pytest.raises(CommandTimeout):
        await sb.exec("exec >&- 2>&-; sleep 306", timeout=1)

    async def gone() -> bool:
        return "sleep 306" not in (await sb.exec(PROCS)).stdout

    assert await wait_until(gone, 10)


async def test_leaving_the_stream_early_kills_the_command(sb: Sandbox) -> None:
    stream = sb.exec_stream("echo go; sleep 302")
    first = await stream.__anext__()
    assert first.data == b"go\n"
    await close_stream(stream)

    async def gone() -> bool:
        return "sleep 302" not in (await sb.exec(PROCS)).stdout

    assert await wait_until(gone, 10)


async def test_many_concurrent_execs(sb: Sandbox) -> None:
    async def one(i: int, out: dict[int, str]) -> None:
        out[i] = (await sb.exec(["sh", "-c", f"echo {i}"])).stdout

    results: dict[int, str] = {}
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i, results)
    assert results == {i: f"{i}\n" for i in range(20)}


# -- files ----------------------------------------------------------------------------------


async def test_files_round_trip_50_mib(sb: Sandbox) -> None:
    data = os.urandom(50 * 1024 * 1024)
    await sb.write_file("/tmp/big.bin", data)
    digest = (await sb.exec("sha256sum /tmp/big.bin")).stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    assert await sb.read_file("/tmp/big.bin") == data


async def test_files_parents_errors_stat_symlinks(sb: Sandbox) -> None:
    await sb.write_file("/tmp/a/b/c/file.txt", "nested")
    assert await sb.read_text("/tmp/a/b/c/file.txt") == "nested"
    await sb.write_file("rel.txt", b"\x00\xff")
    assert await sb.read_file("/workspace/rel.txt") == b"\x00\xff"
    await sb.write_file("rel.txt", b"replaced")
    assert await sb.read_file("rel.txt") == b"replaced"
    await sb.write_file("/tmp/empty", b"")
    assert await sb.read_file("/tmp/empty") == b""
    with pytest.raises(FileNotFound):
        await sb.read_file("/tmp/missing")
    with pytest.raises(IsADirectory):
        await sb.read_file("/tmp/a")
    info = await sb.stat("/tmp/a/b/c/file.txt")
    assert (info.type, info.size, info.name) == ("file", 6, "file.txt")
    assert info.mtime > time.time() - 3600
    assert (await sb.stat("/tmp")).mode == 0o1777
    assert (await sb.stat("/tmp/a")).type == "dir"
    with pytest.raises(FileNotFound):
        await sb.stat("/nope")
    assert await sb.exists("/tmp/a")
    assert not await sb.exists("/nope")
    await sb.exec("ln -s /tmp/a/b/c/file.txt /tmp/abs; ln -s c/file.txt /tmp/a/b/rel")
    assert (await sb.stat("/tmp/abs")).type == "symlink"
    assert await sb.read_file("/tmp/abs") == b"nested"
    assert await sb.read_file("/tmp/a/b/rel") == b"nested"
    names = [e.name for e in await sb.list_dir("/tmp/a/b")]
    assert names == ["c", "rel"]


async def test_written_files_belong_to_the_sandbox_user(backend: DockerBackend) -> None:
    sandbox = await make(backend, user="nobody", workdir="/tmp")
    try:
        await sandbox.write_file("/tmp/mine.txt", b"x")
        result = await sandbox.exec("echo more >> /tmp/mine.txt && cat /tmp/mine.txt")
        assert result.stdout == "xmore\n", result.stderr
    finally:
        await sandbox.destroy()


async def test_engine_refuses_to_replace_a_directory_by_a_file(
    sb: Sandbox, docker_api: Any, tmp_path: Path
) -> None:
    """Every archive upload asks the engine not to put a file where a directory is, so even a
    directory created after the backend looked is never deleted."""
    from agent_sandbox_docker import _wire
    from agent_sandbox_docker._backend import _put_archive

    await sb.write_file("/tmp/tree/sub/keep.txt", b"kept")
    with pytest.raises(docker.errors.APIError, match="cannot overwrite directory"):
        _put_archive(docker_api, sb.id, "/tmp", _wire.tar_single_file("tree", b"x"))
    assert await sb.read_file("/tmp/tree/sub/keep.txt") == b"kept"
    with pytest.raises(IsADirectory):
        await sb.write_file("/tmp/tree", b"x")
    with pytest.raises(IsADirectory):
        await sb.upload(_one_file_tree(tmp_path, "sub"), "/tmp/tree")
    assert await sb.read_file("/tmp/tree/sub/keep.txt") == b"kept"


def _one_file_tree(parent: Path, name: str) -> Path:
    root = parent / f"tree-{name}"
    root.mkdir()
    (root / name).write_bytes(b"a file named like a directory")
    return root


async def test_a_non_root_sandbox_user_gets_no_root_file_access(
    backend: DockerBackend, tmp_path: Path
) -> None:
    """The engine's archive API acts as root: a sandbox whose user is not root must not read,
    write, upload or download through it what that user may not."""
    sandbox = await make(backend, user="nobody", workdir="/tmp")
    try:
        assert (await sandbox.exec(["id", "-u"])).stdout.strip() == "65534"
        with pytest.raises(PermissionDenied):
            await sandbox.read_file("/etc/shadow")
        with pytest.raises(PermissionDenied):
            await sandbox.write_file("/etc/passwd", b"owned::0:0::/:/bin/sh\n")
        with pytest.raises(PermissionDenied):
            await sandbox.write_file("/workspace/planted.txt", b"x")
        assert "owned" not in (await sandbox.exec(["cat", "/etc/passwd"])).stdout
        with pytest.raises(PermissionDenied):
            await sandbox.upload(_one_file_tree(tmp_path, "planted"), "/etc")
        # what the user may do still works, as that user
        await sandbox.write_file("/tmp/mine/a.txt", b"mine")
        assert await sandbox.read_file("/tmp/mine/a.txt") == b"mine"
        owner = await sandbox.exec(["stat", "-c", "%u", "/tmp/mine/a.txt"])
        assert owner.stdout.strip() == "65534"
    finally:
        await sandbox.destroy()


async def test_file_operations_refuse_containers_that_are_not_sandboxes(
    backend: DockerBackend, docker_label: str, docker_api: Any
) -> None:
    foreign = docker_api.create_container(
        BUSYBOX,
        entrypoint=["sleep"],
        command=["900"],
        labels={RUN_LABEL: docker_label},
        host_config=docker_api.create_host_config(auto_remove=True),
    )["Id"]
    docker_api.start(foreign)
    with pytest.raises(SandboxNotFound):
        await backend.read_file(foreign, "/etc/hostname")
    with pytest.raises(SandboxNotFound):
        await backend.write_file(foreign, "/tmp/x", b"x")


# -- network, ports, resources ----------------------------------------------------------------


def _start_server(api: Any, label: str, token: str) -> str:
    container = api.create_container(
        BUSYBOX,
        entrypoint=["sh", "-c", f"echo {token} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
        labels={RUN_LABEL: label},
        host_config=api.create_host_config(auto_remove=True),
    )
    api.start(container["Id"])
    ip = api.inspect_container(container["Id"])["NetworkSettings"]["IPAddress"]
    return f"http://{ip}:8080/index.html"


@pytest.fixture
def test_server(docker_api: Any, docker_label: str) -> str:
    """An HTTP server in a container of our own on the default bridge: the only egress target."""
    return _start_server(docker_api, docker_label, "egress-ok")


FETCH = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())\n"
    "except Exception as exc:\n"
    "    print('blocked', type(exc).__name__)\n"
)


PROBE = (
    "import socket, sys\n"
    "for target in sys.argv[1:]:\n"
    "    host, port = target.rsplit(':', 1)\n"
    "    try:\n"
    "        socket.create_connection((host, int(port)), timeout=3).close()\n"
    "        print(target, 'reached')\n"
    "    except OSError:\n"
    "        print(target, 'blocked')\n"
)


def _host_addresses() -> list[str]:
    """This host's own IPv4 addresses but loopback: its LAN address, docker0's, every
    bridge's gateway. A service listening on all interfaces answers on each."""
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    found = {line.split()[3].split("/")[0] for line in out.splitlines() if line.split()[1] != "lo"}
    assert found, out
    return sorted(found)


@pytest.fixture
def host_listener() -> Iterator[EgressServer]:
    """A TCP server on every address of this host (what a developer's database or an
    engine's unauthenticated port would be), counting the connections it gets."""
    server = EgressServer()
    try:
        yield server
    finally:
        server.close()


async def _probe(sb: Sandbox, targets: list[str], **env: str) -> dict[str, str]:
    result = await sb.exec(["python3", "-c", PROBE, *targets], env=env, timeout=120)
    assert result.ok, result.stderr
    return dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())


async def test_network_none_reaches_nothing_on_the_host(
    backend: DockerBackend, host_listener: EgressServer
) -> None:
    sandbox = await make(backend, network="none")
    try:
        targets = [f"{a}:{host_listener.port}" for a in _host_addresses()]
        assert set((await _probe(sandbox, targets)).values()) == {"blocked"}
        assert host_listener.connections == 0
        assert (await sandbox.exec("ls /sys/class/net")).stdout.split() == ["lo"]
    finally:
        await sandbox.destroy()


async def test_allowlist_fails_closed_for_the_hosts_own_addresses(
    docker_api: Any, docker_label: str, host_listener: EgressServer
) -> None:
    """An allowlist sandbox reaches no address of this host unless the list names it: not
    directly (it has no network), not through the proxy (403)."""
    from docker_testkit import LabelledDockerBackend

    allowed = _start_server(docker_api, docker_label, "allowed-ok")
    allowed_ip = allowed.split("//")[1].split(":")[0]
    backend = LabelledDockerBackend(DockerOptions(egress_proxy_image=IMAGE))
    backend.run_label = docker_label
    try:
        sandbox = await make(
            backend, network=NetworkPolicy(mode="allowlist", allow=(f"{allowed_ip}/32",))
        )
        try:

            async def through_proxy() -> bool:
                result = await sandbox.exec(["python3", "-c", FETCH, allowed])
                return result.stdout.strip() == "allowed-ok"

            assert await wait_until(through_proxy, 20)  # the path out works for what is allowed
            targets = [f"{a}:{host_listener.port}" for a in _host_addresses()]
            direct = await _probe(sandbox, targets)
            assert set(direct.values()) == {"blocked"}, direct
            assert (await sandbox.exec("ls /sys/class/net")).stdout.split() == ["lo"]
            for address in _host_addresses():
                url = f"http://{address}:{host_listener.port}/"
                proxied = await sandbox.exec(["python3", "-c", FETCH, url])
                assert proxied.stdout.startswith("blocked HTTPError"), (address, proxied)
            assert host_listener.connections == 0
        finally:
            await sandbox.destroy()
    finally:
        await backend.aclose()


async def test_allowlist_reaches_a_host_address_only_when_listed(
    docker_api: Any, docker_label: str, host_listener: EgressServer
) -> None:
    from docker_testkit import LabelledDockerBackend

    bridge = docker_api.inspect_network("bridge")["IPAM"]["Config"][0]
    gateway = bridge.get("Gateway") or str(next(ipaddress.ip_network(bridge["Subnet"]).hosts()))
    backend = LabelledDockerBackend(DockerOptions(egress_proxy_image=IMAGE))
    backend.run_label = docker_label
    try:
        sandbox = await make(backend, network=NetworkPolicy(mode="allowlist", allow=(gateway,)))
        try:
            url = f"http://{gateway}:{host_listener.port}/"

            async def reached() -> bool:
                result = await sandbox.exec(["python3", "-c", FETCH, url])
                return host_listener.token in result.stdout

            assert await wait_until(reached, 20)
            direct = await _probe(sandbox, [f"{gateway}:{host_listener.port}"])
            assert set(direct.values()) == {"blocked"}  # only through the proxy
        finally:
            await sandbox.destroy()
    finally:
        await backend.aclose()


async def test_allowlist_through_the_egress_proxy(docker_api: Any, docker_label: str) -> None:
    from docker_testkit import LabelledDockerBackend

    allowed = _start_server(docker_api, docker_label, "allowed-ok")
    other = _start_server(docker_api, docker_label, "other-ok")
    allowed_ip = allowed.split("//")[1].split(":")[0]
    backend = LabelledDockerBackend(DockerOptions(egress_proxy_image=IMAGE))
    backend.run_label = docker_label
    assert backend.capabilities.network_allowlist
    try:
        sandbox = await make(
            backend, network=NetworkPolicy(mode="allowlist", allow=(f"{allowed_ip}/32",))
        )
        key = docker_api.inspect_container(sandbox.id)["Config"]["Labels"]["agent-sandbox.egress"]
        try:

            async def through_proxy() -> bool:
                result = await sandbox.exec(["python3", "-c", FETCH, allowed])
                return result.stdout.strip() == "allowed-ok"

            assert await wait_until(through_proxy, 20)  # the proxy may still be starting
            denied = await sandbox.exec(["python3", "-c", FETCH, other])
            assert denied.stdout.startswith("blocked HTTPError"), denied
            direct = await sandbox.exec(
                ["python3", "-c", FETCH, allowed], env={"HTTP_PROXY": "", "http_proxy": ""}
            )
            assert direct.stdout.startswith("blocked"), direct  # no route but the proxy
            roles = {
                row["Labels"].get("agent-sandbox.role")
                for row in docker_api.containers(filters={"label": f"agent-sandbox.egress={key}"})
            }
            assert roles == {None, "egress-proxy", "egress-relay"}  # sandbox, proxy, relay
            for row in docker_api.containers(filters={"label": f"agent-sandbox.egress={key}"}):
                host = docker_api.inspect_container(row["Id"])["HostConfig"]
                assert "no-new-privileges:true" in host["SecurityOpt"]
                if row["Labels"].get("agent-sandbox.role"):  # the helpers need no capability
                    assert host["CapDrop"] == ["ALL"]
                    assert not host["CapAdd"]
        finally:
            await sandbox.destroy()
        assert docker_api.volumes(filters={"label": f"agent-sandbox.egress={key}"})["Volumes"] in (
            None,
            [],
        )
        assert (
            docker_api.containers(all=True, filters={"label": f"agent-sandbox.egress={key}"}) == []
        )
    finally:
        await backend.aclose()


async def test_open_sandboxes_reach_out_but_not_each_other(
    docker_api: Any, backend: DockerBackend, test_server: str, host_listener: EgressServer
) -> None:
    """Network ``open``: the host and the outside, yes; another sandbox, or a container on
    another network, no (one shared network with inter-container traffic off)."""
    server = await make(backend, network="open")
    client = await make(backend, network="open")
    try:
        started = await server.exec(
            "nohup python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 & echo $!"
        )
        assert started.ok
        networks = docker_api.inspect_container(server.id)["NetworkSettings"]["Networks"]
        assert list(networks) == ["agent-sandbox-open"]
        options = docker_api.inspect_network("agent-sandbox-open")["Options"]
        assert options["com.docker.network.bridge.enable_icc"] == "false"
        server_ip = networks["agent-sandbox-open"]["IPAddress"]

        async def serving() -> bool:
            own = await _probe(server, [f"{server_ip}:8080"])
            return own[f"{server_ip}:8080"] == "reached"

        assert await wait_until(serving, 20)  # the server answers on that address
        assert (await _probe(client, [f"{server_ip}:8080"]))[f"{server_ip}:8080"] == "blocked"
        assert (await client.exec(["python3", "-c", FETCH, test_server])).stdout.startswith(
            "blocked"
        )
        bridge = docker_api.inspect_network("bridge")["IPAM"]["Config"][0]
        gateway = bridge.get("Gateway") or str(next(ipaddress.ip_network(bridge["Subnet"]).hosts()))
        url = f"http://{gateway}:{host_listener.port}/"
        assert host_listener.token in (await client.exec(["python3", "-c", FETCH, url])).stdout
    finally:
        await server.destroy()
        await client.destroy()


async def test_ports_need_network_open(backend: DockerBackend) -> None:
    for mode in ("none", "allowlist"):
        network = NetworkPolicy(mode=mode, allow=("10.0.0.0/8",) if mode == "allowlist" else ())
        with pytest.raises(ConfigError, match="ports cannot be published"):
            await make(backend, network=network, ports=(8000,))


async def test_sweep_removes_expired_egress_helpers(docker_api: Any, docker_label: str) -> None:
    from docker_testkit import LabelledDockerBackend

    backend = LabelledDockerBackend(DockerOptions(egress_proxy_image=IMAGE))
    backend.run_label = docker_label
    try:
        sandbox = await make(
            backend, network=NetworkPolicy(mode="allowlist", allow=("10.0.0.0/8",))
        )
        key = docker_api.inspect_container(sandbox.id)["Config"]["Labels"]["agent-sandbox.egress"]
        mine = {"label": f"agent-sandbox.egress={key}"}
        # as if the TTL had run out with no client left: the containers end, the volume stays
        for row in docker_api.containers(all=True, filters=mine):
            docker_api.remove_container(row["Id"], force=True)
        assert len(docker_api.volumes(filters=mine)["Volumes"]) == 1
        scope = {RUN_LABEL: docker_label}
        await backend.sweep(labels=scope)  # not expired yet: kept
        assert len(docker_api.volumes(filters=mine)["Volumes"]) == 1
        await backend.sweep(now=datetime.now(timezone.utc) + timedelta(hours=2), labels=scope)
        assert docker_api.volumes(filters=mine)["Volumes"] in (None, [])
    finally:
        await backend.aclose()


async def test_expose_port(backend: DockerBackend) -> None:
    sandbox = await make(backend, ports=(8000,))
    try:
        await sandbox.write_file("index.html", "hello from the sandbox")
        started = await sandbox.exec(
            "nohup python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 & echo $!"
        )
        assert started.ok
        url = await sandbox.expose_port(8000)
        assert url.startswith("http://127.0.0.1:")

        async def answers() -> bool:
            try:
                body = await anyio.to_thread.run_sync(
                    lambda: urllib.request.urlopen(url + "/index.html", timeout=2).read()
                )
            except OSError:
                return False
            return bool(body == b"hello from the sandbox")

        assert await wait_until(answers, 20)
        with pytest.raises(ConfigError):
            await sandbox.expose_port(9999)
    finally:
        await sandbox.destroy()


async def test_out_of_memory_is_surfaced(backend: DockerBackend) -> None:
    sandbox = await make(backend, memory_mib=64)
    try:
        result = await sandbox.exec(["python3", "-c", "x = bytearray(512 * 1024 * 1024)"])
        assert result.exit_code == 137
        assert "OOMKilled" in result.stderr
    finally:
        await sandbox.destroy()


async def test_pids_limit(docker_label: str) -> None:
    from docker_testkit import LabelledDockerBackend

    backend = LabelledDockerBackend(DockerOptions(pids_limit=20))
    backend.run_label = docker_label
    try:
        sandbox = await make(backend)
        result = await sandbox.exec("for i in $(seq 40); do sleep 1000 & done; echo done")
        assert "fork" in result.stderr.lower(), result
        assert "done" not in result.stdout
        await sandbox.destroy()
    finally:
        await backend.aclose()


async def test_disk_and_idle_timeout_are_refused(backend: DockerBackend) -> None:
    with pytest.raises(Unsupported, match="disk_mib"):
        await make(backend, disk_mib=100)
    with pytest.raises(Unsupported, match="idle timeout"):
        await make(backend, idle_timeout_seconds=30)


# -- snapshot, pause ---------------------------------------------------------------------------


async def test_snapshot_and_create_from_it(backend: DockerBackend, docker_api: Any) -> None:
    sandbox = await make(backend)
    image_id = None
    try:
        await sandbox.write_file("/workspace/state.txt", "kept")
        image_id = await sandbox.snapshot()
        restored = await make(backend, image=None, snapshot=image_id)
        try:
            assert await restored.read_text("/workspace/state.txt") == "kept"
            assert restored.info.workdir == "/workspace"
        finally:
            await restored.destroy()
    finally:
        await sandbox.destroy()
        if image_id:
            docker_api.remove_image(image_id, force=True)
    with pytest.raises(ConfigError):
        await make(backend, image=None, snapshot="sha256:" + "0" * 64)


async def test_pause_and_resume(sb: Sandbox) -> None:
    await sb.pause()
    assert (await sb.refresh()).state == "paused"
    with pytest.raises(SandboxConflict):
        await sb.exec(["true"])
    await sb.resume()
    assert (await sb.exec(["true"])).ok


# -- errors ----------------------------------------------------------------------------------


async def test_engine_down_is_provider_unavailable() -> None:
    backend = DockerBackend(DockerOptions(base_url="unix:///nonexistent/docker.sock"))
    try:
        with pytest.raises(ProviderUnavailable, match="is dockerd running"):
            await backend.create(SandboxSpec(image=IMAGE))
        with pytest.raises(ProviderUnavailable, match=r"nonexistent/docker\.sock"):
            await backend.list()
    finally:
        await backend.aclose()


async def test_missing_image_errors(docker_label: str) -> None:
    from docker_testkit import LabelledDockerBackend

    never = LabelledDockerBackend(DockerOptions(pull="never"))
    never.run_label = docker_label
    pulling = LabelledDockerBackend(DockerOptions())
    pulling.run_label = docker_label
    try:
        with pytest.raises(ConfigError, match="pull='never'"):
            await never.create(SandboxSpec(image="agent-sandbox/absent:nope"))
        # no registry is reachable from the test machines: the error must say so plainly
        with pytest.raises((ProviderUnavailable, ConfigError), match="cannot pull image"):
            await pulling.create(SandboxSpec(image="agent-sandbox-test/absent:nope"))
    finally:
        await never.aclose()
        await pulling.aclose()


async def test_engine_name_conflict_maps_to_conflict(docker_api: Any, docker_label: str) -> None:
    import docker.errors

    name = f"agent-sandbox-conflict-{docker_label}"
    docker_api.create_container(
        BUSYBOX, command=["true"], name=name, labels={RUN_LABEL: docker_label}
    )
    with pytest.raises(docker.errors.APIError) as raw:
        docker_api.create_container(BUSYBOX, command=["true"], name=name)
    error = translate(raw.value, base_url="unix://test", op="create")
    assert isinstance(error, SandboxConflict)
    assert error.provider == "docker"
    remove_labelled(f"{RUN_LABEL}={docker_label}")


async def test_provider_found_through_config(docker_label: str) -> None:
    from agent_sandbox.config import resolve

    resolved = resolve("docker", {"runtime": None, "default_image": BUSYBOX})
    assert resolved.backend_class is DockerBackend
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        resolve("docker", {"bogus": 1})


async def test_runsc_runtime(docker_label: str, docker_api: Any) -> None:
    runtimes = docker_api.info().get("Runtimes") or {}
    if "runsc" not in runtimes:
        pytest.skip("gVisor runtime 'runsc' is not registered (setup with AGENT_SANDBOX_RUNSC=1)")
    from docker_testkit import LabelledDockerBackend

    backend = LabelledDockerBackend(DockerOptions(runtime="runsc"))
    backend.run_label = docker_label
    try:
        sandbox = await make(backend, network="none")
        try:
            assert docker_api.inspect_container(sandbox.id)["HostConfig"]["Runtime"] == "runsc"
            kernel = await sandbox.exec("dmesg 2>/dev/null | head -1; uname -r")
            assert kernel.ok
            await sandbox.write_file("/tmp/g", b"gvisor")
            assert await sandbox.read_file("/tmp/g") == b"gvisor"
            with pytest.raises(CommandTimeout):
                await sandbox.exec("sleep 100 & sleep 100", timeout=1)
            # gVisor honours no child subreaper: a daemon orphaned at birth is still found
            with pytest.raises(CommandTimeout):
                await sandbox.exec("setsid sleep 301 & sleep 100", timeout=1)
            assert "sleep 301" not in (await sandbox.exec(PROCS)).stdout
        finally:
            await sandbox.destroy()
    finally:
        await backend.aclose()


async def test_upload_download_through_the_archive_api(sb: Sandbox, tmp_path: Any) -> None:
    source = tmp_path / "src"
    (source / "sub" / "deeper").mkdir(parents=True)
    (source / "a.txt").write_text("alpha")
    (source / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1000)
    (source / "sub" / "deeper" / "empty").write_bytes(b"")
    (source / "link").symlink_to("a.txt")
    await sb.upload(source, "/tmp/new/place")  # parents created
    listing = await sb.exec("cd /tmp/new/place && find . | sort && readlink link")
    assert listing.stdout.split() == [
        ".",
        "./a.txt",
        "./link",
        "./sub",
        "./sub/b.bin",
        "./sub/deeper",
        "./sub/deeper/empty",
        "a.txt",
    ]
    assert await sb.read_file("/tmp/new/place/sub/b.bin") == bytes(range(256)) * 1000
    target = tmp_path / "back"
    await sb.download("/tmp/new/place", target)
    assert (target / "a.txt").read_text() == "alpha"
    assert (target / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 1000
    assert (target / "sub" / "deeper" / "empty").read_bytes() == b""
    assert os.readlink(target / "link") == "a.txt"
    with pytest.raises(FileNotFound):
        await sb.download("/tmp/no-such-dir", tmp_path / "never")
    with pytest.raises(FileNotFound):
        await sb.download("/tmp/new/place/a.txt", tmp_path / "never")
    with pytest.raises(FileNotFound):
        await sb.upload(tmp_path / "missing-local", "/tmp/x")


class _TcpToUnix:
    """A TCP listener on 127.0.0.1 relaying each connection to the engine's unix socket, so the
    backend can be pointed at ``tcp://127.0.0.1:<port>`` like a remote engine."""

    def __init__(self, unix_path: str) -> None:
        import socket
        import threading

        self._unix_path = unix_path
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[Any] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self._unix_path)
            self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: Any, dst: Any) -> None:
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # pass half-closes through (exec stdin EOF)
        except OSError:
            pass

    def close(self) -> None:
        import socket

        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for t in self._threads:
            t.join(timeout=5)


async def test_engine_over_tcp_base_url(docker_label: str) -> None:
    from docker_testkit import ENGINE_ADDRESS, LabelledDockerBackend

    if not ENGINE_ADDRESS.startswith("unix://"):
        pytest.skip(f"the relay needs the engine on a unix socket, not {ENGINE_ADDRESS}")
    relay = _TcpToUnix(ENGINE_ADDRESS.removeprefix("unix://"))
    backend = LabelledDockerBackend(DockerOptions(base_url=f"tcp://127.0.0.1:{relay.port}"))
    backend.run_label = docker_label
    try:
        sandbox = await make(backend)
        try:
            result = await sandbox.exec("cat; echo err >&2", stdin=b"over tcp")
            assert (result.stdout, result.stderr) == ("over tcp", "err\n")
            with pytest.raises(CommandTimeout):
                await sandbox.exec("sleep 305", timeout=0.5)
            await sandbox.write_file("/tmp/t", b"tcp")
            assert await sandbox.read_file("/tmp/t") == b"tcp"
            assert sandbox.info.metadata["engine"] == f"tcp://127.0.0.1:{relay.port}"
        finally:
            await sandbox.destroy()
    finally:
        await backend.aclose()
        relay.close()
