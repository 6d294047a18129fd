# Host-side checks in these tests are instant filesystem and /proc reads, and the polling loops
# watch processes the test does not own (no event to wait on).
# ruff: noqa: ASYNC110, ASYNC220, ASYNC240
"""Behaviour specific to the local provider: the jail, state on disk, TTL, process cleanup.

Real processes and real bubblewrap, no mocks. Tests needing bubblewrap are skipped (with the
reason) when it is not installed; the rest run in both isolation modes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.local._jail import probe
from agent_sandbox.local.backend import default_root

pytestmark = pytest.mark.anyio


def _bwrap_problem() -> str | None:
    found = shutil.which("bwrap")
    if found is None:
        return "bubblewrap (bwrap) is not installed on this machine"
    problem = probe(found)
    return f"bwrap cannot build a jail here: {problem}" if problem else None


BWRAP_PROBLEM = _bwrap_problem()
HAVE_BWRAP = BWRAP_PROBLEM is None
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason=BWRAP_PROBLEM or "")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "none"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_backend(root: Path, isolation: str) -> LocalBackend:
    return LocalBackend(LocalOptions(root=root, isolation=isolation))  # type: ignore[arg-type]


@pytest.fixture
async def sandbox(sandbox_root: Path, request: pytest.FixtureRequest) -> AsyncIterator[asb.Sandbox]:
    backend = make_backend(sandbox_root, request.param)
    sb = await asb.Sandbox.create(backend=backend)
    try:
        yield sb
    finally:
        await sb.destroy()
        await backend.aclose()


def _processes_with(token: str) -> list[int]:
    """Host pids of live (non-zombie) processes whose command line contains ``token``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry))
    return found


async def _until_gone(token: str, within: float = 10.0) -> list[int]:
    """Wait (bounded) for every process carrying ``token`` to end; the survivors, if any."""
    limit = time.monotonic() + within
    while True:
        alive = _processes_with(token)
        if not alive or time.monotonic() > limit:
            return alive
        await anyio.sleep(0.05)


def _sleep_token() -> str:
    """A unique ``sleep`` duration, so the test can find exactly its own processes."""
    return f"{1000 + uuid.uuid4().int % 9000}.{uuid.uuid4().int % 10**6:06d}"


# -- the jail ------------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize("sandbox", ["bwrap"], indirect=True)
class TestJail:
    async def test_runs_as_uid_1000_without_capabilities(self, sandbox: asb.Sandbox) -> None:
        r = await sandbox.exec("id -u; id -g; grep CapEff /proc/self/status")
        uid, gid, caps = r.stdout.splitlines()
        assert (uid, gid) == ("1000", "1000")
        assert int(caps.split()[1], 16) == 0

    async def test_system_is_read_only(self, sandbox: asb.Sandbox) -> None:
        for target in ("/etc/asb-probe", "/usr/asb-probe", "/asb-probe"):
            r = await sandbox.exec(["sh", "-c", 'echo x > "$1"', "sh", target])
            assert r.exit_code != 0, target
            assert not os.path.exists(target)
        with pytest.raises(asb.PermissionDenied):
            await sandbox.write_file("/etc/asb-probe", b"x")
        with pytest.raises(asb.PermissionDenied):
            await sandbox.write_file("/usr/bin/asb-probe", b"x")

    async def test_workspace_and_tmp_are_writable_and_persist(self, sandbox: asb.Sandbox) -> None:
        assert sandbox.info.workdir == "/workspace"
        r = await sandbox.exec("echo one > /workspace/a && echo two > /tmp/b && pwd")
        assert r.stdout == "/workspace\n"
        r = await sandbox.exec("cat /workspace/a /tmp/b")
        assert r.stdout == "one\ntwo\n"
        assert await sandbox.read_file("/tmp/b") == b"two\n"
        await sandbox.write_file("/tmp/c", b"three")
        assert (await sandbox.exec(["cat", "/tmp/c"])).stdout == "three"

    async def test_private_pid_namespace(self, sandbox: asb.Sandbox) -> None:
        r = await sandbox.exec("ls /proc | grep -c '^[0-9]'")
        # bwrap's init, the shell, ls and grep: nothing of the host's processes.
        assert int(r.stdout) < 10

    async def test_clean_environment(self, sandbox: asb.Sandbox) -> None:
        secret = "ASB_TEST_SECRET_" + uuid.uuid4().hex
        os.environ[secret] = "1"
        try:
            r = await sandbox.exec(["env"], env={"EXTRA": "yes"})
        finally:
            del os.environ[secret]
        names = {line.split("=", 1)[0] for line in r.stdout.splitlines()}
        assert secret not in names
        assert {"PATH", "HOME", "LANG", "EXTRA"} <= names

    async def test_symlinks_cannot_lead_file_operations_out(
        self, sandbox: asb.Sandbox, tmp_path: Path
    ) -> None:
        outside = tmp_path / "outside.txt"
        outside.write_text("host secret")
        # Jail semantics: an absolute target is a path of the jail, where it does not exist.
        await sandbox.exec(["ln", "-s", str(outside), "/workspace/abs"])
        await sandbox.exec(["ln", "-s", "../../../../../../" + str(outside), "/workspace/rel"])
        for link in ("/workspace/abs", "/workspace/rel"):
            with pytest.raises(asb.FileNotFound):
                await sandbox.read_file(link)
        # A write through a link into the read-only system is refused, and nothing is written.
        await sandbox.exec(["ln", "-s", "/etc", "/workspace/etc"])
        with pytest.raises(asb.PermissionDenied):
            await sandbox.write_file("/workspace/etc/asb-probe", b"x")
        assert not os.path.exists("/etc/asb-probe")
        # A link staying inside the workspace works like it does for the jail's commands.
        await sandbox.write_file("/workspace/real.txt", b"inside")
        await sandbox.exec(["ln", "-s", "/workspace/real.txt", "/workspace/inner"])
        assert await sandbox.read_file("/workspace/inner") == b"inside"
        await sandbox.write_file("/workspace/inner", b"rewritten")
        assert (await sandbox.exec(["cat", "/workspace/real.txt"])).stdout == "rewritten"

    async def test_native_file_operations_stay_in_the_jail(
        self, sandbox: asb.Sandbox, tmp_path: Path
    ) -> None:
        victim = tmp_path / "victim"
        victim.mkdir()
        (victim / "keep.txt").write_text("keep")
        await sandbox.exec(["ln", "-s", str(victim), "/workspace/abs"])
        await sandbox.exec(["ln", "-s", "/usr", "/workspace/usr"])
        assert (await sandbox.stat("/workspace/abs")).type == "symlink"
        with pytest.raises(asb.FileNotFound):  # the jail has no such directory
            await sandbox.list_dir("/workspace/abs")
        await sandbox.remove("/workspace/abs", recursive=True)  # removes the link only
        assert (victim / "keep.txt").read_text() == "keep"
        with pytest.raises(asb.PermissionDenied):
            await sandbox.remove("/workspace/usr/bin/sh")
        with pytest.raises(asb.PermissionDenied):
            await sandbox.mkdir("/workspace/usr/asb-probe")
        with pytest.raises(asb.PermissionDenied):
            await sandbox.remove("/workspace", recursive=True)
        with pytest.raises(asb.PermissionDenied):
            await sandbox.remove("/etc/passwd")
        assert os.path.exists("/etc/passwd")
        names = [e.name for e in await sandbox.list_dir("/usr")]
        assert "bin" in names
        assert "workspace" in [e.name for e in await sandbox.list_dir("/")]
        await sandbox.mkdir("/tmp/d/e")
        await sandbox.write_file("/tmp/d/e/f", b"1")
        with pytest.raises(asb.IsADirectory):
            await sandbox.remove("/tmp/d")
        await sandbox.remove("/tmp/d", recursive=True)
        assert not await sandbox.exists("/tmp/d")
        with pytest.raises(asb.InvalidPath):
            await sandbox.list_dir("/etc/passwd")

    async def test_file_errors(self, sandbox: asb.Sandbox) -> None:
        with pytest.raises(asb.FileNotFound):
            await sandbox.read_file("/workspace/missing")
        with pytest.raises(asb.FileNotFound):
            await sandbox.read_file("/nowhere/at/all")
        with pytest.raises(asb.IsADirectory):
            await sandbox.read_file("/workspace")
        with pytest.raises(asb.IsADirectory):
            await sandbox.read_file("/usr")
        assert b"root" in await sandbox.read_file("/etc/passwd")

    async def test_command_not_found_and_not_executable(self, sandbox: asb.Sandbox) -> None:
        r = await sandbox.exec(["asb-no-such-command"])
        assert r.exit_code == 127
        await sandbox.write_file("script.sh", b"#!/bin/sh\necho hi\n")
        r = await sandbox.exec(["./script.sh"])
        assert r.exit_code == 126
        await sandbox.exec(["chmod", "+x", "script.sh"])
        assert (await sandbox.exec(["./script.sh"])).stdout == "hi\n"


# -- network ---------------------------------------------------------------------------------


class _Server:
    """A TCP server on this host answering each connection with a token."""

    def __init__(self, host: str) -> None:
        self.token = uuid.uuid4().hex
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.sendall(self.token.encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _host_addresses() -> list[str]:
    """This host's IPv4 addresses: loopback, plus a non-loopback one when there is one."""
    found = ["127.0.0.1"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        found += [a for a in out.split() if "." in a and not a.startswith("127.")][:1]
    return found


_PROBE = textwrap.dedent(
    """
    import socket, sys
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
            print(s.recv(100).decode())
    except OSError as exc:
        print("blocked:", exc)
    """
)


@needs_bwrap
@pytest.mark.parametrize("address", _host_addresses())
async def test_network_none_blocks_egress_to_the_host(sandbox_root: Path, address: str) -> None:
    server = _Server(address)
    backend = make_backend(sandbox_root, "bwrap")
    try:
        async with await asb.Sandbox.create(backend=backend, network="open") as open_sb:
            r = await open_sb.exec(["python3", "-c", _PROBE, server.host, str(server.port)])
            assert server.token in r.stdout, "control: an open sandbox reaches the server"
        before = server.connections
        async with await asb.Sandbox.create(backend=backend, network="none") as closed:
            r = await closed.exec(["python3", "-c", _PROBE, server.host, str(server.port)])
            assert r.stdout.startswith("blocked:"), r.stdout
            assert server.token not in r.stdout
        assert server.connections == before
    finally:
        server.close()
        await backend.aclose()


async def test_network_policies_the_backend_cannot_honour(sandbox_root: Path) -> None:
    unjailed = make_backend(sandbox_root, "none")
    with pytest.raises(asb.Unsupported):
        await asb.Sandbox.create(backend=unjailed, network="none")
    allow = asb.NetworkPolicy(mode="allowlist", allow=("10.0.0.1",))
    for mode in (["bwrap"] if HAVE_BWRAP else []) + ["none"]:
        with pytest.raises(asb.Unsupported):
            await asb.Sandbox.create(backend=make_backend(sandbox_root, mode), network=allow)
    with pytest.raises(asb.Unsupported):
        await asb.Sandbox.create(backend=unjailed, image="python:3.12")
    assert not sandbox_root.exists() or list(sandbox_root.iterdir()) == []


# -- choosing the isolation ------------------------------------------------------------------


def test_bwrap_missing_is_a_config_error(
    sandbox_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(asb.ConfigError, match="bwrap"):
        make_backend(sandbox_root, "bwrap")
    auto = make_backend(sandbox_root, "auto")
    assert auto.isolation == "none"
    assert not auto.capabilities.isolated
    assert not auto.capabilities.network_none


async def test_isolation_none_works_and_warns(
    sandbox_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_backend(sandbox_root, "none")
    with caplog.at_level(logging.WARNING, logger="agent_sandbox.local"):
        async with await asb.Sandbox.create(backend=backend) as sb:
            assert any("NOT isolated" in rec.getMessage() for rec in caplog.records)
            assert sb.info.metadata["isolation"] == "none"
            assert os.path.isdir(sb.info.workdir)
            r = await sb.exec("pwd; echo $HOME")
            assert r.stdout.splitlines() == [sb.info.workdir, sb.info.workdir]
            await sb.write_file("f.txt", b"host file")
            assert Path(sb.info.workdir, "f.txt").read_bytes() == b"host file"
    assert not backend.capabilities.isolated


@needs_bwrap
def test_auto_prefers_bwrap(sandbox_root: Path) -> None:
    backend = make_backend(sandbox_root, "auto")
    assert backend.isolation == "bwrap"
    assert backend.capabilities.isolated
    assert backend.capabilities.network_none


def test_registered_as_the_default_provider() -> None:
    from agent_sandbox import registry

    assert registry.load("local") is LocalBackend


# -- state on disk ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_state_survives_a_new_backend(sandbox_root: Path, mode: str) -> None:
    first = make_backend(sandbox_root, mode)
    sb = await asb.Sandbox.create(backend=first, labels={"team": "t1"}, env={"GREETING": "hi"})
    try:
        await sb.write_file("kept.txt", b"kept")
        assert sb.id.startswith("loc-")
        state = json.loads((sandbox_root / sb.id / "state.json").read_text())
        assert state["isolation"] == mode
        second = make_backend(sandbox_root, mode)
        info = await second.connect(sb.id)
        assert info.id == sb.id
        assert info.workdir == sb.info.workdir
        assert info.labels["team"] == "t1"
        assert [i.id for i in await second.list({"team": "t1"})] == [sb.id]
        assert await second.list({"team": "other"}) == []
        again = await asb.Sandbox.connect(sb.id, backend=second)
        assert await again.read_file("kept.txt") == b"kept"
        assert (await again.exec("echo $GREETING")).stdout == "hi\n"
        await second.destroy(sb.id)
        with pytest.raises(asb.SandboxNotFound):
            await first.connect(sb.id)
        with pytest.raises(asb.SandboxNotFound):
            await sb.exec("true")
    finally:
        await sb.destroy()


async def test_unknown_and_malformed_ids(sandbox_root: Path) -> None:
    backend = make_backend(sandbox_root, "none")
    for bad in ("loc-00000000000000000000", "../etc", "", "loc-../../x"):
        with pytest.raises(asb.SandboxNotFound):
            await backend.connect(bad)
        await backend.destroy(bad)  # idempotent, and never touches anything outside root


# -- processes -------------------------------------------------------------------------------


@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_timeout_kills_children_and_grandchildren(sandbox: asb.Sandbox) -> None:
    token = _sleep_token()
    script = f"sleep {token} & (sleep {token} & sleep {token}) & setsid sleep {token} & wait"
    with pytest.raises(asb.CommandTimeout) as caught:
        await sandbox.exec(script, timeout=1)
    assert caught.value.code == "command_timeout"
    assert await _until_gone(token) == []


@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_leaving_a_stream_early_kills_the_command(sandbox: asb.Sandbox) -> None:
    token = _sleep_token()
    stream = sandbox.exec_stream(f"echo started; sleep {token} & sleep {token}")
    async for event in stream:
        assert event.kind == "stdout"
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert await _until_gone(token) == []


@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_stdin_larger_than_a_pipe(sandbox: asb.Sandbox) -> None:
    data = os.urandom(3 * 1024 * 1024)
    r = await sandbox.exec(["sh", "-c", "cat; echo done >&2"], stdin=data)
    assert r.stdout_bytes == data
    assert r.stderr == "done\n"


@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_missing_working_directory(sandbox: asb.Sandbox) -> None:
    with pytest.raises(asb.FileNotFound):
        await sandbox.exec(["true"], cwd="no/such/dir")


@pytest.mark.parametrize("mode", MODES)
async def test_destroy_kills_running_commands(sandbox_root: Path, mode: str) -> None:
    backend = make_backend(sandbox_root, mode)
    sb = await asb.Sandbox.create(backend=backend)
    token = _sleep_token()
    outcome: list[BaseException | asb.ExecResult] = []

    async def run() -> None:
        try:
            outcome.append(await sb.exec(f"sleep {token}"))
        except Exception as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while not _processes_with(token):
            await anyio.sleep(0.02)
        await sb.destroy()
        await sb.destroy()  # idempotent
    assert await _until_gone(token) == []
    assert not (sandbox_root / sb.id).exists()
    assert len(outcome) == 1


_OTHER_PROCESS = """
import asyncio, sys
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.local._jail import probe
from agent_sandbox.models import ExecOptions

async def main():
    backend = LocalBackend(LocalOptions(root=sys.argv[1], isolation=sys.argv[2]))
    print("ready", flush=True)
    await backend.exec(sys.argv[3], ["sleep", sys.argv[4]], ExecOptions())

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
async def test_sweep_removes_expired_sandboxes_and_kills_their_commands(
    sandbox_root: Path, mode: str
) -> None:
    backend = make_backend(sandbox_root, mode)
    doomed = await asb.Sandbox.create(backend=backend, ttl_seconds=3600)
    keeper = await asb.Sandbox.create(backend=backend, ttl_seconds=3 * 3600)
    token = _sleep_token()
    # Another process runs a command in the sandbox, as a crashed agent would have left it.
    other = subprocess.Popen(
        [sys.executable, "-c", _OTHER_PROCESS, str(sandbox_root), mode, doomed.id, token],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        limit = time.monotonic() + 30
        while not _processes_with(token):
            assert other.poll() is None, other.stderr.read() if other.stderr else ""
            assert time.monotonic() < limit, "the other process never started its command"
            await anyio.sleep(0.05)
        await anyio.sleep(0.2)  # past the moment a running command is recorded on disk
        later = datetime.now(timezone.utc) + timedelta(hours=2)
        swept = await backend.sweep(now=later)
        assert swept == [doomed.id]
        assert await _until_gone(token) == []
        assert not (sandbox_root / doomed.id).exists()
        assert [i.id for i in await backend.list()] == [keeper.id]
    finally:
        other.kill()
        other.wait()
        assert other.stdout is not None
        assert other.stderr is not None
        other.stdout.close()
        other.stderr.close()
        await keeper.destroy()
        await doomed.destroy()


async def test_sweep_with_labels_touches_only_matching_sandboxes(sandbox_root: Path) -> None:
    backend = make_backend(sandbox_root, "none")
    mine = await asb.Sandbox.create(backend=backend, ttl_seconds=60, labels={"team": "a"})
    theirs = await asb.Sandbox.create(backend=backend, ttl_seconds=60, labels={"team": "b"})
    try:
        later = datetime.now(timezone.utc) + timedelta(hours=2)
        assert await backend.sweep(now=later, labels={"team": "a"}) == [mine.id]
        assert [i.id for i in await backend.list()] == [theirs.id]
    finally:
        await mine.destroy()
        await theirs.destroy()


@pytest.mark.parametrize("mode", MODES)
async def test_expired_sandbox_is_gone_and_its_command_stopped(
    sandbox_root: Path, mode: str
) -> None:
    backend = make_backend(sandbox_root, mode)
    sb = await asb.Sandbox.create(backend=backend, ttl_seconds=1.5)
    try:
        with pytest.raises(asb.SandboxNotFound, match="TTL"):
            await sb.exec(["sleep", "30"])
        with pytest.raises(asb.SandboxNotFound):
            await backend.connect(sb.id)
        assert await backend.list() == []
        assert await backend.sweep() == [sb.id]
        assert not (sandbox_root / sb.id).exists()
    finally:
        await sb.destroy()


@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_write_is_atomic_and_keeps_the_mode(sandbox: asb.Sandbox) -> None:
    await sandbox.write_file("run.sh", b"#!/bin/sh\necho one\n")
    await sandbox.exec(["chmod", "755", "run.sh"])
    await sandbox.write_file("run.sh", b"#!/bin/sh\necho two\n")
    assert (await sandbox.exec(["./run.sh"])).stdout == "two\n"
    listing = await sandbox.exec(["ls", "-a"])
    assert ".part" not in listing.stdout
    with pytest.raises(asb.IsADirectory):
        await sandbox.write_file(".", b"x")


# -- resources -------------------------------------------------------------------------------

_ALLOCATE = "import sys; b = bytearray(int(sys.argv[1]) * 1024 * 1024); print('allocated')"


@pytest.mark.parametrize("mode", MODES)
async def test_memory_and_cpu_limits_through_cgroups(sandbox_root: Path, mode: str) -> None:
    backend = make_backend(sandbox_root, mode)
    if not backend.capabilities.resources:
        pytest.skip("no writable cgroup hierarchy with cpu and memory controllers here")
    async with await asb.Sandbox.create(backend=backend, memory_mib=64, cpus=0.5) as sb:
        big = await sb.exec(["python3", "-c", _ALLOCATE, "256"])
        assert big.exit_code != 0
        assert "allocated" not in big.stdout
        small = await sb.exec(["python3", "-c", _ALLOCATE, "8"])
        assert small.stdout == "allocated\n"
        groups = sb.info.metadata["cgroups"].split(",")
        assert all(Path(g).is_dir() for g in groups)
        quotas = [Path(g, f) for g in groups for f in ("cpu.max", "cpu.cfs_quota_us")]
        quota = next(p.read_text().split()[0] for p in quotas if p.exists())
        assert quota == "50000"
    assert not any(Path(g).exists() for g in groups)


@pytest.mark.parametrize("mode", MODES)
async def test_memory_limit_without_cgroups_is_an_address_space_limit(
    sandbox_root: Path, mode: str
) -> None:
    backend = make_backend(sandbox_root, mode)
    # As on a host where no cgroup is writable:
    backend.cgroups = None
    backend.capabilities = backend.capabilities.model_copy(update={"resources": False})
    with pytest.raises(asb.Unsupported):
        backend.check_spec(asb.SandboxSpec(cpus=1))
    async with await asb.Sandbox.create(backend=backend, memory_mib=256) as sb:
        assert "cgroups" not in sb.info.metadata
        big = await sb.exec(["python3", "-c", _ALLOCATE, "512"])
        assert big.exit_code != 0
        assert "MemoryError" in big.stderr
        small = await sb.exec(["python3", "-c", _ALLOCATE, "8"])
        assert small.stdout == "allocated\n"


async def test_idle_timeout(sandbox_root: Path) -> None:
    backend = make_backend(sandbox_root, "none")
    sb = await asb.Sandbox.create(backend=backend, idle_timeout_seconds=1.0)
    try:
        # A command longer than the idle timeout is activity, not idleness.
        assert (await sb.exec("sleep 1.5; echo done")).stdout == "done\n"
        for _ in range(4):  # activity more often than the timeout keeps it alive
            await anyio.sleep(0.4)
            await sb.write_file("beat", b"x")
        assert (await backend.connect(sb.id)).id == sb.id
        await anyio.sleep(1.5)
        with pytest.raises(asb.SandboxNotFound):
            await backend.connect(sb.id)
        other = make_backend(sandbox_root, "none")
        assert await other.sweep() == [sb.id]
    finally:
        await sb.destroy()


# -- the sandbox's host user and process limit ----------------------------------------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs a client running as root")


async def test_doctor_reports_the_user_and_the_process_limit(sandbox_root: Path) -> None:
    backend = make_backend(sandbox_root, "none")
    checks = {c.name: c for c in await backend.doctor()}
    assert "pids" in checks
    if backend.pids_by is not None:
        assert checks["pids"].ok
        assert "at most 4096 processes" in checks["pids"].detail
    else:
        assert not checks["pids"].ok
        assert "NOT limited" in checks["pids"].detail
    unlimited = LocalBackend(LocalOptions(root=sandbox_root, isolation="none", pids_limit=None))
    assert {c.name: c for c in await unlimited.doctor()}["pids"].ok
    if os.geteuid() == 0:
        assert checks["user"].ok
        assert "unprivileged uid" in checks["user"].detail
        assert default_root() == Path("/var/lib/agent-sandbox/local")
    else:
        assert "user" not in checks


@pytest.mark.parametrize("mode", MODES)
async def test_pids_limit_is_recorded_and_can_be_turned_off(sandbox_root: Path, mode: str) -> None:
    backend = LocalBackend(LocalOptions(root=sandbox_root, isolation=mode, pids_limit=100))  # type: ignore[arg-type]
    if backend.pids_by is None:
        pytest.skip(f"no process-count limit on this host: {backend.pids_detail}")
    async with await asb.Sandbox.create(backend=backend) as sb:
        assert sb.info.metadata["pids_limit"] == "100"
        if backend.pids_by == "cgroup":
            limits = [Path(g, "pids.max") for g in sb.info.metadata["cgroups"].split(",")]
            assert [p.read_text() for p in limits if p.exists()] == ["100\n"]
    off = LocalBackend(LocalOptions(root=sandbox_root, isolation=mode, pids_limit=None))  # type: ignore[arg-type]
    async with await asb.Sandbox.create(backend=off) as sb:
        assert "pids_limit" not in sb.info.metadata
        assert "cgroups" not in sb.info.metadata


def _members(group: str) -> set[int]:
    return {int(line) for line in Path(group, "cgroup.procs").read_text().split()}


@pytest.mark.parametrize("mode", MODES)
async def test_commands_run_inside_every_group_of_their_sandbox(
    sandbox_root: Path, mode: str
) -> None:
    """A command, held or in the background, runs in each of its sandbox's cgroups (every
    process of it, the jail's included), however the join is done."""
    backend = make_backend(sandbox_root, mode)
    if backend.pids_by != "cgroup":
        pytest.skip(f"no pids cgroup on this host: {backend.pids_detail}")
    async with await asb.Sandbox.create(backend=backend) as sb:
        groups = sb.info.metadata["cgroups"].split(",")
        held, background = _sleep_token(), _sleep_token()
        process = await sb.start(["sleep", background])
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sb.exec, ["sleep", held])
            with anyio.fail_after(10):
                while not (_processes_with(held) and _processes_with(background)):
                    await anyio.sleep(0.02)
            for token in (held, background):  # in a jail: bubblewrap's processes, then sleep
                for pid in _processes_with(token):
                    assert all(pid in _members(group) for group in groups), token
            tasks.cancel_scope.cancel()
        await process.kill()
    assert await _until_gone(held) == []
    assert await _until_gone(background) == []


@as_root
async def test_sandboxes_of_root_cannot_touch_each_other_even_without_a_jail(
    sandbox_root: Path,
) -> None:
    backend = make_backend(sandbox_root, "none")
    async with (
        await asb.Sandbox.create(backend=backend) as one,
        await asb.Sandbox.create(backend=backend) as two,
    ):
        assert one.info.metadata["uid"] != two.info.metadata["uid"]
        await one.write_file("secret", b"one's")
        theirs = Path(one.info.metadata["path"], "workspace", "secret")
        peek = await two.exec(["cat", str(theirs)])
        assert peek.exit_code != 0
        assert "Permission denied" in peek.stderr
        token = _sleep_token()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(one.exec, ["sleep", token])
            with anyio.fail_after(10):
                while not _processes_with(token):
                    await anyio.sleep(0.02)
            (pid,) = _processes_with(token)
            kill = await two.exec(["kill", "-9", str(pid)])
            assert kill.exit_code != 0
            assert _processes_with(token) == [pid]
            tasks.cancel_scope.cancel()
    assert await _until_gone(token) == []


@as_root
async def test_a_root_the_sandbox_users_cannot_reach_is_refused(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    backend = make_backend(closed / "state", "none")
    root_check = {c.name: c for c in await backend.doctor()}["root"]
    assert not root_check.ok
    assert str(closed) in root_check.detail
    with pytest.raises(asb.ConfigError, match=f"chmod o\\+x {closed}"):
        await backend.create(asb.SandboxSpec())
    assert [p.name for p in (closed / "state").iterdir() if p.name.startswith("loc-")] == []


@as_root
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cut", ["moved aside", "state lost"])
async def test_sweep_finishes_a_destroy_cut_short(sandbox_root: Path, mode: str, cut: str) -> None:
    """Whatever a crashed destroy (or create) left is found and freed by the next sweep: the
    processes still running as the sandbox's uid, its cgroups, its uid."""
    backend = make_backend(sandbox_root, mode)
    sb = await asb.Sandbox.create(backend=backend)
    uid = int(sb.info.metadata["uid"])
    groups = [Path(g) for g in sb.info.metadata.get("cgroups", "").split(",") if g]
    claim = sandbox_root / ".uids" / str(uid)
    assert os.readlink(claim) == sb.id
    straggler = subprocess.Popen(["sleep", "300"], user=uid, group=uid, extra_groups=[])
    try:
        if cut == "moved aside":  # the first thing destroy does, then the client died
            os.rename(sandbox_root / sb.id, sandbox_root / f".trash-{sb.id}-0badc0de")
        else:  # the directory went without the sandbox's state being read
            shutil.rmtree(sandbox_root / sb.id)
        assert await make_backend(sandbox_root, mode).sweep() == []
        assert straggler.wait(timeout=10) == -9
        assert not claim.exists()
        assert not any(g.exists() for g in groups)
        assert sorted(p.name for p in sandbox_root.iterdir()) == [".reaper", ".uids"]
    finally:
        straggler.kill()
        straggler.wait()


async def test_doctor_reports_root_isolation_and_resources(
    sandbox_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = {c.name: c for c in await make_backend(sandbox_root, "none").doctor()}
    assert checks["root"].ok
    assert checks["isolation"].ok  # chosen on purpose
    assert "NOT isolated" in checks["isolation"].detail
    assert "resources" in checks
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    fallback = {c.name: c for c in await make_backend(sandbox_root, "auto").doctor()}
    assert not fallback["isolation"].ok  # fell back: flagged
    if HAVE_BWRAP:
        monkeypatch.undo()
        jailed = {c.name: c for c in await make_backend(sandbox_root, "bwrap").doctor()}
        assert jailed["isolation"].ok
        assert "bubblewrap" in jailed["isolation"].detail


@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_destroy_removes_what_commands_locked_down(sandbox: asb.Sandbox) -> None:
    await sandbox.exec(
        "mkdir -p locked/inner && touch locked/inner/f && chmod 000 locked/inner locked"
    )
    directory = Path(sandbox.info.metadata["path"])
    await sandbox.destroy()
    assert not directory.exists()


@pytest.mark.parametrize("mode", MODES)
async def test_root_reached_through_a_symlink(tmp_path: Path, mode: str) -> None:
    real = tmp_path / "real-root"
    real.mkdir()
    (tmp_path / "link-root").symlink_to(real)
    backend = make_backend(tmp_path / "link-root", mode)
    async with await asb.Sandbox.create(backend=backend) as sb:
        await sb.write_file("a/b.txt", b"through a link")
        assert await sb.read_file("a/b.txt") == b"through a link"
        assert [e.name for e in await sb.list_dir("a")] == ["b.txt"]
        again = make_backend(tmp_path / "link-root", mode)
        assert (await again.connect(sb.id)).id == sb.id
