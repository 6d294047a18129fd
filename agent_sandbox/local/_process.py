"""Running one command as a host process: spawn, stream, time out, kill the whole tree.

The event-loop side is plain asyncio (``add_reader`` on the pipes and on a pidfd), which costs a
few microseconds per command where :func:`asyncio.create_subprocess_exec` on Python 3.10/3.11
spends a watcher thread per child. The leader is never reaped before its process group has been
killed, so its pid (and therefore the group id) cannot be reused under our feet.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from typing import Literal

CHUNK = 64 * 1024
_WAIT_FLAGS = os.WEXITED | os.WNOHANG | os.WNOWAIT
# Without a pidfd (Linux < 5.3) the exit is noticed by polling at this interval.
_POLL_INTERVAL = 0.02
_DRAIN_LIMIT = 4 * 1024 * 1024
_EXIT_GRACE_MS = 1
QUICK_WAIT = 0.002

Kind = Literal["stdout", "stderr"]


class Deadline(Exception):
    """The command ran past its deadline; its group was killed. ``reason`` says which one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def kill_marked(marker: bytes, *, skip: int | None = None) -> int:
    """SIGKILL every process of ours whose initial environment holds ``marker`` (``KEY=value``).

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
        stdin: bytes | None,
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
        self.pending = memoryview(stdin or b"")
        if stdin and self.popen.stdin is not None:
            self.in_fd = self.popen.stdin.fileno()
            os.set_blocking(self.in_fd, False)
            self._feed()
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        self.returncode: int | None = None

    # -- stdin ------------------------------------------------------------------------------

    def _feed(self) -> None:
        """Write as much pending stdin as the pipe takes; close it when done or refused."""
        if self.in_fd is None:
            return
        try:
            while self.pending:
                written = os.write(self.in_fd, self.pending[: 1 << 20])
                self.pending = self.pending[written:]
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the command does not read its stdin; that is its business
            self.pending = memoryview(b"")
        self._close_stdin()

    def _close_stdin(self) -> None:
        if self.in_fd is not None and self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        self.in_fd = None

    # -- exit -------------------------------------------------------------------------------

    def exited(self) -> bool:
        """True once the leader has ended (it stays unreaped until :meth:`finish`)."""
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

    def finish(self) -> int:
        """Kill what is left of the group, reap the leader, close everything; the return code."""
        if self.returncode is None:
            killpg(self.pid)
            self.returncode = self.popen.wait()
        self.close()
        return self.returncode

    def close(self) -> None:
        """Close our ends of the pipes and the pidfd (idempotent)."""
        self._close_stdin()
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


async def pump(
    child: Child, deadline: float | None, reason: str = "timeout"
) -> AsyncIterator[tuple[Kind, bytes]]:
    """Yield ``(stream, chunk)`` as the command writes, until it exits; raises :class:`Deadline`.

    On return the leader has exited and its group was killed; the caller reaps with
    :meth:`Child.finish` (in a ``finally``, which also covers an abandoned iteration).
    """
    loop = asyncio.get_running_loop()
    open_fds: dict[int, Kind] = {child.out_fd: "stdout", child.err_fd: "stderr"}
    waiter: asyncio.Future[None] | None = None
    expired = False

    def wake() -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def expire() -> None:
        nonlocal expired
        expired = True
        wake()

    timer = loop.call_at(deadline, expire) if deadline is not None else None
    # A command just spawned has not written or exited yet: start by waiting.
    fresh = True
    done = False
    try:
        if child.pidfd is not None and child.in_fd is None:
            # Quick path: most commands an agent runs end within a moment of starting. Waiting
            # for them with a blocking poll bounded to QUICK_WAIT seconds (the order of the
            # spawn itself, which holds the event loop too) saves the event loop's machinery;
            # a command still running after that is waited for through the loop.
            quick_end = time.monotonic() + QUICK_WAIT
            if deadline is not None:
                quick_end = min(quick_end, deadline)
            quick = select.poll()
            for fd in (child.out_fd, child.err_fd, child.pidfd):
                quick.register(fd, select.POLLIN)
            while not done:
                left = quick_end - time.monotonic()
                if left <= 0:
                    break
                ready = quick.poll(left * 1000)
                if not ready:
                    break
                for fd, _events in ready:
                    if fd == child.pidfd:
                        done = True
                        continue
                    kind = open_fds.get(fd)
                    if kind is None:
                        continue
                    try:
                        data = os.read(fd, CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        yield kind, data
                    else:
                        del open_fds[fd]
                        quick.unregister(fd)
            fresh = not done and open_fds == {child.out_fd: "stdout", child.err_fd: "stderr"}
        while not done:
            progressed = False
            for fd, kind in () if fresh else list(open_fds.items()):
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    continue
                except OSError as exc:  # pragma: no cover - EIO and the like
                    if exc.errno != errno.EINTR:
                        del open_fds[fd]
                    continue
                if data:
                    progressed = True
                    yield kind, data
                else:
                    del open_fds[fd]
            if child.in_fd is not None and child.pending:
                child._feed()
            if expired:
                child.kill()
                raise Deadline(reason)
            if not open_fds or (not progressed and not fresh and child.exited()):
                break
            if progressed:
                continue
            fresh = False
            waiter = loop.create_future()
            watched = list(open_fds)
            for fd in watched:
                loop.add_reader(fd, wake)
            if child.pidfd is not None:
                loop.add_reader(child.pidfd, wake)
            poller = loop.call_later(_POLL_INTERVAL, wake) if child.pidfd is None else None
            writing = child.in_fd
            if writing is not None:
                loop.add_writer(writing, wake)
            try:
                await waiter
            finally:
                for fd in watched:
                    loop.remove_reader(fd)
                if child.pidfd is not None:
                    loop.remove_reader(child.pidfd)
                if writing is not None:
                    loop.remove_writer(writing)
                if poller is not None:
                    poller.cancel()
                waiter = None
        # The leader has exited (or closed both pipes): wait for it, then kill the rest of its
        # group so nothing outlives the command, then drain what is already in the pipes.
        if not open_fds and child.pidfd is not None and not child.exited():
            # Both pipes reached EOF: the leader is almost always in the last microseconds of
            # its exit (the kernel closes files before it reports the exit). A poll of its pidfd
            # bounded to a millisecond is far cheaper than another trip through the event loop;
            # a command that closed its outputs and runs on is left to the loop below.
            exit_poll = select.poll()
            exit_poll.register(child.pidfd, select.POLLIN)
            exit_poll.poll(_EXIT_GRACE_MS)
        while not child.exited():
            if expired:
                child.kill()
                raise Deadline(reason)
            waiter = loop.create_future()
            if child.pidfd is not None:
                loop.add_reader(child.pidfd, wake)
                try:
                    await waiter
                finally:
                    loop.remove_reader(child.pidfd)
                    waiter = None
            else:
                poller = loop.call_later(_POLL_INTERVAL, wake)
                try:
                    await waiter
                finally:
                    poller.cancel()
                    waiter = None
        killpg(child.pid)
        for fd, kind in list(open_fds.items()):
            # Bounded: a straggler outside the group could otherwise keep the pipe full.
            budget = _DRAIN_LIMIT
            while budget > 0:
                try:
                    data = os.read(fd, CHUNK)
                except OSError:  # EAGAIN: nothing more was written before the exit
                    break
                if not data:
                    break
                budget -= len(data)
                yield kind, data
    finally:
        if timer is not None:
            timer.cancel()
