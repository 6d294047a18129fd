"""The bubblewrap jail: its argv, and how its paths map onto host paths for file operations.

The jail's filesystem is a read-only tmpfs root holding read-only binds of ``/usr`` and ``/etc``
(plus the ``/bin``, ``/lib``... entries, as symlinks when the host has them as symlinks), the
sandbox's workspace bound read-write at ``/workspace`` and its private tmp at ``/tmp``. File
operations resolve a jail path component by component, following symlinks with the jail's idea
of ``/``, so a symlink planted inside the workspace cannot lead a host-side read or write out of
it; the opened file is checked once more through ``/proc/self/fd``.
"""

from __future__ import annotations

import functools
import os
import posixpath
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from . import _user

WORKSPACE = "/workspace"
TMP = "/tmp"
JAIL_UID = 1000
JAIL_GID = 1000
JAIL_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
_TOP_ENTRIES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_READONLY_DIRS = ("/usr", "/etc")
# Host-global kernel knobs under the jail's /proc, bound read-only over it (bubblewrap covers
# them only when it finds them writable; we always do, as Docker masks them in a container).
_PROC_READONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
_MAX_SYMLINKS = 40


@dataclass(frozen=True)
class Mount:
    """One place of the jail backed by a host directory."""

    jail: str
    host: str
    writable: bool


class JailPathError(Exception):
    """A jail path cannot be used: ``kind`` is ``missing``, ``denied`` or ``loop``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@functools.lru_cache(maxsize=1)
def top_level_links() -> tuple[tuple[str, str | None], ...]:
    """``(name, symlink target or None for a real directory)`` of the host's /bin, /lib, ..."""
    found: list[tuple[str, str | None]] = []
    for name in _TOP_ENTRIES:
        path = "/" + name
        if os.path.islink(path):
            found.append((name, os.readlink(path)))
        elif os.path.isdir(path):
            found.append((name, None))
    return tuple(found)


def bwrap_prefix(bwrap: str, workspace: str, tmp: str, *, share_net: bool) -> list[str]:
    """The bwrap argv up to (not including) ``--chdir``/env/command, for one sandbox."""
    argv = [bwrap, "--tmpfs", "/"]
    for directory in _READONLY_DIRS:
        argv += ["--ro-bind", directory, directory]
    for name, target in top_level_links():
        if target is None:
            argv += ["--ro-bind", "/" + name, "/" + name]
        else:
            argv += ["--symlink", target, "/" + name]
    argv += [
        "--bind", workspace, WORKSPACE,
        "--bind", tmp, TMP,
        "--proc", "/proc",
    ]  # fmt: skip
    for path in _PROC_READONLY:
        argv += ["--ro-bind-try", path, path]
    argv += [
        "--dev", "/dev",
        "--unshare-all",
    ]  # fmt: skip
    if share_net:
        argv.append("--share-net")
    argv += [
        # Never without --unshare-user: root would keep every capability inside.
        "--unshare-user", "--uid", str(JAIL_UID), "--gid", str(JAIL_GID),
        "--die-with-parent",
        "--new-session",
        "--remount-ro", "/",
        "--clearenv",
    ]  # fmt: skip
    return argv


# Run in the probe jail: leaves a file whose host owner tells who the jail's user is on the host;
# exit 4 when it could write a host-global sysctl (access(2) only asks; nothing is written).
_CANARY = ": > /workspace/owner && test -w /proc/sys/kernel/core_pattern && exit 4; exit 0"


@functools.lru_cache(maxsize=4)
def probe(bwrap: str) -> str | None:
    """``None`` when bwrap can build a safe jail here, else why not.

    The probe builds the real recipe and runs a canary in it as the user commands will run as
    (an unprivileged uid when we are root): it fails where user namespaces are disabled for that
    user, where ``setpriv`` is missing for a root client, where the jail's user is host root
    (what it creates belongs to uid 0), or where it could write host sysctls.
    """
    prefix: list[str] = []
    owner: int | None = None
    if _user.dedicated():
        try:
            owner = _user.probe_uid()
            prefix = _user.drop_argv(owner, owner)
        except _user.UserError as exc:
            return f"running as root, the jail must run as an unprivileged user, but {exc}"
    with tempfile.TemporaryDirectory(prefix="asb-probe-") as scratch:
        workspace, tmp = os.path.join(scratch, "w"), os.path.join(scratch, "t")
        for directory in (workspace, tmp):
            os.mkdir(directory, 0o700)
            if owner is not None:
                os.chown(directory, owner, owner)
        if owner is not None:
            os.chmod(scratch, 0o711)
        argv = [*prefix, *bwrap_prefix(bwrap, workspace, tmp, share_net=False)]
        argv += ["--chdir", WORKSPACE, "--", "/bin/sh", "-c", _CANARY]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30, cwd="/", check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if done.returncode not in (0, 4):
            return done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        try:
            made = os.stat(os.path.join(workspace, "owner")).st_uid
        except OSError as exc:
            return f"the jail could not write its workspace ({exc.strerror})"
    if made == 0:
        return "the jail's user would be host root (uid 0 owns what it creates)"
    if done.returncode == 4:
        return "the jail's user could write host sysctls"
    return None


def find_bwrap() -> str | None:
    """The bwrap executable on PATH, if any."""
    return shutil.which("bwrap")


class JailFS:
    """Maps jail paths of one sandbox to host paths, as the jail would resolve them."""

    def __init__(self, workspace: str, tmp: str) -> None:
        self.mounts = [
            Mount(WORKSPACE, workspace, True),
            Mount(TMP, tmp, True),
            *(Mount(d, d, False) for d in _READONLY_DIRS),
        ]
        for name, target in top_level_links():
            if target is None:
                self.mounts.append(Mount("/" + name, "/" + name, False))
        self.links = {"/" + name: target for name, target in top_level_links() if target}

    def mount_of(self, jail_path: str) -> Mount | None:
        """The mount holding ``jail_path`` (normalised, no symlinks), if any."""
        for mount in self.mounts:
            if jail_path == mount.jail or jail_path.startswith(mount.jail + "/"):
                return mount
        return None

    def host_of(self, jail_path: str) -> tuple[Mount, str] | None:
        """Host path of a resolved jail path, with its mount; ``None`` for the bare root tmpfs."""
        mount = self.mount_of(jail_path)
        if mount is None:
            return None
        return mount, mount.host + jail_path[len(mount.jail) :]

    def resolve(self, path: str, *, follow_final: bool = True) -> str:
        """The jail path ``path`` designates once every symlink is followed (jail semantics).

        Missing trailing components are kept as they are (a write may create them).
        Raises :class:`JailPathError` (``loop``) after too many symlinks.
        """
        todo = [c for c in path.split("/") if c and c != "."]
        todo.reverse()
        done: list[str] = []
        hops = 0
        while todo:
            name = todo.pop()
            if name == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join([*done, name])
            if not todo and not follow_final:
                done.append(name)
                break
            target = self._readlink(candidate)
            if target is None:
                done.append(name)
                continue
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise JailPathError("loop", f"too many levels of symbolic links: {path}")
            if target.startswith("/"):
                done = []
            todo.extend(reversed([c for c in target.split("/") if c and c != "."]))
        return "/" + "/".join(done)

    def _readlink(self, jail_path: str) -> str | None:
        if jail_path in self.links:
            return self.links[jail_path]
        located = self.host_of(jail_path)
        if located is None:
            return None
        mount, host = located
        if host == mount.host:
            return None
        try:
            return os.readlink(host)
        except OSError:  # not a link, or missing
            return None


def check_inside(fd: int, mount: Mount) -> None:
    """Raise ``JailPathError`` unless the opened ``fd`` really lives under ``mount.host``."""
    real = os.readlink(f"/proc/self/fd/{fd}")
    if real != mount.host and not real.startswith(mount.host.rstrip("/") + "/"):
        raise JailPathError("denied", f"path escapes {mount.jail}")


def host_user() -> tuple[int, int, frozenset[int]]:
    """``(uid, gid, groups)`` the host's kernel checks the jail's user (uid 1000 inside, no
    capabilities) against: the uid and groups bubblewrap runs with."""
    return os.geteuid(), os.getegid(), frozenset({os.getegid(), *os.getgroups()})


def normalise(path: str) -> str:
    """``path`` made absolute and normal (``..`` cannot climb above ``/``)."""
    normal = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + normal.lstrip("/")
