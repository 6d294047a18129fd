"""A fake vendor's sandbox as a small machine of its own on this host.

A sandbox's files are a directory used as the root of its filesystem: the host's system
directories (``/usr``, ``/etc``, ...) are bound read-only into it, everything else (``/tmp``, the
homes, any new top-level directory) is the sandbox's own. A :class:`VM` gives the sandbox its own
pid and mount namespaces (and a network namespace with only loopback when it has no network
access) whose pid 1 is a tiny init: it reaps orphans and forks the commands the fake's daemon
asks for. So the sandbox's processes see only each other (``/proc`` is the sandbox's), a process
that leaves its parent is reparented inside the sandbox, pids are the sandbox's own, and killing
the VM ends every process in it.

The fake's file server resolves paths with the same view (:func:`resolve`), following symlinks
inside the sandbox rather than on the host. Which vendor a fake models (its users, its homes, its
init) is said in that fake's own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

SYSTEM_DIRS = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt")
"""Top-level host directories a sandbox sees read-only (when the host has them)."""


@dataclass(frozen=True)
class User:
    """An account of a fake sandbox image."""

    name: str
    uid: int
    gid: int
    home: str


def write_etc(etc: Path, users: Iterable[User], hostname: str) -> dict[str, Path]:
    """The image's ``passwd``, ``group`` and ``hostname``, bound over the host's in a sandbox."""
    etc.mkdir(parents=True, exist_ok=True)
    users = list(users)
    passwd = "".join(f"{u.name}:x:{u.uid}:{u.gid}::{u.home}:/bin/bash\n" for u in users)
    group = "".join(f"{u.name}:x:{u.gid}:\n" for u in users)
    (etc / "passwd").write_text(passwd + "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text(group + "nogroup:x:65534:\n")
    (etc / "hostname").write_text(hostname + "\n")
    return {name: etc / name for name in ("passwd", "group", "hostname")}


def prepare_root(root: Path, owned: Iterable[tuple[str, User]]) -> None:
    """Lay out a fresh sandbox root: mount points, merged-/usr symlinks, /tmp, and the
    directories in ``owned`` (a path and the user it belongs to, such as a home)."""
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
    for path, user in owned:
        directory = root / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, user.uid, user.gid)


# The VM's init, run by the host's Python in the new namespaces (argv: socket fd, root, "1" for a
# private network, the bind mounts as JSON). The first fork is pid 1 of the new pid namespace;
# its parent only reports the init's host pid and waits for it. Requests come as JSON messages
# on a SEQPACKET socket, with the command's stdin/stdout/stderr passed as file descriptors.
_INIT = r"""
import ctypes, fcntl, json, os, signal, socket, struct, sys
sock = socket.socket(fileno=int(sys.argv[1]))
root, private_net, binds = sys.argv[2], sys.argv[3] == "1", json.loads(sys.argv[4])
child = os.fork()
if child:
    sock.send(json.dumps({"init": child}).encode())
    sock.close()
    os.waitpid(child, 0)
    os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
def mount(src, dst, fstype, flags):
    if libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), flags, None):
        raise OSError(ctypes.get_errno(), "mount " + dst)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
mount(None, "/", None, MS_REC | MS_PRIVATE)
for src, dst, ro in binds:
    mount(src, dst, None, MS_BIND | MS_REC)
    if ro:
        mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
if private_net:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 1))
os.chroot(root)
os.chdir("/")
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
spawned = set()
sock.send(json.dumps({"ready": True}).encode())
def send(message):
    sock.send(json.dumps(message).encode())
def spawn(req, fds):
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            for number, fd in enumerate(fds):
                os.dup2(fd, number)
            os.closerange(3, 1 << 16)
            for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            os.setgroups(req["groups"])
            os.setgid(req["gid"])
            os.setuid(req["uid"])
            os.chdir(req["cwd"])
            os.execve(req["argv"][0], req["argv"], req["env"])
        except BaseException as exc:
            os.write(2, f"{exc}\n".encode())
        os._exit(127)
    for fd in fds:
        os.close(fd)
    spawned.add(pid)
    send({"pid": pid})
import select
while True:
    ready, _, _ = select.select([sock, wake_r], [], [])
    if wake_r in ready:
        os.read(wake_r, 4096)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in spawned:
                spawned.discard(pid)
                send({"exit": pid, "status": status})
    if sock in ready:
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        if not data:
            os._exit(0)
        req = json.loads(data)
        if "argv" in req:
            spawn(req, fds)
        elif "kill" in req:
            try:
                os.kill(req["kill"], req["sig"])
            except ProcessLookupError:
                pass
"""


class VM:
    """One sandbox's machine: private pid and mount (and network) namespaces and their init.

    Use :meth:`boot` once, then :meth:`spawn` commands (async, on the loop that booted it),
    :meth:`signal` a pid or ``-1`` (every process but init), and :meth:`halt` to end it all.
    """

    def __init__(self, root: Path, etc_overrides: Mapping[str, Path], *, private_net: bool) -> None:
        self.root = root
        self.private_net = private_net
        self.binds: list[tuple[str, str, bool]] = []
        for name in SYSTEM_DIRS:
            host = Path("/") / name
            if host.is_dir() and not host.is_symlink():
                self.binds.append((str(host), str(root / name), True))
        for rel, source in etc_overrides.items():
            self.binds.append((str(source), str(root / "etc" / rel), True))
        self.binds.append(("/dev", str(root / "dev"), False))
        self.init_pid = 0
        """The init's pid on the host."""
        self._sock: socket.socket | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        self._replies: list[asyncio.Future[int]] = []
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def boot(self) -> None:
        """Start the init (blocking; call from a worker thread or at once)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags = CLONE_NEWNS | CLONE_NEWPID | (CLONE_NEWNET if self.private_net else 0)

        def enter() -> None:
            if _libc.unshare(flags) != 0:
                raise OSError(ctypes.get_errno(), "unshare")

        argv = [sys.executable, "-I", "-S", "-c", _INIT, str(theirs.fileno()), str(self.root)]
        argv += ["1" if self.private_net else "0", json.dumps(self.binds)]
        self._helper = subprocess.Popen(
            argv,
            pass_fds=[theirs.fileno()],
            preexec_fn=enter,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        theirs.close()
        ours.settimeout(30)
        seen: dict[str, Any] = {}
        while "ready" not in seen or "init" not in seen:
            message = ours.recv(1 << 16)
            if not message:
                raise RuntimeError("the fake sandbox's init failed to start")
            seen.update(json.loads(message))
        self.init_pid = int(seen["init"])
        ours.setblocking(False)
        self._sock = ours

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Receive the init's answers on ``loop`` (the fake's)."""
        assert self._sock is not None
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._on_message)

    def _on_message(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._fail_all()
                return
            message = json.loads(data)
            if "pid" in message:
                future = self._replies.pop(0)
                self._exits[message["pid"]] = asyncio.get_running_loop().create_future()
                future.set_result(message["pid"])
            elif "exit" in message:
                waiter = self._exits.get(message["exit"])
                if waiter is not None and not waiter.done():
                    waiter.set_result(message["status"])

    def _fail_all(self) -> None:
        assert self._loop is not None
        assert self._sock is not None
        self._loop.remove_reader(self._sock.fileno())
        for future in self._replies:
            if not future.done():
                future.set_exception(ProcessLookupError("the sandbox is gone"))
        self._replies.clear()
        for waiter in self._exits.values():
            if not waiter.done():
                waiter.set_result(signal.SIGKILL)  # a wait status: killed by SIGKILL

    async def spawn(
        self, argv: list[str], env: dict[str, str], cwd: str, user: User, fds: list[int]
    ) -> int:
        """Fork ``argv`` inside the sandbox as ``user``, in a process group of its own, with
        ``fds`` as its stdin, stdout and stderr; its pid there. Raises ``ProcessLookupError``
        once the sandbox is gone."""
        if self._sock is None or self._loop is None or self._sock.fileno() < 0:
            raise ProcessLookupError("the sandbox is gone")
        request = {"argv": argv, "env": env, "cwd": cwd, "uid": user.uid, "gid": user.gid}
        request["groups"] = [user.gid]
        future = self._loop.create_future()
        self._replies.append(future)
        try:
            socket.send_fds(self._sock, [json.dumps(request).encode()], fds)
        except OSError as exc:
            self._replies.remove(future)
            raise ProcessLookupError("the sandbox is gone") from exc
        return await future

    async def wait(self, pid: int) -> int:
        """The wait status of a spawned process, once it ends (``SIGKILL`` if the VM halts)."""
        return await self._exits[pid]

    def forget(self, pid: int) -> None:
        """Drop the record of a spawned process that was waited for."""
        self._exits.pop(pid, None)

    def signal(self, pid: int, sig: int) -> None:
        """Send ``sig`` to ``pid`` in the sandbox (negative: a process group; ``-1``: every
        process but the init)."""
        if self._sock is not None and self._sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                self._sock.send(json.dumps({"kill": pid, "sig": int(sig)}).encode())

    def halt(self, *, wait: bool = True) -> None:
        """Kill the init: the kernel kills every process of the sandbox with it.

        ``wait``: return once they are gone; otherwise a thread reaps them, so that a caller on
        the event loop never waits."""
        if self.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        if self._sock is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
                    self._fail_all()
            self._sock.close()
        if self._helper is None:
            return
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._helper.wait(10)
        else:
            helper = self._helper
            threading.Thread(target=lambda: helper.wait(30), daemon=True).start()


def host_path(root: Path, virtual: str, etc_overrides: Mapping[str, Path] | None = None) -> Path:
    """The host path behind an absolute, symlink-free path inside the sandbox (an ``/etc`` file
    in ``etc_overrides`` is the one bound over the host's)."""
    parts = [p for p in virtual.split("/") if p]
    if not parts:
        return root
    if etc_overrides and parts[0] == "etc" and len(parts) == 2 and parts[1] in etc_overrides:
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
    root: Path,
    path: str,
    etc_overrides: Mapping[str, Path] | None = None,
    *,
    follow_last: bool = True,
) -> str:
    """Resolve ``path`` as a :class:`VM`'s sandbox sees it (see :func:`resolve_with`)."""
    return resolve_with(
        lambda virtual: host_path(root, virtual, etc_overrides), path, follow_last=follow_last
    )


def resolve_with(
    host_of: Callable[[str], Path | None], path: str, *, follow_last: bool = True
) -> str:
    """Resolve ``path`` as the sandbox sees it: symlinks followed inside the sandbox, never on
    the host. ``host_of`` maps a symlink-free sandbox path to the host path behind it (``None``
    where the host cannot look).

    Returns the absolute virtual path; missing trailing components are kept as they are.
    Raises ``OSError`` on a symlink loop.
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
        host = host_of(candidate)
        if host is not None and (pending or follow_last) and host.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(40, "too many levels of symbolic links", path)
            link = os.readlink(host)
            if link.startswith("/"):
                done = []
            pending = [p for p in link.split("/") if p] + pending
            continue
        done.append(part)
    return "/" + "/".join(done)
