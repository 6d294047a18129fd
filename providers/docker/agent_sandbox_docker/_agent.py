"""The client of the exec agent (``agent/agent.c``), the main process of a sandbox that can run
it: the process seam, ``processes`` and file transfer over one multiplexed stream.

What the agent sends is hostile input: code in the sandbox may have replaced the agent or write
into its stream. Every frame's length, type, id, flow-control window and exit status is checked;
a stream that breaks the protocol ends with ``ProviderError``, and nothing it says is trusted
beyond the process or request it names. The protocol is described in docs/providers/docker.md.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import logging
import os
import re
import struct
import tarfile
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from agent_sandbox.errors import (
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    ProcessNotFound,
    ProviderError,
    QuotaExceeded,
    SandboxError,
    SandboxNotFound,
    StdinClosed,
)
from agent_sandbox.models import ProcessInfo, StartOptions
from agent_sandbox.process import ExitStatus, ProcessHandle, Stream, exit_status

from ._errors import PROVIDER
from ._stream import DockerStream

if TYPE_CHECKING:
    import docker  # type: ignore[import-untyped,unused-ignore]

log = logging.getLogger("agent_sandbox.docker")
PROTOCOL = 1
PATH = "/.agent-sandbox/agent"
MAX_PAYLOAD = 4 << 20
WINDOW = 256 * 1024
CHUNK = 1 << 16
FILE_CHUNK = 1 << 20
NOT_REGULAR = 1001
_HEAD = struct.Struct(">IBI")
_REF = re.compile(r"p-[0-9a-f]{16}")
_ENTRY = struct.Struct(">BBhQHH")
HANDSHAKE_TIMEOUT = 15.0
_ARCHES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


class AgentUnavailable(ProviderError):
    """The agent cannot run in this sandbox (the caller falls back to the engine's exec)."""


@functools.cache
def binary(arch: str) -> bytes | None:
    """The agent built for an image's architecture (as the engine names it); ``None``, with a
    one-line notice, when the package has none for it."""
    name = _ARCHES.get(arch)
    try:
        if name is not None:
            return (resources.files(__package__) / "_bin" / f"agent-{name}").read_bytes()
    except OSError:
        pass
    log.warning("no exec agent for %r images; their commands go through the engine's exec", arch)
    return None


def install(api: docker.APIClient, container: str, agent: bytes) -> DockerStream:
    """Copy the agent into a created container and attach to its stdio (before it starts, so
    nothing it says is missed). Blocking; raises ``AgentUnavailable`` when the copy is refused."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        folder = tarfile.TarInfo(PATH.rsplit("/", 1)[0].lstrip("/"))
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        program = tarfile.TarInfo(PATH.lstrip("/"))
        program.size, program.mode = len(agent), 0o755
        tar.addfile(program, io.BytesIO(agent))
    try:
        api.put_archive(container, "/", archive.getvalue())
    except Exception as exc:
        raise AgentUnavailable(f"the exec agent cannot be copied into the sandbox ({exc})") from exc
    params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
    return DockerStream.open(api, "/containers/{0}/attach", container, params=params)


def relay(api: docker.APIClient, container: str) -> DockerStream:
    """A new stream to a running sandbox's agent: an exec of the agent's relay. Blocking."""
    made = api.exec_create(container, [PATH, "relay"], stdin=True)
    body = {"Tty": False, "Detach": False}
    return DockerStream.open(api, "/exec/{0}/start", made["Id"], data=body)


def frame(kind: str, ident: int, payload: bytes = b"") -> bytes:
    """One protocol frame: length, type, id, payload."""
    return _HEAD.pack(5 + len(payload), ord(kind), ident) + payload


def _event_loop() -> object:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return anyio.lowlevel.current_token()


class _Channel:
    """One process as this client sees it."""

    def __init__(self, stdin: bytes, close_stdin: bool, piped: bool) -> None:
        self.ref = ""
        self.error: SandboxError | None = None
        self.chunks: deque[tuple[Stream, bytes]] = deque()
        self.unread = 0  # output received and not yet handed back to the agent as credit
        self.consumed = 0
        self.status: ExitStatus | None = None
        self.credit = WINDOW  # stdin bytes we may still send
        self.stdin = stdin
        self.close_stdin = close_stdin and piped
        self.stdin_closed = not piped


class _Request:
    def __init__(self, limit: int, op: str, path: str) -> None:
        self.limit = limit
        self.op = op
        self.path = path
        self.data: list[bytes] = []
        self.size = 0
        self.done = False
        self.error: SandboxError | None = None


class AgentConnection:
    """One stream to a sandbox's agent (its attach stream, or a relay exec), shared by every
    process and request of one backend on that sandbox. It is read by whichever caller waits
    for something (no task of its own): one reads and dispatches, the others wait for news."""

    def __init__(self, stream: DockerStream, sandbox_id: str) -> None:
        self._stream = stream
        self.sandbox_id = sandbox_id
        self._buffer = bytearray()
        self._channels: dict[int, _Channel] = {}
        self._requests: dict[int, _Request] = {}
        self._next_id = 1
        self._outbox: list[bytes | memoryview] = []
        self._send_lock = anyio.Lock()
        self._reading = False
        self._news = anyio.Event()
        self.broken: SandboxError | None = None
        self._hello = False
        self._owner = (os.getpid(), _event_loop())

    @property
    def usable(self) -> bool:
        """Not broken, and in the process and event loop that opened it."""
        return self.broken is None and self._owner == (os.getpid(), _event_loop())

    async def handshake(self, timeout: float) -> None:
        """Say hello; raises ``ProviderError`` when the agent refuses this client's protocol."""
        await self._send(frame("h", 0, struct.pack(">H", PROTOCOL)))
        with anyio.fail_after(timeout):
            await self._until(lambda: self._hello)

    def drop(self) -> None:
        """Drop the stream at once: the sandbox is going away (what waits on it learns so)."""
        self._break(
            SandboxNotFound(
                f"sandbox {self.sandbox_id} was destroyed",
                provider=PROVIDER,
                sandbox_id=self.sandbox_id,
            )
        )

    async def aclose(self) -> None:
        """Tell the agent to let go of what this client held (its processes keep running), then
        drop the stream."""
        if self.usable:
            with anyio.move_on_after(1, shield=True):
                await self._send(frame("b", 0))
        self._break(ProviderError("the connection to the exec agent is closed", provider=PROVIDER))

    # -- the one reader -------------------------------------------------------------------------

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self.broken is not None:
                raise self.broken
            if self._reading:
                await self._news.wait()
                continue
            self._reading = True
            try:
                frames = await self._stream.frames()
                if frames is None:
                    self._break(
                        SandboxNotFound(
                            f"sandbox {self.sandbox_id} has ended (its exec agent is gone)",
                            provider=PROVIDER,
                            op="exec",
                            sandbox_id=self.sandbox_id,
                        )
                    )
                for kind, data in frames or ():
                    if kind == "stdout":  # the agent's stderr holds its own diagnostics only
                        self._feed(data)
            except SandboxError as exc:
                self._break(exc)
            finally:
                self._reading = False
                news, self._news = self._news, anyio.Event()
                news.set()
            await self._flush()

    def _break(self, error: SandboxError) -> None:
        self.broken = self.broken or error
        self._stream.close()

    def _violation(self, what: str) -> ProviderError:
        return ProviderError(
            f"the exec agent of sandbox {self.sandbox_id} broke its protocol ({what}); "
            "the sandbox may be compromised",
            provider=PROVIDER,
            op="exec",
            sandbox_id=self.sandbox_id,
        )

    def _feed(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        with memoryview(buf) as view:  # one copy per payload, none per slice
            while len(buf) - pos >= 4:
                (size,) = struct.unpack_from(">I", buf, pos)
                if not 5 <= size <= MAX_PAYLOAD + 5:
                    raise self._violation(f"frame length {size}")
                if len(buf) - pos - 4 < size:
                    break
                _, kind, ident = _HEAD.unpack_from(buf, pos)
                self._dispatch(chr(kind), ident, bytes(view[pos + 9 : pos + 4 + size]))
                pos += 4 + size
        del buf[:pos]
        if len(buf) > MAX_PAYLOAD + 9:
            raise self._violation("oversized frame")

    def _dispatch(self, kind: str, ident: int, payload: bytes) -> None:
        if kind == "H":
            self._hello = len(payload) >= 2
            return
        if kind == "N":
            text = payload[:300].decode("utf-8", "replace")
            raise ProviderError(
                f"the exec agent of sandbox {self.sandbox_id} refused this client: {text}",
                provider=PROVIDER,
                sandbox_id=self.sandbox_id,
            )
        channel = self._channels.get(ident)
        request = self._requests.get(ident)
        if channel is None and request is None:
            if not 0 < ident < self._next_id:
                raise self._violation(f"frame {kind!r} for unknown id {ident}")
            return  # for a process or request this client has let go of
        if kind == "F":
            if len(payload) < 2:
                raise self._violation("short failure")
            code = struct.unpack_from(">H", payload)[0]
            message = payload[2:502].decode("utf-8", "replace")
            if channel is not None:
                channel.error = self._failure(code, message, "exec", "working directory")
            else:
                assert request is not None
                request.error = self._failure(code, message, request.op, request.path)
                if code == errno.EFBIG:
                    request.error = FileTooLarge(
                        f"read_file {request.path}: larger than max_bytes={request.limit}; pass a "
                        "larger max_bytes or use download()",
                        **self._where(request.op),
                    )
        elif channel is not None:
            self._channel_frame(channel, kind, payload)
        elif kind in "DL":
            assert request is not None
            request.data.append(payload)
            request.size += len(payload)
            request.done = kind == "L"
            if request.size > request.limit:
                raise self._violation("more data than asked for")
        elif kind == "Z":
            assert request is not None
            request.done = True
        else:
            raise self._violation(f"frame {kind!r} for a request")

    def _channel_frame(self, channel: _Channel, kind: str, payload: bytes) -> None:
        if kind == "P":
            ref = payload[4:].decode("ascii", "replace")
            if channel.ref or not _REF.fullmatch(ref):
                raise self._violation("bad start reply")
            channel.ref = ref
        elif kind in "12" and channel.ref and channel.status is None and payload:
            channel.unread += len(payload)
            if channel.unread > WINDOW:
                raise self._violation("output past the flow-control window")
            channel.chunks.append(("stdout" if kind == "1" else "stderr", payload))
        elif kind == "X" and channel.ref and channel.status is None and len(payload) == 5:
            code, signal = struct.unpack(">IB", payload)
            channel.status = exit_status(None, signal) if signal else exit_status(code)
        elif kind == "G" and len(payload) == 4:
            channel.credit += struct.unpack(">I", payload)[0]
            if channel.credit > WINDOW:
                raise self._violation("stdin credit past the window")
            self._outbox += self._stdin_frames(channel)
        else:
            raise self._violation(f"unexpected frame {kind!r}")

    def _where(self, op: str) -> dict[str, Any]:
        return {"provider": PROVIDER, "op": op, "sandbox_id": self.sandbox_id}

    def _failure(self, code: int, message: str, op: str, path: str) -> SandboxError:
        where = self._where(op)
        if code in (errno.ENOENT, errno.ENOTDIR):
            return FileNotFound(f"no such file or directory: {path}", **where)
        if code == errno.EISDIR:
            return IsADirectory(f"is a directory: {path}", **where)
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDenied(f"{op} {path}: permission denied", **where)
        if code == errno.ESRCH:
            return ProcessNotFound("no such process in the sandbox", **where)
        if code in (errno.ENOSPC, errno.EDQUOT):
            return QuotaExceeded(f"{op} {path}: {message}", **where)
        if code == NOT_REGULAR:
            return InvalidPath(
                f"{op} {path}: not a regular file (a FIFO, device or socket)", **where
            )
        if code in (errno.ELOOP, errno.EEXIST, errno.ENAMETOOLONG, errno.EINVAL):
            return InvalidPath(f"{op} {path}: {message}", **where)
        return ProviderError(f"{op} {path} failed: {message} (errno {code})", **where)

    # -- sending -----------------------------------------------------------------------------

    async def _send(self, *frames: bytes | memoryview) -> None:
        self._outbox += frames
        await self._flush()

    async def _flush(self) -> None:
        if not self._outbox or self.broken is not None:
            return
        with anyio.CancelScope(shield=True):  # a frame is never half written
            async with self._send_lock:
                data, self._outbox = b"".join(self._outbox), []
                if data:
                    try:
                        await self._stream.send(data)
                    except SandboxError as exc:
                        self._break(exc)

    def _new_id(self) -> int:
        ident, self._next_id = self._next_id, self._next_id + 1
        return ident

    def _stdin_frames(self, channel: _Channel) -> list[bytes]:
        frames = []
        ident = next(k for k, v in self._channels.items() if v is channel)
        while channel.stdin and channel.credit:
            part = channel.stdin[: min(channel.credit, CHUNK)]
            channel.stdin = channel.stdin[len(part) :]
            channel.credit -= len(part)
            frames.append(frame("i", ident, part))
        if not channel.stdin and channel.close_stdin:
            channel.close_stdin, channel.stdin_closed = False, True
            frames.append(frame("c", ident))
        return frames

    # -- what the backend calls ----------------------------------------------------------------

    async def start(self, argv: list[str], options: StartOptions) -> AgentProcess:
        """Start ``argv``; raises ``FileNotFound`` for a missing ``cwd``."""
        piped = options.stdin is not None or options.stdin_open
        env = [f"{k}={v}" for k, v in options.env.items()]
        strings = [*argv, *env, options.cwd or ""]
        flags = (1 if options.detached else 0) | (2 if piped else 0)
        payload = struct.pack(">BHH", flags, len(argv), len(env)) + b"".join(
            s.encode("utf-8", "surrogateescape") + b"\0" for s in strings
        )
        channel = _Channel(options.stdin or b"", not options.stdin_open, piped)
        return await self._open(channel, frame("s", self._new_id(), payload))

    async def attach(self, ref: str) -> AgentProcess:
        """Follow a background process again; its recent output is replayed."""
        if not _REF.fullmatch(ref):
            raise ProcessNotFound(f"not a process ref: {ref!r}", provider=PROVIDER, op="attach")
        channel = _Channel(b"", False, True)
        return await self._open(channel, frame("a", self._new_id(), ref.encode()))

    async def _open(self, channel: _Channel, request: bytes) -> AgentProcess:
        ident = _HEAD.unpack_from(request)[2]
        self._channels[ident] = channel
        try:
            await self._send(request, *self._stdin_frames(channel))
            await self._until(lambda: bool(channel.ref) or channel.error is not None)
        except BaseException:
            self._channels.pop(ident, None)
            raise
        if channel.error is not None:
            self._channels.pop(ident, None)
            raise channel.error
        return AgentProcess(self, ident, channel)

    async def processes(self) -> list[ProcessInfo]:
        """The sandbox's background processes, oldest first."""
        data = await self._request(frame("l", self._next_id), limit=MAX_PAYLOAD, op="processes")
        found, pos = [], 0
        while pos < len(data):
            if len(data) - pos < _ENTRY.size:
                raise self._violation("short process entry")
            running, signal, code, started, ref_len, cmd_len = _ENTRY.unpack_from(data, pos)
            pos += _ENTRY.size
            ref = data[pos : pos + ref_len].decode("ascii", "replace")
            command = data[pos + ref_len : pos + ref_len + cmd_len]
            pos += ref_len + cmd_len
            if pos > len(data) or not _REF.fullmatch(ref):
                raise self._violation("bad process entry")
            status = None if running else exit_status(None, signal) if signal else exit_status(code)
            found.append(
                ProcessInfo(
                    ref=ref,
                    command=tuple(a.decode("utf-8", "replace") for a in command.split(b"\0") if a),
                    running=bool(running),
                    exit_code=None if status is None else status.exit_code,
                    started_at=datetime.fromtimestamp(started / 1000, timezone.utc),
                )
            )
        return found

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        """The content of a regular file of at most ``max_bytes``, read by the agent."""
        payload = struct.pack(">Q", max_bytes) + path.encode("utf-8", "surrogateescape")
        request = frame("r", self._next_id, payload)
        return await self._request(request, limit=max_bytes, op="read_file", path=path)

    async def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a file (its mode kept), creating parents, as the agent's user."""
        ident = self._next_id
        view = memoryview(data)
        frames: list[bytes | memoryview] = [
            frame("w", ident, path.encode("utf-8", "surrogateescape"))
        ]
        for i in range(0, len(view), FILE_CHUNK):  # a header, then the caller's bytes uncopied
            part = view[i : i + FILE_CHUNK]
            frames += [_HEAD.pack(5 + len(part), ord("d"), ident), part]
        await self._request(*frames, frame("z", ident), limit=0, op="write_file", path=path)

    async def _request(
        self, *frames: bytes | memoryview, limit: int, op: str, path: str = ""
    ) -> bytes:
        ident = self._new_id()
        request = self._requests[ident] = _Request(limit, op, path)
        try:
            await self._send(*frames)
            await self._until(lambda: request.done or request.error is not None)
        finally:
            del self._requests[ident]
        if request.error is not None:
            raise request.error
        return b"".join(request.data)


class AgentProcess(ProcessHandle):
    """A process the agent runs; ``ref`` reaches it from any client."""

    def __init__(self, conn: AgentConnection, ident: int, channel: _Channel) -> None:
        self._conn = conn
        self._id = ident
        self._channel = channel
        self.ref = channel.ref

    async def read(self) -> tuple[Stream, bytes] | None:
        channel = self._channel
        await self._conn._until(
            lambda: bool(channel.chunks) or channel.status is not None or channel.error is not None
        )
        if not channel.chunks:
            if channel.error is not None:
                raise channel.error
            return None
        chunk = channel.chunks.popleft()
        channel.unread -= len(chunk[1])
        channel.consumed += len(chunk[1])
        if channel.consumed >= WINDOW // 4:
            credit, channel.consumed = channel.consumed, 0
            await self._conn._send(frame("g", self._id, struct.pack(">I", credit)))
        return chunk

    async def wait(self) -> ExitStatus:
        channel = self._channel
        await self._conn._until(lambda: channel.status is not None)
        assert channel.status is not None
        return channel.status

    async def kill(self) -> None:
        if self._channel.status is None:
            await self._conn._send(frame("k", self._id))

    async def write_stdin(self, data: bytes) -> None:
        channel = self._channel
        if channel.stdin_closed or channel.close_stdin:
            raise StdinClosed("the process's stdin is closed", provider=PROVIDER, op="write_stdin")
        view = memoryview(data)
        while view:
            await self._conn._until(lambda: channel.credit > 0 or channel.status is not None)
            if channel.status is not None:
                return
            part = bytes(view[: min(channel.credit, CHUNK)])
            channel.credit -= len(part)
            view = view[len(part) :]
            await self._conn._send(frame("i", self._id, part))

    async def close_stdin(self) -> None:
        if not self._channel.stdin_closed:
            self._channel.stdin_closed = True
            await self._conn._send(frame("c", self._id))

    async def close(self) -> None:
        held = self._conn._channels.pop(self._id, None) is not None
        if held and self._channel.status is None and self._conn.usable:
            await self._conn._send(frame("x", self._id))
