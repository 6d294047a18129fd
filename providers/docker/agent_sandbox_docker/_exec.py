"""One command's exec on the engine: create, start with the attach stream hijacked, and read
that stream straight off its socket without blocking the event loop (no thread per command).
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import select
import socket
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from agent_sandbox.errors import ProviderUnavailable
from agent_sandbox.models import ExecOptions

from . import _wire
from ._errors import PROVIDER

if TYPE_CHECKING:
    import docker  # type: ignore[import-untyped,unused-ignore]

# The exec wrapper: report our process id (= process group and session id: the engine starts each
# exec as a session leader) on stderr, then become the command. On timeout we kill that group
# from inside the container.
_WRAPPER = 'echo "$$" >&2; exec "$@"'

# anyio >= 4.7 names it wait_readable; older 4.x only has wait_socket_readable
_wait_readable: Callable[[socket.socket], Awaitable[None]] = (
    getattr(anyio, "wait_readable", None) or anyio.wait_socket_readable
)


class ExecConnection:
    """One exec's hijacked attach connection, read without blocking the event loop."""

    def __init__(self, exec_id: str, response: Any, sock: Any, head: bytes) -> None:
        self.exec_id = exec_id
        self._response = response
        self._sock = sock
        self._head = head
        self._parser = _wire.FrameParser()
        self._pending: collections.deque[tuple[str, bytes]] = collections.deque()
        self._plain = type(sock) is socket.socket
        self._writer: threading.Thread | None = None
        self._stop = threading.Event()
        self.timed_out = False
        self.eof = False

    @classmethod
    def start(
        cls, api: docker.APIClient, container: str, argv: list[str], options: ExecOptions
    ) -> ExecConnection:
        env = [f"{k}={v}" for k, v in options.env.items()] or None
        ex = api.exec_create(
            container,
            ["/bin/sh", "-c", _WRAPPER, "sh", *argv],
            stdout=True,
            stderr=True,
            stdin=options.stdin is not None,
            environment=env,
            workdir=options.cwd,
            user=options.user or "",
        )
        exec_id = ex["Id"]
        res = api._post_json(
            api._url("/exec/{0}/start", exec_id),
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
            data={"Tty": False, "Detach": False},
            stream=True,
        )
        try:
            raw = api._get_raw_response_socket(res)
        except BaseException:
            res.close()
            raise
        sock = getattr(raw, "_sock", raw)
        head = b""
        if type(sock) is socket.socket:
            sock.setblocking(False)
            # bytes the HTTP layer read past the response headers belong to the stream
            fp = getattr(getattr(res.raw, "_fp", None), "fp", None)
            peek = getattr(fp, "peek", None)
            if peek is not None:
                try:
                    head = bytes(peek())
                except (BlockingIOError, OSError, ValueError):
                    head = b""
        conn = cls(exec_id, res, sock, head)
        if options.stdin is not None:
            conn._start_writer(options.stdin)
        return conn

    def _start_writer(self, data: bytes) -> None:
        def pump() -> None:
            view = memoryview(data)
            sock = self._sock
            try:
                while view and not self._stop.is_set():
                    if self._plain:
                        _, ready, _ = select.select([], [sock], [], 0.2)
                        if not ready:
                            continue
                        try:
                            sent = sock.send(view[: 1 << 16])
                        except BlockingIOError:
                            continue
                    else:
                        sock.sendall(view[: 1 << 16])
                        sent = min(len(view), 1 << 16)
                    view = view[sent:]
                if not self._stop.is_set():
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the command stopped reading or ended; its exit status tells the rest

        self._writer = threading.Thread(target=pump, name="agent-sandbox-stdin", daemon=True)
        self._writer.start()

    async def _recv(self) -> bytes:
        try:
            return await self._recv_raw()
        except OSError as exc:
            raise ProviderUnavailable(
                f"the command's output stream from the Docker engine broke: {exc}",
                provider=PROVIDER,
                op="exec",
            ) from exc

    async def _recv_raw(self) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            return data
        if self._plain:
            while True:
                try:
                    return bytes(self._sock.recv(1 << 16))
                except BlockingIOError:
                    await _wait_readable(self._sock)
        recv = self._sock.recv
        data = await anyio.to_thread.run_sync(recv, 1 << 16, abandon_on_cancel=True)
        return bytes(data)

    async def frames(self, deadline: float | None) -> AsyncGenerator[tuple[str, bytes], None]:
        """Frames as they arrive until the stream ends or ``deadline`` passes (then ``timed_out``)."""
        while True:
            if deadline is None:
                data = await self._recv()
            else:
                remaining = deadline - time.monotonic()
                data = b""
                with anyio.move_on_after(max(remaining, 0)) as scope:
                    data = await self._recv()
                if scope.cancelled_caught:
                    self.timed_out = True
                    return
            if not data:
                self.eof = True
                return
            # frames wait in _pending until taken, so none is lost when the consumer leaves
            # after one of several frames that arrived together
            self._pending.extend(self._parser.feed(data))
            while self._pending:
                yield self._pending.popleft()

    async def read_marker(
        self, marker: _wire.MarkerSplitter, seconds: float
    ) -> builtins.list[tuple[str, bytes]]:
        """Read on until the wrapper's process-group line has arrived (at most ``seconds``, or
        the end of the stream); return the command's own frames read meanwhile."""
        out: builtins.list[tuple[str, bytes]] = []

        def take() -> None:
            while self._pending and not marker.done:
                kind, payload = self._pending.popleft()
                if kind == _wire.STDERR:
                    payload = marker.feed(payload)
                if payload:
                    out.append((kind, payload))

        take()
        with anyio.move_on_after(seconds):
            while not marker.done and not self.eof:
                data = await self._recv()
                if not data:
                    self.eof = True
                    break
                self._pending.extend(self._parser.feed(data))
                take()
        return out

    async def drain(self, seconds: float) -> builtins.list[tuple[str, bytes]]:
        """What is left on the stream after a kill, waiting at most ``seconds``."""
        out: builtins.list[tuple[str, bytes]] = list(self._pending)
        self._pending.clear()
        with anyio.move_on_after(seconds):
            while not self.eof:
                data = await self._recv()
                if not data:
                    self.eof = True
                    break
                out.extend(self._parser.feed(data))
        return out

    def close(self) -> None:
        """Stop the stdin pump and drop the connection."""
        self._stop.set()
        with contextlib.suppress(OSError, AttributeError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(Exception):
            self._response.close()
