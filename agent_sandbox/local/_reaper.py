"""The reaper of a local provider's root: ends its sandboxes when their TTL has passed, whether or
not any client is left (run as a script).

Without it, a sandbox whose client was killed lives on until someone sweeps its root: its
directory, its uid and its cgroups (kernel objects, which nothing else ever removes) stay.
``python -I -S _reaper.py ROOT`` detaches (new session, double fork), holds ``ROOT/.reaper``
locked (one reaper per root) and every few seconds looks at the root: when a sandbox is past
its TTL by :data:`GRACE` seconds (a client's own sweep goes first), when a destroy was cut short,
or when a sandbox's directory went without a destroy (its root deleted under it) while its
cgroups remain, it runs one pass of ``agent_sandbox.local._reap``, which does what ``sweep``
does. It exits once the root holds no sandbox, or is gone (after that pass).

It uses the standard library only and imports nothing of agent-sandbox (``-S``: small, fast
start); the pass it runs imports the package, and runs only when there is work.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time

LOCK = ".reaper"
GRACE = 10.0
"""Seconds past a sandbox's TTL before the reaper ends it (a client ending it itself, or its
sweep, is never raced)."""
POLL = 5.0
_HALF_MADE = 600.0  # as sweep: a directory without state this old is a create that died
_PASS_TIMEOUT = 300.0
_ID_RE = re.compile(r"^loc-[0-9a-f]{20}$")
_TRASH_RE = re.compile(r"^\.trash-(loc-[0-9a-f]{20})-[0-9a-f]{8}$")
_PACKAGES = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _lock(root: str) -> int | None:
    """The root's lock, held; ``None`` when another reaper holds it (or the root is gone)."""
    try:
        fd = os.open(os.path.join(root, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _ours(root: str, fd: int) -> bool:
    """Whether ``ROOT/.reaper`` is still the file we locked (not a root deleted or replaced)."""
    try:
        now, held = os.stat(os.path.join(root, LOCK)), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _state(root: str, directory: str) -> tuple[float, list[str]] | None:
    """A sandbox's TTL end and cgroups, from the state in ``ROOT/directory`` (its own, or where
    a destroy moved it); ``None`` while it cannot be read."""
    try:
        with open(os.path.join(root, directory, "state.json"), "rb") as handle:
            state = json.load(handle)
        return float(state["expires"]), [str(g) for g in state.get("cgroups") or []]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _age(path: str) -> float:
    """Seconds since ``path`` last changed (a rename changes it too), 0 when unknown."""
    try:
        return time.time() - os.stat(path).st_ctime
    except OSError:
        return 0.0


def _run_pass(root: str, gone: list[str]) -> None:
    """One sweep of ``root`` (which also removes the cgroups of the sandboxes ``gone``)."""
    inherited = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGES, inherited]))}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [sys.executable, "-m", "agent_sandbox.local._reap", root, *gone],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=_PASS_TIMEOUT,
            check=False,
        )


def serve(root: str, fd: int, ready: int | None = None) -> None:
    """Watch ``root`` until it holds no sandbox (or is gone), with its lock ``fd`` held; the
    lock is released on return. ``ready`` is closed once the sandboxes there are known."""
    known: dict[str, tuple[float, list[str]]] = {}
    while True:
        try:
            names = os.listdir(root) if _ours(root, fd) else []
        except OSError:
            names = []
        ids = {name for name in names if _ID_RE.match(name)}
        trash = {m[1]: m[0] for m in map(_TRASH_RE.match, names) if m}
        moving = trash.keys()
        for sandbox_id, directory in [*((i, i) for i in ids), *trash.items()]:
            if sandbox_id not in known:
                found = _state(root, directory)
                if found is not None:
                    known[sandbox_id] = found
        if ready is not None:
            os.close(ready)
            ready = None
        now = time.time()
        gone = [i for i in known if i not in ids and i not in moving]
        left = [i for i in gone if any(os.path.isdir(g) for g in known[i][1])]
        due = (
            any(known[i][0] + GRACE <= now for i in ids if i in known)
            or any(_age(os.path.join(root, n)) > GRACE for n in names if _TRASH_RE.match(n))
            or any(_age(os.path.join(root, i)) > _HALF_MADE for i in ids if i not in known)
        )
        if due or left:
            _run_pass(root, left)
        for sandbox_id in gone:
            del known[sandbox_id]
        if not ids and not moving:
            os.close(fd)
            return
        ends = [known[i][0] + GRACE for i in ids if i in known]
        time.sleep(min([POLL, *(max(end - now, 0.0) + 0.05 for end in ends)]))


def ensure(root: str) -> None:
    """Start ``root``'s reaper unless one is running (a client calls this after each create)."""
    fd = _lock(root)
    if fd is None:
        return
    os.close(fd)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(  # returns once the reaper has detached
            [sys.executable, "-I", "-S", os.path.abspath(__file__), root],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )


def main(root: str) -> None:
    os.setsid()
    started, ready = os.pipe()
    if os.fork():  # the client reaps this parent, the reaper is nobody's child; the parent
        os.close(ready)  # exits once the reaper knows the sandboxes already there
        os.read(started, 1)
        os._exit(0)
    os.close(started)
    null = os.open(os.devnull, os.O_RDWR)
    for stream in (0, 1, 2):
        os.dup2(null, stream)
    os.close(null)
    os.chdir("/")
    fd = _lock(root)
    if fd is None:
        os.close(ready)
        return
    serve(root, fd, ready)
    # Look once more, unlocked: a sandbox created meanwhile may have found us running.
    while _sandboxes(root):
        fd = _lock(root)
        if fd is None:
            return
        serve(root, fd)


def _sandboxes(root: str) -> bool:
    try:
        return any(_ID_RE.match(n) or _TRASH_RE.match(n) for n in os.listdir(root))
    except OSError:
        return False


if __name__ == "__main__":
    main(sys.argv[1])
