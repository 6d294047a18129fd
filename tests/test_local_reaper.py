"""A local sandbox ends, cgroups and all, however its client ends: the root's reaper.

A client killed with SIGKILL cannot destroy its sandboxes, and nobody may ever sweep its root
again; a root may be deleted under live sandboxes. Cgroups are kernel objects: whatever the
provider does not remove stays until the host reboots. Each test touches only the sandboxes it
made, found by their ids.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from local_support import end_sandboxes

import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions, _cgroup, _reaper
from agent_sandbox.local._jail import probe

pytestmark = pytest.mark.anyio

_bwrap = shutil.which("bwrap")
_PROBLEM = "bubblewrap is not installed" if _bwrap is None else probe(_bwrap)
MODES = [
    pytest.param("bwrap", marks=pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))),
    "none",
]
# Long enough for the TTL and the reaper's grace period to pass, and a loaded machine to act.
_WITHIN = 2 + _reaper.GRACE + _reaper.POLL + 60


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _groups(sandbox_id: str) -> list[str]:
    """The sandbox's cgroups that exist, in every controller this process can use."""
    return _cgroup.named(f"asb-{sandbox_id}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _wait_until(done: object, what: str) -> None:
    deadline = time.monotonic() + _WITHIN
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


_CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import agent_sandbox as asb
    from agent_sandbox.local import LocalBackend, LocalOptions

    async def main():
        backend = LocalBackend(LocalOptions(root=sys.argv[1], isolation=sys.argv[2]))
        sb = await asb.Sandbox.create(backend=backend, ttl_seconds=2)
        await sb.start(["sleep", "300"])
        await sb.exec("true")
        print(sb.id, flush=True)
        await asyncio.sleep(300)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_client_leaves_nothing_once_the_ttl_passes(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "state"
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, str(root), mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert client.stdout is not None
        sandbox_id = client.stdout.readline().strip()
        assert sandbox_id.startswith("loc-"), sandbox_id
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
        groups = _groups(sandbox_id)
        _wait_until(lambda: not (root / sandbox_id).exists(), "the sandbox was not ended")
        _wait_until(lambda: not _groups(sandbox_id), f"cgroups left: {_groups(sandbox_id)}")
        assert not any(os.path.exists(g) for g in groups)
        # the end's last steps (the moved-aside directory deleted, the uid freed) come after
        _wait_until(
            lambda: not [p for p in root.iterdir() if p.name.startswith((".trash", "loc-"))],
            "the sandbox's directory was left",
        )
        _wait_until(
            lambda: not (root / ".uids").exists() or not list((root / ".uids").iterdir()),
            "the sandbox's uid is still claimed",
        )
    finally:
        client.kill()
        client.wait()
        end_sandboxes(root)


async def test_a_root_deleted_under_a_live_sandbox_leaves_no_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "state"
    backend = LocalBackend(LocalOptions(root=root, isolation="none"))
    if backend.cgroups is None:
        pytest.skip("no writable cgroup hierarchy here: a lost root leaves no cgroup to remove")
    sb = await asb.Sandbox.create(backend=backend, ttl_seconds=3600)
    try:
        groups = _groups(sb.id)
        assert groups
        await sb.start(["sleep", "300"])

        def members() -> list[int]:
            return [int(p) for g in groups for p in Path(g, "cgroup.procs").read_text().split()]

        _wait_until(members, "the background command never joined its cgroups")
        running = members()
        shutil.rmtree(root)  # the sandbox's state, claims and all: only its name is left
        _wait_until(lambda: not _groups(sb.id), f"cgroups left: {_groups(sb.id)}")
        assert not [pid for pid in running if _alive(pid)]
    finally:
        for group in _groups(sb.id):
            _cgroup.kill_all(group)
        _cgroup.remove(_groups(sb.id))
