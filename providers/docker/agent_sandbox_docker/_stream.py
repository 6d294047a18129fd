"""A hijacked Engine API connection (a container's or an exec's attach stream), read and written
without blocking the event loop, and split into the engine's stdout/stderr frames."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from agent_sandbox.errors import ProviderUnavailable

from ._errors import PROVIDER
from ._wire import FrameParser

if TYPE_CHECKING:
    import docker  # type: ignore[import-untyped,unused-ignore]

CHUNK = 1 << 20
_WANT = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_THREADS = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="agent-sandbox-recv")
# anyio >= 4.7 names them wait_readable/wait_writable; older 4.x wait_socket_*
_readable: Callable[[Any], Awaitable[None]] = getattr(anyio, "wait_readable", None) or (
    anyio.wait_socket_readable
)
_writable: Callable[[Any], Awaitable[None]] = getattr(anyio, "wait_writable", None) or (
    anyio.wait_socket_writable
)


class DockerStream:
    """One upgraded connection. ``recv`` is safe to cancel: nothing received is lost."""

    def __init__(self, response: Any, sock: Any, head: bytes) -> None:
        self._response = response
        self._sock = sock
        self._head = head
        self._socket = isinstance(sock, socket.socket)
        self._inflight: concurrent.futures.Future[bytes] | None = None
        self._frames = FrameParser()
        self._into = bytearray(CHUNK)  # reused: what is received is parsed before the next recv

    @classmethod
    def open(cls, api: docker.APIClient, path: str, *args: str, **post: Any) -> DockerStream:
        """POST ``path`` (``{0}`` filled with ``args``) asking for an upgrade, and take over its
        connection. Blocking: run it in a worker thread."""
        headers = {"Connection": "Upgrade", "Upgrade": "tcp"}
        poster = api._post_json if "data" in post else api._post
        res = poster(api._url(path, *args), headers=headers, stream=True, **post)
        try:
            raw = api._get_raw_response_socket(res)
        except BaseException:
            res.close()
            raise
        sock = getattr(raw, "_sock", raw)
        head = b""
        if isinstance(sock, socket.socket):
            sock.setblocking(False)
            # bytes the HTTP layer read past the response headers belong to the stream
            fp: Any = getattr(getattr(res.raw, "_fp", None), "fp", None)
            with contextlib.suppress(BlockingIOError, OSError, ValueError, AttributeError):
                head = bytes(fp.peek())
        return cls(res, sock, head)

    async def frames(self) -> list[tuple[str, bytes]] | None:
        """The engine frames completed by the next bytes received (``stdout``/``stderr``);
        ``None`` once the connection has ended."""
        while True:
            data = await self._recv()
            if not data:
                return None
            frames = self._frames.feed(data)
            if frames:
                return frames

    async def _recv(self) -> bytes | memoryview:
        if self._head:
            data, self._head = self._head, b""
            return data
        try:
            if not self._socket:  # an SSH channel: a blocking read in a thread, kept if cancelled
                if self._inflight is None:
                    self._inflight = _THREADS.submit(self._sock.recv, CHUNK)
                data = await anyio.to_thread.run_sync(self._inflight.result, abandon_on_cancel=True)
                self._inflight = None
                return bytes(data)
            while True:
                try:
                    size = self._sock.recv_into(self._into)
                except _WANT:
                    await _readable(self._sock)
                else:
                    return memoryview(self._into)[:size]
        except OSError as exc:
            raise self._broke(exc) from exc

    async def send(self, data: bytes) -> None:
        """Write all of ``data`` (the caller shields it: a frame is never half written)."""
        if not self._socket:
            await anyio.to_thread.run_sync(self._sock.sendall, data)
            return
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[self._sock.send(view[:CHUNK]) :]
                except _WANT:
                    await _writable(self._sock)
        except OSError as exc:
            raise self._broke(exc) from exc

    def shutdown_write(self) -> None:
        """End the input of the other side (its stdin reads end-of-file)."""
        with contextlib.suppress(OSError, AttributeError):
            if self._socket:
                self._sock.shutdown(socket.SHUT_WR)
            else:
                self._sock.shutdown_write()

    def close(self) -> None:
        """Drop the connection."""
        with contextlib.suppress(OSError, AttributeError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._sock.close()
        with contextlib.suppress(Exception):
            self._response.close()

    @staticmethod
    def _broke(exc: OSError) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"the connection to the Docker engine broke: {exc}", provider=PROVIDER, op="exec"
        )
