"""A command as a host process held by this client: spawn it, read its pipes, kill its tree.

The event-loop side is plain asyncio (``add_reader`` on the pipes and on a pidfd), which costs a
few microseconds per command where :func:`asyncio.create_subprocess_exec` on Python 3.10/3.11
spends a watcher thread per child. The leader is never reaped before its process group has been
killed, so its pid (and therefore the group id) cannot be reused under our feet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from ..errors import SandboxNotFound
from ..process import ExitStatus, ProcessHandle, Stream, exit_status, from_returncode

CHUNK = 64 * 1024
_WAIT_FLAGS = os.WEXITED | os.WNOHANG | os.WNOWAIT
# Without a pidfd (Linux < 5.3) the exit is noticed by polling at this interval.
_POLL_INTERVAL = 0.02
_DRAIN_LIMIT = 4 * 1024 * 1024
_EXIT_GRACE_MS = 1
QUICK_WAIT = 0.002


def kill_marked(marker: bytes, *, skip: int | None = None) -> int:
    """SIGKILL every process whose initial environment holds ``marker`` (``KEY=value``).

    Catches processes that left their process group (``setsid``); returns how many were hit.
    A process that re-executed itself with a cleared environment escapes this (documented).
    """
    needle = b"\0" + marker + b"\0"
    me = os.getpid()
    hit = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in (me, skip):
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if needle in b"\0" + environ:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                hit += 1
    return hit


def has_marker(pid: int, marker: bytes) -> bool:
    """True when process ``pid`` exists and its initial environment holds ``marker``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return False
    return b"\0" + marker + b"\0" in b"\0" + environ


def killpg(pgid: int) -> None:
    """SIGKILL a process group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Child:
    """A spawned command: its own session and process group, pipes set non-blocking."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: str | None,
        stdin: bool,
        marker: bytes | None = None,
    ) -> None:
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            bufsize=0,
        )
        self.pid = self.popen.pid
        self.marker = marker
        assert self.popen.stdout is not None
        assert self.popen.stderr is not None
        self.out_fd = self.popen.stdout.fileno()
        self.err_fd = self.popen.stderr.fileno()
        os.set_blocking(self.out_fd, False)
        os.set_blocking(self.err_fd, False)
        self.in_fd: int | None = None
        if stdin and self.popen.stdin is not None:
            self.in_fd = self.popen.stdin.fileno()
            os.set_blocking(self.in_fd, False)
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        self.returncode: int | None = None

    def exited(self) -> bool:
        """True once the leader has ended (it stays unreaped until :meth:`reap`)."""
        if self.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, _WAIT_FLAGS) is not None
        except ChildProcessError:  # someone else reaped it; nothing more will come
            return True

    def kill(self) -> None:
        """Kill the whole group (safe: the leader is unreaped so its pgid is still ours)."""
        if self.returncode is None:
            killpg(self.pid)
        if self.marker is not None:
            kill_marked(self.marker)

    def reap(self) -> int:
        """Kill what is left of the group, reap the leader; its return code."""
        if self.returncode is None:
            killpg(self.pid)
            self.returncode = self.popen.wait()
        return self.returncode

    def close_stdin(self) -> None:
        """Close our end of stdin (idempotent)."""
        if self.in_fd is not None and self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        self.in_fd = None

    def close(self) -> None:
        """Close our ends of the pipes and the pidfd (idempotent)."""
        self.close_stdin()
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


class PipeHandle(ProcessHandle):
    """A :class:`Child` read through its pipes on the event loop: the fast path ``exec`` takes.

    The command is killed when the sandbox's TTL passes (``expires``, wall time); its ``wait``
    then raises ``SandboxNotFound``. ``on_close`` runs once, when the handle is closed.
    """

    def __init__(
        self,
        child: Child,
        *,
        ref: str,
        stdin: bytes | None,
        keep_stdin_open: bool,
        expires: float,
        signal_from_status: bool,
        sandbox_id: str,
        on_close: Callable[[], None],
    ) -> None:
        self.ref = ref
        self._child = child
        self._loop = asyncio.get_running_loop()
        self._open: dict[int, Stream] = {child.out_fd: "stdout", child.err_fd: "stderr"}
        self._pending = memoryview(stdin or b"")
        self._close_after_pending = not keep_stdin_open
        self._signal_from_status = signal_from_status
        self._sandbox_id = sandbox_id
        self._on_close: Callable[[], None] | None = on_close
        self._fresh = True
        self._exited = False
        self._drained = False
        self._expired = False
        self._waiter: asyncio.Future[None] | None = None
        self._ttl = self._loop.call_later(max(expires - time.time(), 0), self._expire)
        self._feed()

    # -- stdin ------------------------------------------------------------------------------

    def _feed(self) -> None:
        """Write as much pending stdin as the pipe takes; close it when done (unless kept)."""
        child = self._child
        if child.in_fd is None:
            return
        try:
            while self._pending:
                written = os.write(child.in_fd, self._pending[: 1 << 20])
                self._pending = self._pending[written:]
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the command does not read its stdin; that is its business
            self._pending = memoryview(b"")
            child.close_stdin()
            return
        if self._close_after_pending:
            child.close_stdin()

    async def write_stdin(self, data: bytes) -> None:
        """Queue ``data`` for stdin and wait until the pipe has taken it."""
        if self._child.in_fd is None:
            raise BrokenPipeError("stdin is closed")
        self._pending = memoryview(bytes(self._pending) + data)
        self._feed()
        while self._pending and self._child.in_fd is not None:
            await self._wait_for([], writing=True)
            self._feed()

    async def close_stdin(self) -> None:
        """Close stdin once what was written has been taken."""
        self._close_after_pending = True
        if not self._pending:
            self._child.close_stdin()

    # -- output -----------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self) -> None:
        self._expired = True
        self._child.kill()
        self._wake()

    async def _wait_for(self, fds: list[int], *, writing: bool = False) -> None:
        """Sleep until one of ``fds`` is readable, the leader exits, or stdin can take more."""
        loop, child = self._loop, self._child
        self._waiter = loop.create_future()
        for fd in fds:
            loop.add_reader(fd, self._wake)
        if child.pidfd is not None:
            loop.add_reader(child.pidfd, self._wake)
        poller = loop.call_later(_POLL_INTERVAL, self._wake) if child.pidfd is None else None
        writer = child.in_fd if (writing or self._pending) else None
        if writer is not None:
            loop.add_writer(writer, self._wake)
        try:
            await self._waiter
        finally:
            for fd in fds:
                loop.remove_reader(fd)
            if child.pidfd is not None:
                loop.remove_reader(child.pidfd)
            if writer is not None:
                loop.remove_writer(writer)
            if poller is not None:
                poller.cancel()
            self._waiter = None

    def _read_ready(self) -> tuple[Stream, bytes] | None:
        """A chunk from the first pipe that has one, dropping pipes at end-of-file."""
        for fd, kind in list(self._open.items()):
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                # Round robin, so a chatty stdout cannot starve stderr.
                del self._open[fd]
                self._open[fd] = kind
                return kind, data
            del self._open[fd]
        return None

    def _quick_wait(self) -> None:
        """Most commands an agent runs end within a moment: a blocking poll bounded to
        ``QUICK_WAIT`` (the order of the spawn itself) saves a trip through the event loop."""
        child = self._child
        if child.pidfd is None or child.in_fd is not None:
            return
        poller = select.poll()
        for fd in (*self._open, child.pidfd):
            poller.register(fd, select.POLLIN)
        poller.poll(QUICK_WAIT * 1000)

    async def read(self) -> tuple[Stream, bytes] | None:
        """The next chunk; ``None`` once both pipes ended (or, after the leader's exit, once
        what it left in them was drained: a straggler cannot keep the command alive)."""
        if self._fresh:
            self._fresh = False
            self._quick_wait()
        while self._open:
            chunk = self._read_ready()
            if chunk is not None:
                return chunk
            if not self._open:
                break
            self._feed()
            if self._exited or self._child.exited():
                return self._drain()
            await self._wait_for(list(self._open))
        return None

    def _drain(self) -> tuple[Stream, bytes] | None:
        """After the leader's exit: kill its group, then hand out what is already in the pipes
        (bounded, so a process outside the group cannot keep them full)."""
        if not self._exited:
            self._exited = True
            self._child.kill()
            self._budget = _DRAIN_LIMIT
        if self._budget > 0:
            chunk = self._read_ready()
            if chunk is not None:
                self._budget -= len(chunk[1])
                return chunk
        self._open.clear()
        return None

    # -- end --------------------------------------------------------------------------------

    async def wait(self) -> ExitStatus:
        """Wait for the leader, kill what is left of its group, reap it."""
        child = self._child
        if child.returncode is None and not child.exited() and child.pidfd is not None:
            # Both pipes ended: the leader is almost always in the last microseconds of its
            # exit. A poll bounded to a millisecond is cheaper than a trip through the loop.
            poller = select.poll()
            poller.register(child.pidfd, select.POLLIN)
            poller.poll(_EXIT_GRACE_MS)
        while not child.exited():
            await self._wait_for([])
        returncode = child.reap()
        if self._expired:
            raise SandboxNotFound(
                f"sandbox {self._sandbox_id} reached its TTL while the command ran; it was killed",
                provider="local",
                op="exec",
                sandbox_id=self._sandbox_id,
            )
        status = from_returncode(returncode)
        if self._signal_from_status and status.signal is None and 128 < returncode <= 128 + 64:
            # bwrap reports a command killed by signal N as exit status 128+N.
            status = exit_status(None, returncode - 128)
        return status

    async def kill(self) -> None:
        """Kill the command's whole tree."""
        self._child.kill()
        self._wake()

    async def close(self) -> None:
        """Kill whatever still runs, reap it, and release the pipes and the on-disk record."""
        self._ttl.cancel()
        child = self._child
        if child.returncode is None:
            child.kill()
            child.reap()
        child.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()
