"""A fork bomb in a local sandbox stays within the sandbox's process limit, and the host survives.

The bomb is real but bounded: every process forks two children down to depth 8 (510 children at
most, which the host takes without harm), each child leaves a mark, every failed fork leaves
another, and the children sleep until killed. With ``pids_limit=64`` most forks must fail.
Each way the limit is enforced is tried where this machine has it: the cgroup ``pids``
controller, ``RLIMIT_NPROC`` on a root client's dedicated uid (a host whose cgroups are not
writable, made here with a private mount namespace), and ``RLIMIT_NPROC`` inside the jail of a
client that is not root. Every test checks that nothing is left: processes, cgroups, directories.
"""

# The bounded waits poll files the sandbox writes, seen from the host (no event to wait on).
# ruff: noqa: ASYNC110, ASYNC240
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions, _user
from agent_sandbox.local._jail import probe

pytestmark = pytest.mark.anyio

LIMIT = 64
DEPTH = 8
BOMB = r"""
import os, sys, time
depth, marks = int(sys.argv[1]), sys.argv[2]
out = os.open(marks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

def grow(level):
    for _ in range(2):
        if level == 0:
            return
        try:
            pid = os.fork()
        except OSError:
            os.write(out, b"-")
            continue
        if pid == 0:
            os.write(out, b"+")
            grow(level - 1)
            time.sleep(300)
            os._exit(0)

grow(depth)
# Wait (bounded) until nothing more happens, then report: made and failed forks.
last, still, end = -1, time.monotonic(), time.monotonic() + 60
while time.monotonic() < end:
    size = os.fstat(out).st_size
    if size != last:
        last, still = size, time.monotonic()
    elif time.monotonic() - still > 1.0:
        break
    time.sleep(0.05)
marks = open(marks).read()
print(marks.count("+"), marks.count("-"))
"""

# Run as a separate client (another uid, or another mount namespace): one sandbox, the bomb,
# destroy; prints what happened as JSON.
CLIENT = r"""
import asyncio, json, sys
import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions

async def main():
    root, isolation, bomb, depth, limit = sys.argv[1:6]
    backend = LocalBackend(LocalOptions(root=root, isolation=isolation, pids_limit=int(limit)))
    async with await asb.Sandbox.create(backend=backend) as sb:
        result = await sb.exec(["python3", "-c", bomb, depth, "marks"], timeout=120)
        print(json.dumps({
            "by": backend.pids_by,
            "stdout": result.stdout,
            "stderr": result.stderr[-2000:],
            "metadata": sb.info.metadata,
        }))

asyncio.run(main())
"""


def _bwrap_problem() -> str | None:
    found = shutil.which("bwrap")
    if found is None:
        return "bubblewrap (bwrap) is not installed on this machine"
    problem = probe(found)
    return f"bwrap cannot build a jail here: {problem}" if problem else None


BWRAP_PROBLEM = _bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=BWRAP_PROBLEM or "")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "none"]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs a client running as root")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _made_failed(stdout: str) -> tuple[int, int]:
    made, failed = (int(n) for n in stdout.split())
    return made, failed


def _alive_as(uid: int) -> list[int]:
    """Host pids of live (non-zombie) processes running as ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            found.append(int(entry))
    return found


def _assert_within_limit(made: int, failed: int) -> None:
    assert made < LIMIT, f"{made} processes made with a limit of {LIMIT}"
    assert failed > 0, "no fork failed: nothing limited the bomb"
    assert subprocess.run(["true"], check=False).returncode == 0  # the host still forks


@pytest.mark.parametrize("mode", MODES)
async def test_fork_bomb_is_contained(tmp_path: Path, mode: str) -> None:
    backend = LocalBackend(
        LocalOptions(root=tmp_path / "state", isolation=mode, pids_limit=LIMIT)  # type: ignore[arg-type]
    )
    if backend.pids_by is None:
        pytest.skip(f"no process-count limit on this host: {backend.pids_detail}")
    sb = await asb.Sandbox.create(backend=backend)
    try:
        groups = [g for g in sb.info.metadata.get("cgroups", "").split(",") if g]
        result = await sb.exec(["python3", "-c", BOMB, str(DEPTH), "marks"], timeout=120)
        assert result.exit_code == 0, result.stderr
        _assert_within_limit(*_made_failed(result.stdout))
        assert sb.info.metadata["pids_limit"] == str(LIMIT)
    finally:
        await sb.destroy()
    assert not Path(sb.info.metadata["path"]).exists()
    assert not any(Path(g).exists() for g in groups)
    if "uid" in sb.info.metadata:
        assert _alive_as(int(sb.info.metadata["uid"])) == []
        assert not (tmp_path / "state" / _user.CLAIMS / sb.info.metadata["uid"]).exists()


@pytest.mark.parametrize("mode", MODES)
async def test_destroy_kills_a_running_fork_bomb(tmp_path: Path, mode: str) -> None:
    backend = LocalBackend(
        LocalOptions(root=tmp_path / "state", isolation=mode, pids_limit=LIMIT)  # type: ignore[arg-type]
    )
    if backend.pids_by is None:
        pytest.skip(f"no process-count limit on this host: {backend.pids_detail}")
    sb = await asb.Sandbox.create(backend=backend)
    groups = [g for g in sb.info.metadata.get("cgroups", "").split(",") if g]
    marks = Path(sb.info.metadata["path"], "workspace", "marks")

    async def bomb() -> None:
        with contextlib.suppress(asb.SandboxError):
            await sb.exec(["python3", "-c", BOMB, str(DEPTH), "marks"], timeout=120)

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(bomb)
            with anyio.fail_after(60):
                while not (marks.exists() and marks.stat().st_size > LIMIT // 2):
                    await anyio.sleep(0.05)
            await sb.destroy()  # the bomb is at its limit, its processes asleep
    finally:
        await sb.destroy()
    assert not Path(sb.info.metadata["path"]).exists()
    assert not any(Path(g).exists() for g in groups)
    if "uid" in sb.info.metadata:
        assert _alive_as(int(sb.info.metadata["uid"])) == []


def _run_client(
    argv: list[str], *, user: int | None = None, env: dict[str, str] | None = None
) -> dict[str, object]:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        env=env,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@as_root
@pytest.mark.parametrize("mode", MODES)
def test_without_cgroups_root_limits_the_sandbox_uid(tmp_path: Path, mode: str) -> None:
    """A root client on a host whose cgroups it cannot write (a private mount namespace hides
    them here) bounds the sandbox through RLIMIT_NPROC of its dedicated uid."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    hide = 'mount -t tmpfs -o ro,size=4k none /sys/fs/cgroup && exec "$@"'
    root = tmp_path / "state"
    report = _run_client(
        [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            hide,
            "sh",
            sys.executable,
            "-c",
            CLIENT,
            str(root),
            mode,
            BOMB,
            str(DEPTH),
            str(LIMIT),
        ],
    )
    assert report["by"] == "uid"
    _assert_within_limit(*_made_failed(str(report["stdout"])))
    metadata = report["metadata"]
    assert isinstance(metadata, dict)
    assert "cgroups" not in metadata
    assert _alive_as(int(metadata["uid"])) == []
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
    assert list((root / _user.CLAIMS).iterdir()) == []


def _python_for(uid: int) -> tuple[list[str], dict[str, str]] | None:
    """A Python interpreter (with this checkout importable) that ``uid`` can run, if any."""
    here = Path(__file__).resolve().parents[2]
    site = next((p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)), None)
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": f"{here}:{site}"}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        try:
            check = subprocess.run(
                [python, "-c", "import agent_sandbox, pydantic"],
                user=uid,
                group=uid,
                extra_groups=[],
                env=env,
                cwd="/",
                capture_output=True,
                check=False,
            )
        except OSError:  # cannot even start it
            continue
        if check.returncode == 0:
            return [python], env
    return None


@as_root
@needs_bwrap
def test_a_client_that_is_not_root_limits_each_jail(tmp_path: Path) -> None:
    """A client that is not root, without a writable pids cgroup, bounds each jail through
    RLIMIT_NPROC set inside it (counted per user namespace), and runs as itself."""
    uid = _user.probe_uid()
    python = _python_for(uid)
    if python is None:
        pytest.skip("no Python interpreter with this checkout that an unprivileged user can run")
    argv, env = python
    root = tmp_path / "state"
    root.mkdir()
    os.chown(root, uid, uid)
    try:
        report = _run_client(
            [*argv, "-c", CLIENT, str(root), "bwrap", BOMB, str(DEPTH), str(LIMIT)],
            user=uid,
            env=env,
        )
        assert report["by"] == "jail"
        _assert_within_limit(*_made_failed(str(report["stdout"])))
        metadata = report["metadata"]
        assert isinstance(metadata, dict)
        assert "uid" not in metadata  # nothing changes for such a client: it is the jail's user
    finally:
        _user.kill_all(uid)
    assert _alive_as(uid) == []
