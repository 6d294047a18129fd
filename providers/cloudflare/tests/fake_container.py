"""The fake bridge's containers: a root directory and a user of its own per sandbox, and its
commands as real processes confined to them.

A command is forked, moved into a fresh mount namespace where the host's system directories
(``/usr``, ``/etc``, ...) are bound read-only into the container's root, chrooted there and given
the container's own uid and gid (one per container, never a host account's): so its files, its
exit status, its signals and its process tree are real, a container cannot touch another's files,
and every process of a container can be found (and killed) by its uid. ``/etc/passwd`` names that
uid ``sandbox`` (home ``/home/sandbox``), like the Worker's image; ``/workspace`` is the workdir.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import os
import shutil
import signal
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
MS_RDONLY, MS_NOSUID, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 32, 4096, 16384, 1 << 18
HOME = "/home/sandbox"
WORKSPACE = "/workspace"
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": HOME,
    "USER": "sandbox",
    "LANG": "C.UTF-8",
}
"""The environment of the image's processes (the Worker's Dockerfile: ``USER sandbox``)."""
# Uids no host account has, and no other test process on this machine hands out at once.
_FIRST_UID = 3_000_000 + (os.getpid() % 4000) * 100_000
_uids = itertools.count(_FIRST_UID)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class Container:
    """One sandbox's container: ``root`` on the host, commands as ``uid``."""

    def __init__(self, parent: Path) -> None:
        self.uid = self.gid = next(_uids)
        self.root = parent / f"c{self.uid}"
        self._etc = parent / f"etc{self.uid}"
        self.reset()

    def reset(self) -> None:
        """A fresh filesystem (what a new container of the image has)."""
        self.kill_all()
        shutil.rmtree(self.root, ignore_errors=True)
        user = User("sandbox", self.uid, self.gid, HOME)
        fake_vm.prepare_root(self.root, [(HOME, user), (WORKSPACE, user)])
        self._etc.mkdir(exist_ok=True)
        host_passwd = Path("/etc/passwd").read_text()
        host_group = Path("/etc/group").read_text()
        (self._etc / "passwd").write_text(
            host_passwd + f"sandbox:x:{self.uid}:{self.gid}::{HOME}:/bin/bash\n"
        )
        (self._etc / "group").write_text(host_group + f"sandbox:x:{self.gid}:\n")

    def preexec(self, cwd: str) -> None:
        """Enter the container (between fork and exec; raising fails the spawn)."""
        r = os.fsencode(self.root)
        _check(_libc.unshare(CLONE_NEWNS), "unshare")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount")
        read_only = []
        for name in SYSTEM_DIRS:
            host = Path("/") / name
            if host.is_dir() and not host.is_symlink():
                target = r + b"/" + name.encode()
                _check(_libc.mount(os.fsencode(host), target, None, MS_BIND | MS_REC, None), "bind")
                read_only.append(target)
        for name in ("passwd", "group"):
            target = r + b"/etc/" + name.encode()
            _check(_libc.mount(os.fsencode(self._etc / name), target, None, MS_BIND, None), "bind")
            read_only.append(target)
        for target in read_only:
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
            _check(_libc.mount(None, target, None, flags, None), "remount")
        for name in (b"proc", b"dev"):
            _check(_libc.mount(b"/" + name, r + b"/" + name, None, MS_BIND | MS_REC, None), "bind")
        os.chroot(r)
        os.chdir(cwd if os.path.isdir(cwd) else "/")
        os.setgroups([self.gid])
        os.setgid(self.gid)
        os.setuid(self.uid)

    def host_path(self, path: str) -> Path:
        """The host path of an absolute path in the container's own (writable) part."""
        return self.root / path.lstrip("/")

    def pids(self) -> list[int]:
        """Every process running as the container's user."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{entry}/status").read_text()
                uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
                if int(uid_line.split()[1]) == self.uid:
                    found.append(int(entry))
        return found

    def kill_all(self) -> None:
        """SIGKILL every process of the container, until none is left."""
        deadline = time.monotonic() + 10
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        """Kill its processes and delete its files."""
        self.kill_all()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self._etc, ignore_errors=True)
