"""The host user a sandbox's commands run as.

A client that is not root runs its sandboxes' commands as itself (in a jail, bubblewrap maps it
to uid 1000). A client running as **root never runs sandboxed code as root**: bubblewrap run by
root maps the jail's user onto host uid 0, which may write host-global sysctls and read any
file. So each sandbox of a root client gets a dedicated, unprivileged host uid (and a gid of the
same number), and every command drops to it with ``setpriv`` before bubblewrap starts, or
before the command itself without isolation; bubblewrap then runs unprivileged, as Flatpak
runs it. A uid of its own per sandbox also makes ``RLIMIT_NPROC`` a per-sandbox limit, keeps
sandboxes without a jail from touching each other's files and processes, and lets destroy kill
every process of the sandbox at once (``kill(-1)`` as that uid).

The uids come from a block of 65536 ids that systemd documents as container ids
(:data:`BLOCK`); a uid that the user database or ``/etc/subuid``/``/etc/subgid`` knows, that a
running process uses, that owns something in the host's shared world-writable directories
(:data:`SHARED_DIRS`), or that another sandbox of the same root holds, is never chosen. A sandbox
claims its uid with a symlink ``ROOT/.uids/UID`` -> sandbox id, removed when it is destroyed,
after :func:`scrub` has deleted what the uid left in those shared directories: a later sandbox
given the same uid must not find an earlier one's files.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess

BLOCK = range(0x5AB00000, 0x5AB10000)
"""Host uids (and gids) given to the sandboxes of a root client."""
_FALLBACK = range(10000, 65534)
"""Used instead when :data:`BLOCK` is not mapped in our user namespace (root in a container
whose namespace maps only the first 65536 ids)."""
_ATTEMPTS = 200
CLAIMS = ".uids"
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""World-writable directories of the host where a sandbox without a jail can leave files."""
_SCRUB_VISITS = 100_000
"""Most entries :func:`scrub` looks at in directories the uid does not own (a bound on the
time one destroy spends in a crowded ``/tmp``)."""
_SCRUB_DEPTH = 8


class UserError(Exception):
    """No unprivileged uid can be used here; the message says why."""


def dedicated() -> bool:
    """Whether sandboxes get a uid of their own: only when we are root."""
    return os.geteuid() == 0


@functools.lru_cache(maxsize=1)
def find_setpriv() -> str | None:
    """The ``setpriv`` executable (util-linux), if installed."""
    return shutil.which("setpriv")


def drop_argv(uid: int, gid: int) -> list[str]:
    """argv prefix that runs the rest as ``uid``/``gid`` with no supplementary groups, no
    capabilities, and no way back up (``no_new_privs``: setuid binaries do not elevate)."""
    setpriv = find_setpriv()
    if setpriv is None:
        raise UserError("setpriv (util-linux) is not installed")
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def _mapped(path: str) -> list[range]:
    """The ids mapped in our user namespace (from ``/proc/self/uid_map`` or ``gid_map``)."""
    ranges = []
    with contextlib.suppress(OSError, ValueError), open(path) as handle:
        for line in handle:
            inside, _outside, count = (int(n) for n in line.split())
            ranges.append(range(inside, inside + count))
    return ranges


def _subordinate() -> list[range]:
    """Id ranges handed out in ``/etc/subuid`` and ``/etc/subgid`` (someone else's)."""
    ranges = []
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError), open(path) as handle:
            for line in handle:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    start = int(parts[1])
                    ranges.append(range(start, start + int(parts[2])))
    return ranges


def candidates() -> range:
    """The block uids are chosen from here. Raises :class:`UserError` when none is mapped."""
    uids, gids = _mapped("/proc/self/uid_map"), _mapped("/proc/self/gid_map")

    def covered(block: range) -> bool:
        return any(block[0] in r and block[-1] in r for r in uids) and any(
            block[0] in r and block[-1] in r for r in gids
        )

    for block in (BLOCK, _FALLBACK):
        if covered(block):
            return block
    raise UserError(
        f"neither uids {BLOCK[0]}-{BLOCK[-1]} nor {_FALLBACK[0]}-{_FALLBACK[-1]} are mapped "
        "in this user namespace"
    )


def _busy_uids() -> set[int]:
    """Uids of the processes running now."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                found.add(os.stat(f"/proc/{entry}").st_uid)
    return found


def _known(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def _shared_owners() -> set[int]:
    """Owners of the entries directly in :data:`SHARED_DIRS` (not following symlinks)."""
    found = set()
    for path in SHARED_DIRS:
        with contextlib.suppress(OSError), os.scandir(path) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    found.add(entry.stat(follow_symlinks=False).st_uid)
    return found


def _choices() -> list[int]:
    """Up to ``_ATTEMPTS`` random uids of the block that nobody on this host uses."""
    block = candidates()
    busy = _busy_uids() | _shared_owners()
    taken = _subordinate()
    picks = (block[secrets.randbelow(len(block))] for _ in range(_ATTEMPTS))
    return [
        uid
        for uid in picks
        if uid not in busy and not any(uid in r for r in taken) and not _known(uid)
    ]


def allocate(root: str, sandbox_id: str) -> int:
    """Choose and claim a free uid (also the gid) for a new sandbox under ``root``.

    Raises :class:`UserError` when none is free.
    """
    claims = os.path.join(root, CLAIMS)
    os.makedirs(claims, mode=0o700, exist_ok=True)
    for uid in _choices():
        try:
            os.symlink(sandbox_id, os.path.join(claims, str(uid)))
        except FileExistsError:
            continue
        return uid
    raise UserError("no free uid found for the sandbox")


def probe_uid() -> int:
    """An unused uid of the block, for a jail that only checks what works here (no claim)."""
    for uid in _choices():
        return uid
    raise UserError("no free uid found")


def release(root: str, uid: int, sandbox_id: str) -> None:
    """Give a sandbox's uid back (only if that sandbox holds it)."""
    claim = os.path.join(root, CLAIMS, str(uid))
    with contextlib.suppress(OSError):
        if os.readlink(claim) == sandbox_id:
            os.unlink(claim)


def scrub(uid: int) -> None:
    """Delete what ``uid`` (a sandbox's own uid, its processes already killed) owns in
    :data:`SHARED_DIRS`: each entry it owns there, and in the world-writable directories below
    them (where it could have moved files), up to a bound of entries looked at.

    Works by directory descriptor and never follows a symlink, so a link left in place of a
    directory cannot lead the deletion elsewhere; nobody else may rename the uid's entries in
    a sticky directory, and the uid runs nothing any more, so what is checked is what is deleted.
    """
    if uid in (0, os.geteuid()):  # never: that would delete the host's own files
        raise ValueError(f"refusing to delete the files of uid {uid}")
    budget = [_SCRUB_VISITS]
    for path in SHARED_DIRS:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            _scrub_dir(fd, uid, budget, _SCRUB_DEPTH)
        finally:
            os.close(fd)


def _scrub_dir(fd: int, uid: int, budget: list[int], depth: int) -> None:
    try:
        with os.scandir(fd) as entries:
            names = [entry.name for entry in entries]
    except OSError:
        return
    for name in names:
        if budget[0] <= 0:
            return
        budget[0] -= 1
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid == uid:
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(name, dir_fd=fd)  # fd-based: follows no symlink
                else:
                    os.unlink(name, dir_fd=fd)
        elif stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH and depth > 0:
            try:
                child = os.open(
                    name,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=fd,
                )
            except OSError:
                continue
            try:
                opened = os.fstat(child)
                if (opened.st_dev, opened.st_ino) == (info.st_dev, info.st_ino):
                    _scrub_dir(child, uid, budget, depth - 1)
            finally:
                os.close(child)


def claims(root: str) -> dict[int, str]:
    """uid -> sandbox id of every claim under ``root``."""
    found = {}
    directory = os.path.join(root, CLAIMS)
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.isdigit():
                with contextlib.suppress(OSError):
                    found[int(name)] = os.readlink(os.path.join(directory, name))
    return found


def kill_all(uid: int) -> None:
    """SIGKILL every process running as ``uid`` (the dedicated uid of one sandbox).

    ``kill(-1)`` sent *as* that uid reaches every process it may signal, in one step that
    forking cannot outrun; a scan of ``/proc`` then catches anything left (e.g. when the helper
    could not start).
    """
    if uid in (0, os.geteuid()):  # never: that would kill the client's own processes
        raise ValueError(f"refusing to kill every process of uid {uid}")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["/bin/sh", "-c", "kill -9 -1"],
            user=uid,
            group=uid,
            extra_groups=[],
            env={},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    for _ in range(100):
        left = [int(e) for e in os.listdir("/proc") if e.isdigit() and _alive_as(e, uid)]
        if not left:
            return
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _alive_as(pid: str, uid: int) -> bool:
    """Whether process ``pid`` runs as ``uid`` and is not a zombie waiting to be reaped."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:
            return False
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def unreachable(path: str) -> str | None:
    """The first directory on the way to ``path`` that other users cannot search, if any
    (a dedicated uid must reach the sandbox's workspace through it)."""
    current = "/"
    for part in [p for p in os.path.realpath(path).split("/") if p]:
        current = os.path.join(current, part)
        try:
            mode = os.stat(current).st_mode
        except FileNotFoundError:
            return None  # created by us from here on
        if not mode & stat.S_IXOTH:
            return current
    return None
