"""How the fake E2B runs a sandbox's commands: real processes in a private mount namespace.

Each fake sandbox is a directory used as the root of its commands' filesystem: the host's system
directories (``/usr``, ``/etc``, ...) are bound read-only into it, everything else (``/tmp``,
``/home/user``, ``/root``, any new top-level directory) is the sandbox's own. A command is forked,
moved into a fresh mount namespace (and a fresh network namespace with only loopback when the
sandbox has no internet access), chrooted into its sandbox and given the user's uid/gid, then
exec'd — so the pid the fake reports is the command's own pid and its exit status, signals and
process tree are real, as under E2B's envd.

The file server resolves paths with the same view (:func:`resolve`), following symlinks inside the
sandbox rather than on the host.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.unshare.argtypes = [ctypes.c_int]

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

SYSTEM_DIRS = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt")
"""Top-level host directories a sandbox sees read-only (when the host has them)."""


@dataclass(frozen=True)
class User:
    """An account of the fake sandbox image."""

    name: str
    uid: int
    gid: int
    home: str


USERS = {"root": User("root", 0, 0, "/root"), "user": User("user", 1000, 1000, "/home/user")}
DEFAULT_USER = "user"


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: bytes | None, dst: bytes, fstype: bytes | None, flags: int) -> None:
    _check(_libc.mount(src, dst, fstype, flags, None), "mount")


def prepare_root(root: Path, etc_overrides: dict[str, Path]) -> None:
    """Lay out a fresh sandbox root: mount points, merged-/usr symlinks, /tmp, homes."""
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for name in SYSTEM_DIRS:
        host = Path("/") / name
        target = root / name
        if host.is_symlink():
            if not target.is_symlink():
                target.symlink_to(os.readlink(host))
        elif host.is_dir():
            target.mkdir(exist_ok=True)
    for name in ("proc", "dev"):
        (root / name).mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    for user in USERS.values():
        home = root / user.home.lstrip("/")
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, user.uid, user.gid)
    del etc_overrides  # bound at exec time (see jail_preexec)


class Jail:
    """The precomputed mount plan of one command; ``preexec`` runs in the forked child."""

    def __init__(
        self,
        root: Path,
        user: User,
        cwd: str,
        *,
        isolate_network: bool,
        etc_overrides: dict[str, Path],
    ) -> None:
        r = os.fsencode(root)
        self.root = r
        self.steps: list[tuple[bytes | None, bytes, bytes | None, int]] = []
        ro: list[bytes] = []
        for name in SYSTEM_DIRS:
            host = Path("/") / name
            if host.is_dir() and not host.is_symlink():
                dst = r + b"/" + name.encode()
                self.steps.append((os.fsencode(host), dst, None, MS_BIND | MS_REC))
                ro.append(dst)
        for rel, source in etc_overrides.items():
            dst = r + b"/etc/" + rel.encode()
            self.steps.append((os.fsencode(source), dst, None, MS_BIND))
            ro.append(dst)
        for dst in ro:
            self.steps.append((None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID))
        self.steps.append((b"/proc", r + b"/proc", None, MS_BIND | MS_REC))
        self.steps.append((b"/dev", r + b"/dev", None, MS_BIND | MS_REC))
        self.user = user
        self.cwd = os.fsencode(cwd)
        self.isolate_network = isolate_network

    def preexec(self) -> None:
        """Enter the sandbox (runs between fork and exec; raises to fail the spawn)."""
        flags = CLONE_NEWNS | (CLONE_NEWNET if self.isolate_network else 0)
        _check(_libc.unshare(flags), "unshare")
        _mount(None, b"/", None, MS_REC | MS_PRIVATE)
        for src, dst, fstype, mflags in self.steps:
            _mount(src, dst, fstype, mflags)
        if self.isolate_network:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", IFF_UP))
        os.chroot(self.root)
        os.chdir(self.cwd)
        os.setgroups([self.user.gid])
        os.setgid(self.user.gid)
        os.setuid(self.user.uid)


def host_path(root: Path, virtual: str, etc_overrides: dict[str, Path]) -> Path:
    """The host path behind an absolute, symlink-free path inside the sandbox."""
    parts = [p for p in virtual.split("/") if p]
    if not parts:
        return root
    if parts[0] == "etc" and len(parts) == 2 and parts[1] in etc_overrides:
        return etc_overrides[parts[1]]
    top = Path("/") / parts[0]
    if parts[0] in SYSTEM_DIRS and top.is_dir() and not top.is_symlink():
        return Path("/", *parts)
    return root.joinpath(*parts)


def is_read_only(virtual: str) -> bool:
    """True for paths on the sandbox's read-only system mounts."""
    parts = [p for p in virtual.split("/") if p]
    return bool(parts) and parts[0] in (*SYSTEM_DIRS, "proc", "dev")


def resolve(
    root: Path, path: str, etc_overrides: dict[str, Path], *, follow_last: bool = True
) -> str:
    """Resolve ``path`` as the sandbox sees it (symlinks followed inside the sandbox).

    Returns the absolute virtual path; missing trailing components are kept as they are.
    """
    pending = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/" + "/".join([*done, part])
        hp = host_path(root, candidate, etc_overrides)
        if (pending or follow_last) and hp.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(40, "too many levels of symbolic links", path)
            link = os.readlink(hp)
            if link.startswith("/"):
                done = []
            pending = [p for p in link.split("/") if p] + pending
            continue
        done.append(part)
    return "/" + "/".join(done)
