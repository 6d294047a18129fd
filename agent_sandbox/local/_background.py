"""Background processes of the local provider: started through a supervisor, reached by ref.

Each one has a directory ``bg/<ref>/`` in its sandbox's directory (never visible inside the
jail) where its supervisor (``_supervisor.py``) keeps its output, its stdin FIFO, a control FIFO
and, once it has ended, its exit status. A handle only reads and writes those files, so any
client, in any process, can follow, feed, kill or wait for the process; output is replayed from
the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import secrets
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from ..errors import FileNotFound, ProcessNotFound, SandboxNotFound, StdinClosed
from ..models import ProcessInfo
from ..process import ExitStatus, ProcessHandle, Stream, exit_status, from_returncode
from ._process import has_marker, kill_marked
from ._store import MARK_SANDBOX, PROVIDER, Box

REF_RE = re.compile(r"^p-[0-9a-f]{16}$")
MARK_PROC = "AGENT_SANDBOX_PROC"
SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_supervisor.py")
_CHUNK = 64 * 1024
_POLL_MIN, _POLL_MAX = 0.002, 0.05
_LIVENESS_EVERY = 0.5
_HANDSHAKE_TIMEOUT = 30.0


def bg_dir(box: Box) -> str:
    """Where the sandbox's background processes keep their files."""
    return os.path.join(box.dir, "bg")


async def start(
    box: Box,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    shown_cwd: str,
    command: list[str],
    stdin: bytes | None,
    stdin_open: bool,
    marker: str,
    signal_from_status: bool,
) -> SupervisedHandle:
    """Start ``argv`` under a supervisor of its own; returns once it runs (or failed to)."""
    ref = "p-" + secrets.token_hex(8)
    directory = os.path.join(bg_dir(box), ref)
    busy = os.path.join(box.procs, ref)
    launcher = _launch(
        box, ref, directory, busy, argv, env, cwd, command, stdin, stdin_open, marker
    )
    try:
        line = await _handshake(launcher)
    finally:
        launcher.wait()
    report = json.loads(line or "{}")
    if report.get("error") == "cwd":
        _forget(directory, busy)
        raise FileNotFound(
            f"working directory not found: {shown_cwd}",
            provider=PROVIDER,
            op="exec",
            sandbox_id=box.id,
        )
    if "pid" not in report:
        _forget(directory, busy)
        raise SandboxNotFound(
            f"the background process could not be started in {box.id}",
            provider=PROVIDER,
            op="start",
            sandbox_id=box.id,
        )
    return SupervisedHandle(box, ref, signal_from_status)


def _launch(
    box: Box,
    ref: str,
    directory: str,
    busy: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    command: list[str],
    stdin: bytes | None,
    stdin_open: bool,
    marker: str,
) -> subprocess.Popen[bytes]:
    """Lay out the process's directory and start its supervisor (which detaches at once)."""
    os.makedirs(directory, mode=0o700)
    with open(busy, "wb"):
        pass
    os.mkfifo(os.path.join(directory, "ctl"), 0o600)
    if stdin is not None or stdin_open:
        os.mkfifo(os.path.join(directory, "stdin"), 0o600)
        if stdin:
            with open(os.path.join(directory, "stdin.init"), "wb") as handle:
                handle.write(stdin)
    spec: dict[str, Any] = {
        "argv": argv,
        "env": env,
        "cwd": cwd,
        "expires": box.expires,
        "stdin": stdin is not None or stdin_open,
        "stdin_open": stdin_open,
        "marker": marker,
        "busy": busy,
        "command": command,
        "started_at": datetime.now(timezone.utc).isoformat(),
    }
    with open(os.path.join(directory, "spec.json"), "w") as handle:
        json.dump(spec, handle)
    return subprocess.Popen(
        [sys.executable, "-I", "-S", SUPERVISOR, directory],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={MARK_SANDBOX: box.id, MARK_PROC: ref},
        close_fds=True,
    )


async def _handshake(launcher: subprocess.Popen[bytes]) -> bytes:
    """The supervisor's one-line report, read without blocking the event loop."""
    assert launcher.stdout is not None
    loop = asyncio.get_running_loop()
    fd = launcher.stdout.fileno()
    os.set_blocking(fd, False)
    data = b""
    deadline = time.monotonic() + _HANDSHAKE_TIMEOUT
    try:
        while b"\n" not in data and time.monotonic() < deadline:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _set_done, ready)
            try:
                await asyncio.wait_for(ready, deadline - time.monotonic())
            except TimeoutError:
                break
            finally:
                loop.remove_reader(fd)
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        launcher.stdout.close()
    return data.split(b"\n", 1)[0]


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _forget(directory: str, busy: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(busy)
    for name in os.listdir(directory):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def attach(box: Box, ref: str, signal_from_status: bool) -> SupervisedHandle:
    """A handle on the background process ``ref`` of ``box``. Raises ``ProcessNotFound``."""
    if not REF_RE.match(ref) or not os.path.isfile(os.path.join(bg_dir(box), ref, "spec.json")):
        raise ProcessNotFound(
            f"no process {ref!r} in sandbox {box.id}",
            provider=PROVIDER,
            op="attach",
            sandbox_id=box.id,
        )
    return SupervisedHandle(box, ref, signal_from_status)


def list_processes(box: Box) -> list[ProcessInfo]:
    """The sandbox's background processes, oldest first."""
    try:
        refs = [r for r in os.listdir(bg_dir(box)) if REF_RE.match(r)]
    except FileNotFoundError:
        return []
    found = []
    for ref in refs:
        directory = os.path.join(bg_dir(box), ref)
        spec = _read_json(os.path.join(directory, "spec.json"))
        if spec is None:
            continue
        ended = _read_json(os.path.join(directory, "exit.json"))
        status = _status(ended, False) if ended is not None else None
        found.append(
            ProcessInfo(
                ref=ref,
                command=tuple(str(a) for a in spec.get("command") or ()),
                running=status is None and _supervisor_alive(directory, ref),
                exit_code=None if status is None else status.exit_code,
                started_at=spec.get("started_at"),
            )
        )
    return sorted(found, key=lambda p: p.started_at or datetime.min.replace(tzinfo=timezone.utc))


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _status(ended: dict[str, Any], signal_from_status: bool) -> ExitStatus:
    returncode = ended.get("returncode")
    if not isinstance(returncode, int):
        return ExitStatus(137, 9)
    status = from_returncode(returncode)
    if signal_from_status and status.signal is None and 128 < returncode <= 128 + 64:
        status = exit_status(None, returncode - 128)  # bwrap's 128+N for signal N
    return status


def _supervisor_alive(directory: str, ref: str) -> bool:
    if not os.path.isdir(directory):  # the sandbox was destroyed
        return False
    pids = _read_json(os.path.join(directory, "pids.json"))
    if pids is None:  # starting, or failed before it started anything
        return not os.path.exists(os.path.join(directory, "exit.json"))
    pid = pids.get("supervisor")
    return isinstance(pid, int) and has_marker(pid, f"{MARK_PROC}={ref}".encode())


class SupervisedHandle(ProcessHandle):
    """A background process, seen through its supervisor's files."""

    def __init__(self, box: Box, ref: str, signal_from_status: bool) -> None:
        self.ref = ref
        self._box = box
        self._dir = os.path.join(bg_dir(box), ref)
        self._signal_from_status = signal_from_status
        self._files: dict[Stream, int] = {}
        self._limits: dict[Stream, int] | None = None
        self._next: Stream = "stdout"
        self._checked = time.monotonic()

    def _read_files(self) -> tuple[Stream, bytes] | None:
        for kind in (self._next, "stderr" if self._next == "stdout" else "stdout"):
            fd = self._files.get(kind)
            if fd is None:
                try:
                    fd = self._files[kind] = os.open(
                        os.path.join(self._dir, kind), os.O_RDONLY | os.O_CLOEXEC
                    )
                except FileNotFoundError:
                    continue
            size = _CHUNK
            if self._limits is not None:
                size = min(size, self._limits[kind] - os.lseek(fd, 0, os.SEEK_CUR))
            data = os.read(fd, size) if size > 0 else b""
            if data:
                self._next = "stderr" if kind == "stdout" else "stdout"
                return kind, data
        return None

    def _ended(self) -> bool:
        if self._limits is not None:
            return True
        if not os.path.exists(os.path.join(self._dir, "exit.json")) and self._alive():
            return False
        # What was written before the end is read; a straggler writing on is not followed.
        self._limits = {}
        for kind in ("stdout", "stderr"):
            try:
                self._limits[kind] = os.stat(os.path.join(self._dir, kind)).st_size
            except OSError:
                self._limits[kind] = 0
        return True

    def _alive(self) -> bool:
        """Whether the supervisor runs (checked every so often: a destroy may have killed it)."""
        now = time.monotonic()
        if now - self._checked < _LIVENESS_EVERY:
            return True
        self._checked = now
        return _supervisor_alive(self._dir, self.ref)

    async def read(self) -> tuple[Stream, bytes] | None:
        delay = _POLL_MIN
        while True:
            chunk = self._read_files()
            if chunk is not None:
                return chunk
            if self._ended():
                return self._read_files()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    async def wait(self) -> ExitStatus:
        delay = _POLL_MIN
        while not self._ended():
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
        ended = _read_json(os.path.join(self._dir, "exit.json"))
        if ended is None:
            if not _exists(self._box.dir):
                raise SandboxNotFound(
                    f"sandbox {self._box.id} ended while the process ran",
                    provider=PROVIDER,
                    op="wait",
                    sandbox_id=self._box.id,
                )
            return ExitStatus(137, 9)  # its supervisor was killed, and it with it
        return _status(ended, self._signal_from_status)

    def _control(self, request: bytes) -> bool:
        """Send a request to the supervisor; False when none is listening."""
        try:
            fd = os.open(os.path.join(self._dir, "ctl"), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            os.write(fd, request)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    async def kill(self) -> None:
        if not self._control(b"k"):  # no supervisor: kill whatever is left of the process
            spec = _read_json(os.path.join(self._dir, "spec.json")) or {}
            marker = spec.get("marker")
            if isinstance(marker, str) and marker.startswith("AGENT_SANDBOX_EXEC="):
                kill_marked(marker.encode())

    async def write_stdin(self, data: bytes) -> None:
        try:
            fd = os.open(os.path.join(self._dir, "stdin"), os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENOENT: closed or never opened; ENXIO: nobody reads it
            raise StdinClosed(
                f"the stdin of process {self.ref} is closed",
                provider=PROVIDER,
                op="write_stdin",
                sandbox_id=self._box.id,
            ) from exc
        try:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view[:_CHUNK]) :]
                except BlockingIOError:
                    await asyncio.sleep(_POLL_MIN)
                except OSError as exc:
                    if exc.errno != errno.EPIPE:
                        raise
                    raise StdinClosed(
                        f"process {self.ref} no longer reads its stdin",
                        provider=PROVIDER,
                        op="write_stdin",
                        sandbox_id=self._box.id,
                    ) from exc
        finally:
            os.close(fd)

    async def close_stdin(self) -> None:
        self._control(b"c")

    async def close(self) -> None:
        for fd in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()


def _exists(path: str) -> bool:
    return os.path.isdir(path)
