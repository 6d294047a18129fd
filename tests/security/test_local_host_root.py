"""Attacks on the host from a local sandbox whose client runs as root (CI does, and so do many
agent deployments in containers): the sandbox's code must never act as host root.

bubblewrap run by root with ``--unshare-user --uid 1000`` maps the jail's user onto host uid 0:
it could then write host-global sysctls (``kernel.core_pattern`` with a pipe runs a workspace
file as host root on the next crash), trigger SysRq, drop caches, read ``/etc/shadow``. Without
isolation the commands would simply be root. Every attack here only *opens* a target for
writing and closes it again, never writes a byte, and the host's value is read back unchanged.
"""

# ruff: noqa: ASYNC240
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions, _jail, _user
from agent_sandbox.local._jail import probe

pytestmark = pytest.mark.anyio


def _bwrap_problem() -> str | None:
    found = shutil.which("bwrap")
    if found is None:
        return "bubblewrap (bwrap) is not installed on this machine"
    problem = probe(found)
    return f"bwrap cannot build a jail here: {problem}" if problem else None


BWRAP_PROBLEM = _bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=BWRAP_PROBLEM or "")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "none"]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a client running as root")

# Opens each target for writing (write nothing) and says which ones opened.
_OPEN_FOR_WRITING = """
import os, sys
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_WRONLY))
        print("OPENED", path)
    except OSError as exc:
        print("refused", path, exc.errno)
"""
_HOST_GLOBAL = [
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/vm/drop_caches",
    "/proc/sysrq-trigger",
    "/proc/sys/kernel/hostname",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sandbox(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[asb.Sandbox]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation=request.param))
    sb = await asb.Sandbox.create(backend=backend)
    try:
        yield sb
    finally:
        await sb.destroy()


@as_root
@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_cannot_write_host_sysctls(sandbox: asb.Sandbox) -> None:
    before = Path("/proc/sys/kernel/core_pattern").read_bytes()
    result = await sandbox.exec(["python3", "-c", _OPEN_FOR_WRITING, *_HOST_GLOBAL])
    assert result.exit_code == 0, result.stderr
    assert "OPENED" not in result.stdout, result.stdout
    assert result.stdout.count("refused") == len(_HOST_GLOBAL)
    assert Path("/proc/sys/kernel/core_pattern").read_bytes() == before


@as_root
@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_background_commands_cannot_write_host_sysctls(sandbox: asb.Sandbox) -> None:
    """A command started in the background runs under a supervisor of its own: it drops to the
    sandbox's uid all the same."""
    before = Path("/proc/sys/kernel/core_pattern").read_bytes()
    script = _OPEN_FOR_WRITING + "open('bg', 'w').write(open('/proc/self/status').read())\n"
    process = await sandbox.start(["python3", "-c", script, *_HOST_GLOBAL])
    result = await process.wait()
    assert result.exit_code == 0, result.stderr
    assert "OPENED" not in result.stdout, result.stdout
    assert result.stdout.count("refused") == len(_HOST_GLOBAL)
    made = Path(sandbox.info.metadata["path"], "workspace", "bg")
    assert made.stat().st_uid == int(sandbox.info.metadata["uid"])
    assert "CapEff:\t0000000000000000" in made.read_text()
    assert Path("/proc/sys/kernel/core_pattern").read_bytes() == before


@needs_bwrap
async def test_host_kernel_knobs_are_read_only_in_the_jail(tmp_path: Path) -> None:
    """/proc/sys, /proc/sysrq-trigger, /proc/irq and /proc/bus are mounted read-only in the jail
    (whoever runs the client): a write is refused by the mount, not only by permissions."""
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="bwrap"))
    async with await asb.Sandbox.create(backend=backend) as sb:
        check = (
            "import os\n"
            "for p in ('/proc/sys', '/proc/sys/kernel', '/proc/sysrq-trigger', '/proc/irq',"
            " '/proc/bus'):\n"
            "    if os.path.exists(p):\n"
            "        print(p, 'ro' if os.statvfs(p).f_flag & os.ST_RDONLY else 'RW')\n"
            "print('/proc/self', 'ro' if os.statvfs('/proc/self').f_flag & os.ST_RDONLY else 'rw')\n"
        )
        result = await sb.exec(["python3", "-c", check])
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.splitlines()
        assert "/proc/sys ro" in lines
        assert "/proc/sys/kernel ro" in lines
        assert not [line for line in lines if line.endswith(" RW")], result.stdout
        assert "/proc/self rw" in lines  # the rest of /proc works as before
        write = await sb.exec("echo x > /proc/sys/kernel/hostname")
        assert write.exit_code != 0
        assert "Read-only file system" in write.stderr


@as_root
async def test_probe_refuses_a_jail_whose_user_is_host_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net under the uid drop: were the drop skipped (bubblewrap run by root, the
    defect this file guards against), the probe's canary sees the jail's user own files as uid
    0, and bubblewrap is refused. ``dedicated`` is switched off only to build that jail."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap (bwrap) is not installed on this machine")
    monkeypatch.setattr(_user, "dedicated", lambda: False)
    _jail.probe.cache_clear()
    try:
        problem = probe(bwrap)
        assert problem is not None
        assert "host root" in problem
        with pytest.raises(asb.ConfigError, match="host root"):
            LocalBackend(LocalOptions(root=tmp_path / "state", isolation="bwrap"))
        auto = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="auto"))
        assert auto.isolation == "none"
        isolation = {c.name: c for c in await auto.doctor()}["isolation"]
        assert not isolation.ok
        assert "host root" in isolation.detail
    finally:
        monkeypatch.undo()
        _jail.probe.cache_clear()
    assert probe(bwrap) is None


@as_root
@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_cannot_read_shadow(sandbox: asb.Sandbox) -> None:
    if not os.path.exists("/etc/shadow"):
        pytest.skip("this host has no /etc/shadow")
    result = await sandbox.exec(["cat", "/etc/shadow"])
    assert result.exit_code != 0
    assert result.stdout == ""
    assert "Permission denied" in result.stderr


@as_root
@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_commands_run_as_an_unprivileged_host_uid(sandbox: asb.Sandbox) -> None:
    uid = int(sandbox.info.metadata["uid"])
    assert uid != 0
    assert uid in _user.BLOCK
    result = await sandbox.exec("echo x > made; cat /proc/self/status")
    assert "CapEff:\t0000000000000000" in result.stdout
    assert "NoNewPrivs:\t1" in result.stdout  # setuid programs cannot lead back to root
    # The host sees what the command wrote as that uid (not root), and so can the sandbox's
    # own commands modify what the host-side file operations made for it.
    workspace = Path(sandbox.info.metadata["path"], "workspace")
    assert (workspace / "made").stat().st_uid == uid
    await sandbox.write_file("dir/sub/given.txt", b"from the host")
    assert (workspace / "dir" / "sub" / "given.txt").stat().st_uid == uid
    assert (workspace / "dir").stat().st_uid == uid
    edit = await sandbox.exec("echo more >> dir/sub/given.txt && rm -r dir && echo done")
    assert edit.stdout == "done\n", edit.stderr


@as_root
@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_file_operations_see_behind_no_door_the_sandbox_user_cannot_open(
    sandbox: asb.Sandbox, tmp_path: Path
) -> None:
    """A root client's file operations must not tell what lies in a directory the sandbox's
    user may not search: not a file's size or times, not even whether it exists. They answer
    as the sandbox's own ``stat`` does."""
    if sandbox.info.metadata["isolation"] == "none":
        door = tmp_path / "private"
        door.mkdir(mode=0o700)
        (door / "key").write_text("root only")
        inside = [str(door / "key"), str(door / "missing"), str(door / "missing" / "deeper")]
    else:  # the jail shows the host's /etc: a directory there that root keeps closed
        door = Path("/etc/ssl/private")
        if not door.is_dir() or door.stat().st_mode & 0o001:
            pytest.skip("this host has no /etc/ssl/private closed to other users")
        inside = [str(door / "asb-missing"), *(str(p) for p in door.iterdir())]
    for path in inside:
        own = await sandbox.exec(["stat", path])
        assert own.exit_code != 0
        assert "Permission denied" in own.stderr, (path, own.stderr)
        for operation in (sandbox.stat, sandbox.read_file):
            with pytest.raises(asb.PermissionDenied):
                await operation(path)
        with pytest.raises(asb.PermissionDenied):
            await sandbox.write_file(path, b"x")
    with pytest.raises(asb.PermissionDenied):
        await sandbox.list_dir(str(door))
    # Doors the sandbox's user may pass still answer as before.
    with pytest.raises(asb.FileNotFound):
        await sandbox.stat("/usr/asb-missing")
    assert (await sandbox.stat("/etc/passwd")).type == "file"


@as_root
@needs_bwrap
async def test_read_file_of_the_jail_cannot_read_shadow(tmp_path: Path) -> None:
    """Host-side file operations read the jail's /etc as the jail's user would, not as root."""
    if not os.path.exists("/etc/shadow"):
        pytest.skip("this host has no /etc/shadow")
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="bwrap"))
    async with await asb.Sandbox.create(backend=backend) as sb:
        with pytest.raises(asb.PermissionDenied):
            await sb.read_file("/etc/shadow")
        assert b"root:" in await sb.read_file("/etc/passwd")


@as_root
async def test_without_setpriv_root_refuses_to_run_sandboxes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the jail cannot be made safe, bwrap is refused, and nothing runs as root."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap (bwrap) is not installed on this machine")
    only_bwrap = tmp_path / "bin"
    only_bwrap.mkdir()
    (only_bwrap / "bwrap").symlink_to(bwrap)
    monkeypatch.setenv("PATH", str(only_bwrap))
    _user.find_setpriv.cache_clear()
    _jail.probe.cache_clear()
    try:
        assert "setpriv" in (probe(bwrap) or "")
        with pytest.raises(asb.ConfigError, match="setpriv"):
            LocalBackend(LocalOptions(root=tmp_path / "state", isolation="bwrap"))
        backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
        checks = {c.name: c for c in await backend.doctor()}
        assert not checks["user"].ok
        assert "setpriv" in checks["user"].detail
        with pytest.raises(asb.ConfigError, match="setpriv"):
            await backend.create(asb.SandboxSpec())
        assert await backend.list() == []
    finally:
        monkeypatch.undo()
        _user.find_setpriv.cache_clear()
        _jail.probe.cache_clear()


_ROOT_WITHOUT_SPARE_UIDS = """
import asyncio, sys
import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions

root = sys.argv[1]
try:
    LocalBackend(LocalOptions(root=root, isolation="bwrap"))
    print("bwrap accepted")
except asb.ConfigError as exc:
    print("bwrap refused:", exc)
backend = LocalBackend(LocalOptions(root=root, isolation="none"))

async def main():
    try:
        await backend.create(asb.SandboxSpec())
        print("created")
    except asb.ConfigError as exc:
        print("create refused:", exc)
    user = {c.name: c for c in await backend.doctor()}["user"]
    print("user check:", user.ok, user.detail)

asyncio.run(main())
"""


@as_root
def test_root_without_unprivileged_uids_to_give_runs_nothing(tmp_path: Path) -> None:
    """Root of a user namespace that maps only itself (a rootless container) has no
    unprivileged uid to give a sandbox: bubblewrap is refused, and so is every sandbox, rather
    than run as that root."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    root = tmp_path / "state"
    done = subprocess.run(
        [
            unshare,
            "--user",
            "--map-root-user",
            sys.executable,
            "-c",
            _ROOT_WITHOUT_SPARE_UIDS,
            root,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
        env={**os.environ, "PYTHONPATH": ":".join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bwrap refused:"), done.stdout
    assert "are mapped in this user namespace" in lines[0]
    assert lines[1].startswith("create refused:"), done.stdout
    assert lines[2].startswith("user check: False")
    assert [p.name for p in root.iterdir()] == []
