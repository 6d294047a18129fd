"""How the fake Vercel runs a session's processes: real processes confined on this host.

Each fake session is a directory used as the root of its processes' filesystem: the host's system
directories (``/usr``, ``/etc``, ...) are bound read-only into it, everything else (``/tmp``,
``/vercel``, ``/root``) is the session's own. A process is forked, moved into a fresh mount
namespace (and a fresh network namespace holding only loopback when the sandbox's network policy
is ``deny-all``), chrooted into its session's root and given the user's uid/gid, then exec'd: its
exit status, signals, process tree and file permissions are real.

A session's processes are found again by their root directory (``/proc/<pid>/root``), which
neither ``setsid`` nor ``env -i`` changes, so stopping a session kills every process it started.

Vercel's images run commands as ``ubuntu`` (uid 1000, ``HOME=/vercel``, writable
``/vercel/sandbox``): ``skills/sandbox/SKILL.md`` (Limitations: "User context: ubuntu",
"Writable path: /vercel/sandbox") and ``images/ubuntu/Dockerfile`` in github.com/vercel/sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2] / "fakekit"))  # the fakes' shared parts

import fake_vm
from fake_vm import SYSTEM_DIRS, User

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
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

WORKDIR = "/vercel/sandbox"
ROOT = User("root", 0, 0, "/root")
UBUNTU = User("ubuntu", 1000, 1000, "/vercel")
USERS = {u.name: u for u in (ROOT, UBUNTU)}


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def write_etc(etc: Path) -> dict[str, Path]:
    """passwd, group and hostname files of the fake image, bound over the host's at exec."""
    return fake_vm.write_etc(etc, USERS.values(), "sandbox.vercel.local")


def prepare_root(root: Path) -> None:
    """Lay out a fresh session root: root's home, and the ubuntu user's home and workdir."""
    fake_vm.prepare_root(root, [(UBUNTU.home, UBUNTU), (WORKDIR, UBUNTU)])
    (root / "root").mkdir(mode=0o700, exist_ok=True)


class Jail:
    """The mount plan of one process; ``preexec`` runs in the forked child."""

    def __init__(
        self, root: Path, user: User, cwd: str, *, deny_network: bool, etc: dict[str, Path]
    ) -> None:
        r = os.fsencode(root)
        self.root = r
        self.steps: list[tuple[bytes | None, bytes, int]] = []
        ro: list[bytes] = []
        for name in SYSTEM_DIRS:
            host = Path("/") / name
            if host.is_dir() and not host.is_symlink():
                dst = r + b"/" + name.encode()
                self.steps.append((os.fsencode(host), dst, MS_BIND | MS_REC))
                ro.append(dst)
        for rel, source in etc.items():
            dst = r + b"/etc/" + rel.encode()
            self.steps.append((os.fsencode(source), dst, MS_BIND))
            ro.append(dst)
        for dst in ro:
            self.steps.append((None, dst, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID))
        self.steps.append((b"/proc", r + b"/proc", MS_BIND | MS_REC))
        self.steps.append((b"/dev", r + b"/dev", MS_BIND | MS_REC))
        self.user = user
        self.cwd = os.fsencode(cwd)
        self.deny_network = deny_network

    def preexec(self) -> None:
        """Enter the session (between fork and exec; raising fails the spawn)."""
        _check(_libc.unshare(CLONE_NEWNS | (CLONE_NEWNET if self.deny_network else 0)), "unshare")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount")
        for src, dst, flags in self.steps:
            _check(_libc.mount(src, dst, None, flags, None), "mount")
        if self.deny_network:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", IFF_UP))
        os.chroot(self.root)
        os.chdir(self.cwd)
        os.setgroups([self.user.gid])
        os.setgid(self.user.gid)
        os.setuid(self.user.uid)


def processes_under(root: Path) -> list[int]:
    """Pids of every process whose root directory is ``root`` or below it."""
    prefix = str(root)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            where = os.readlink(f"/proc/{entry}/root")
            if where == prefix or where.startswith(prefix + "/"):
                found.append(int(entry))
    return found


def kill_under(root: Path) -> None:
    """SIGKILL every process rooted in ``root`` until none is left (new ones may fork meanwhile)."""
    for _ in range(50):
        pids = processes_under(root)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
