"""HTTP/2 framing (the ``h2`` library) over a message transport: the tunnel's multiplexer.

One :class:`H2Channel` runs one HTTP/2 connection over one WebSocket. The edge is the HTTP/2
client (it opens a stream per caller request) and the connector the HTTP/2 server, as cloudflared
carries requests over the connection it dialled. HTTP/2 brings what a tunnel needs and we do not
re-invent: many concurrent streams, per-stream and per-connection flow control, header
compression, resets and a clean goodbye.

Memory stays bounded: a stream buffers at most its flow-control window of received data, and
space is handed back to the sender only when the consumer has taken the data (:meth:`H2Stream.read`).
A sender waits for window space, and until its frames are on the transport, before sending more.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

log = logging.getLogger(__name__)

Headers = list[tuple[str, str]]
Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable["bytes | None"]]

STREAM_WINDOW = 1 << 20
"""Bytes a stream may have in flight before its reader takes them (per direction)."""
CONNECTION_WINDOW = 16 << 20
"""Bytes all streams of one connection may have in flight together."""
MAX_MESSAGE = 256 << 10
"""Largest WebSocket message the writer sends (HTTP/2 frames are split across messages freely)."""
MAX_HEADER_LIST = 64 << 10


class ChannelClosed(ConnectionError):
    """The tunnel connection under a stream is gone (dropped, closed or failed)."""


class StreamReset(ConnectionError):
    """The peer abandoned the stream (RST_STREAM)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class H2Stream:
    """One request/response exchange on an :class:`H2Channel`.

    ``headers`` are the peer's headers: the request's on the server side, the response's on the
    client side (await :meth:`response_headers`).
    """

    def __init__(self, channel: H2Channel, stream_id: int) -> None:
        self.channel = channel
        self.id = stream_id
        self.headers: Headers | None = None
        self._headers_ready = anyio.Event()
        self._chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self._readable = anyio.Event()
        self._writable = anyio.Event()
        self._remote_ended = False
        self._local_ended = False
        self._error: BaseException | None = None
        self.response_started = False
        """Server side: the response's headers were sent."""
        self.reset_by_peer = False
        """The peer abandoned the stream (its caller went away, say)."""
        self._scope: anyio.CancelScope | None = None

    @property
    def done(self) -> bool:
        """Both directions ended, or the stream failed."""
        return self._error is not None or (self._remote_ended and self._local_ended)

    @property
    def at_end(self) -> bool:
        """The peer's body is over and every chunk of it was read."""
        return self._remote_ended and not self._chunks

    # -- events from the channel ----------------------------------------------------------------

    def _on_headers(self, headers: Headers) -> None:
        self.headers = headers
        self._headers_ready.set()

    def _on_data(self, data: bytes, flow_controlled: int) -> None:
        self._chunks.append((data, flow_controlled))
        self._readable.set()

    def _on_end(self) -> None:
        self._remote_ended = True
        self._headers_ready.set()
        self._readable.set()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._headers_ready.set()
        self._readable.set()
        self._writable.set()

    def _wake_writer(self) -> None:
        self._writable.set()

    def _unacknowledged(self) -> int:
        size = sum(n for _, n in self._chunks)
        self._chunks.clear()
        return size

    # -- the caller's side ----------------------------------------------------------------------

    def _raise_error(self) -> None:
        if self._error is not None:
            raise _fresh(self._error)

    async def response_headers(self) -> Headers:
        """The response's headers (client side); raises when the stream or channel failed."""
        await self._headers_ready.wait()
        if self.headers is None:
            self._raise_error()
            raise StreamReset("the stream ended without a response", ErrorCodes.PROTOCOL_ERROR)
        return self.headers

    async def read(self) -> bytes:
        """The next chunk of the peer's body, ``b""`` at its end.

        Taking a chunk hands its flow-control space back to the peer.

        Raises:
            ChannelClosed: the connection dropped before the body ended.
            StreamReset: the peer reset the stream.
        """
        while not self._chunks:
            if self._remote_ended:
                return b""
            self._raise_error()
            self._readable = anyio.Event()
            await self._readable.wait()
        data, flow_controlled = self._chunks.popleft()
        self.channel._acknowledge(self.id, flow_controlled)
        return data

    async def send_headers(self, headers: Headers, *, end_stream: bool = False) -> None:
        """Send the headers (the server's response, or trailers); see :meth:`send_data`."""
        self._raise_error()
        self.channel._call(self, self.channel.conn.send_headers, self.id, headers, end_stream)
        self.response_started = True
        if end_stream:
            self._local_ended = True
        self.channel._kick()  # headers are small: they leave with the next batch, unawaited
        self.channel._forget_if_done(self)

    async def send_data(self, data: bytes | memoryview, *, end_stream: bool = False) -> None:
        """Send body bytes, waiting for flow-control window and for the transport to take them.

        With ``end_stream`` the last frame ends the stream (no extra frame, no extra message).
        """
        view = memoryview(data)
        conn = self.channel.conn
        while view:
            self._raise_error()
            window = conn.local_flow_control_window(self.id)
            if window <= 0:
                self._writable = anyio.Event()
                await self._writable.wait()
                continue
            batch = min(window, len(view), MAX_MESSAGE)
            sent = 0
            while sent < batch:
                step = min(batch - sent, conn.max_outbound_frame_size)
                last = end_stream and sent + step == len(view)
                self.channel._call(self, conn.send_data, self.id, view[sent : sent + step], last)
                sent += step
            if end_stream and batch == len(view):
                self._local_ended = True
            view = view[batch:]
            await self.channel._flush()
        if end_stream:
            await self.end()  # ends an empty body; a no-op after the last frame ended it

    async def end(self) -> None:
        """End our side of the stream."""
        self._raise_error()
        if not self._local_ended:
            self.channel._call(self, self.channel.conn.end_stream, self.id)
            self._local_ended = True
            self.channel._kick()
        self.channel._forget_if_done(self)

    def reset(self, code: int = ErrorCodes.CANCEL) -> None:
        """Abandon the stream (RST_STREAM unless it is complete); unread data is discarded."""
        if not self.done:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.channel.conn.reset_stream(self.id, code)
            self._fail(StreamReset("stream reset locally", code))
        self.channel._acknowledge(self.id, self._unacknowledged())
        self.channel._forget(self)


class H2Channel:
    """An HTTP/2 connection over a transport that carries bytes in messages.

    Args:
        send: awaits until a message is handed to the transport (its backpressure is ours).
        client_side: the edge is the client, the connector the server.
        on_request: server side: called with each new :class:`H2Stream` (request headers in
            ``stream.headers``), in a task of the channel's own; it must finish the stream.
        max_concurrent_streams: server side: streams the peer may open at once.
    """

    def __init__(
        self,
        send: Send,
        *,
        client_side: bool,
        on_request: Callable[[H2Stream], Awaitable[None]] | None = None,
        max_concurrent_streams: int = 128,
    ) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
                **({h2.settings.SettingCodes.ENABLE_PUSH: 0} if client_side else {}),
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._send = send
        self._on_request = on_request
        self._streams: dict[int, H2Stream] = {}
        self._pending = anyio.Event()
        self._taken = 0
        self._sent = 0
        self._sent_event = anyio.Event()
        self._error: BaseException | None = None
        self._goaway_received = False
        self._settings_acked = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.idle = anyio.Event()
        self.idle.set()

    # -- state ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The connection failed, was closed, or the peer said goodbye."""
        return self._error is not None or self._goaway_received

    @property
    def open_streams(self) -> int:
        """Streams in flight."""
        return len(self._streams)

    @property
    def accepting(self) -> bool:
        """Client side: a new stream may be opened now (the peer is not draining nor full)."""
        if self.closed:
            return False
        limit = self.conn.remote_settings.max_concurrent_streams
        return self.conn.open_outbound_streams < limit

    # -- running --------------------------------------------------------------------------------

    async def run(self, receive: Receive) -> None:
        """Pump the connection until the transport ends; then every open stream fails.

        ``receive`` returns the next message, or ``None`` when the transport closed.
        """
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                self._kick()
                try:
                    while self._error is None:
                        data = await receive()
                        if data is None:
                            break
                        self._feed(data)
                finally:
                    self._close(ChannelClosed("the tunnel connection closed"))
                    tg.cancel_scope.cancel()
        finally:
            self._tg = None

    def _feed(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("tunnel peer broke the HTTP/2 protocol: %s", exc)
            self._kick()  # the GOAWAY h2 queued
            self._close(ChannelClosed(f"HTTP/2 protocol error: {exc}"))
            return
        for event in events:
            self._dispatch(event)
        self._kick()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            assert event.headers is not None
            stream = H2Stream(self, event.stream_id)
            stream._on_headers(_text_headers(event.headers))
            self._track(stream)
            if event.stream_ended:
                stream._on_end()
            if self._on_request is None or self._tg is None:
                stream.reset(ErrorCodes.REFUSED_STREAM)
            else:
                self._tg.start_soon(self._serve, stream)
        elif isinstance(event, h2.events.ResponseReceived):
            stream_or_none = self._streams.get(event.stream_id or 0)
            if stream_or_none is not None and event.headers is not None:
                stream_or_none._on_headers(_text_headers(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            size = event.flow_controlled_length or 0
            stream_or_none = self._streams.get(event.stream_id)
            if stream_or_none is None or stream_or_none._error is not None:
                self._acknowledge(event.stream_id, size)  # nobody will read it
            else:
                stream_or_none._on_data(event.data or b"", size)
        elif isinstance(event, h2.events.StreamEnded):
            stream_or_none = self._streams.get(event.stream_id or 0)
            if stream_or_none is not None:
                stream_or_none._on_end()
                self._forget_if_done(stream_or_none)
        elif isinstance(event, h2.events.StreamReset):
            stream_or_none = self._streams.get(event.stream_id or 0)
            if stream_or_none is not None:
                code = int(event.error_code or 0)
                stream_or_none._fail(StreamReset(f"the peer reset the stream ({code})", code))
                stream_or_none.reset_by_peer = True
                if stream_or_none._scope is not None:  # stop its handler, even mid-wait
                    stream_or_none._scope.cancel()
                self._forget(stream_or_none)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream_or_none = self._streams.get(event.stream_id)
                if stream_or_none is not None:
                    stream_or_none._wake_writer()
            else:
                for stream in self._streams.values():
                    stream._wake_writer()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for stream in self._streams.values():
                stream._wake_writer()
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self._settings_acked.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway_received = True
            last = event.last_stream_id or 0
            for stream in list(self._streams.values()):
                if stream.id > last:
                    stream._fail(ChannelClosed("the peer closed the tunnel connection"))
                    self._forget(stream)

    async def _serve(self, stream: H2Stream) -> None:
        assert self._on_request is not None
        stream._scope = anyio.CancelScope()
        try:
            with stream._scope:
                await self._on_request(stream)
        except (ChannelClosed, StreamReset):
            pass
        except Exception:
            log.exception("tunnel stream %d failed", stream.id)
        finally:
            stream.reset(ErrorCodes.INTERNAL_ERROR)  # a no-op when the handler finished it

    async def _writer(self) -> None:
        try:
            while True:
                data = self.conn.data_to_send()
                if not data:
                    if self._error is not None:
                        return
                    self._pending = anyio.Event()
                    await self._pending.wait()
                    continue
                self._taken += 1
                view = memoryview(data)
                for start in range(0, len(view), MAX_MESSAGE):
                    await self._send(bytes(view[start : start + MAX_MESSAGE]))
                self._sent = self._taken
                self._sent_event.set()
                self._sent_event = anyio.Event()
        except Exception as exc:  # the transport failed under us
            self._close(ChannelClosed(f"the tunnel connection failed: {exc}"))
            self._sent_event.set()

    def _kick(self) -> None:
        self._pending.set()

    async def _flush(self) -> None:
        """Wait until what h2 has queued so far is handed to the transport."""
        target = self._taken + 1
        self._kick()
        while self._sent < target:
            if self._error is not None:
                raise _fresh(self._error)
            await self._sent_event.wait()

    def _call(self, stream: H2Stream, method: Callable[..., Any], *args: Any) -> None:
        try:
            method(*args)
        except h2.exceptions.StreamClosedError as exc:
            error = StreamReset("the stream is closed", ErrorCodes.STREAM_CLOSED)
            stream._fail(error)
            self._forget(stream)
            raise error from exc
        except h2.exceptions.ProtocolError as exc:
            if self._error is not None:
                raise _fresh(self._error) from exc
            raise StreamReset(
                f"HTTP/2 refused the frame: {exc}", ErrorCodes.PROTOCOL_ERROR
            ) from exc

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if size and self._error is None:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.conn.acknowledge_received_data(size, stream_id)
            self._kick()

    def _track(self, stream: H2Stream) -> None:
        self._streams[stream.id] = stream
        self.idle = anyio.Event() if self.idle.is_set() else self.idle

    def _forget(self, stream: H2Stream) -> None:
        """Stop tracking a stream: complete (its reader may still take what it holds) or failed
        (what it holds is discarded and its space handed back)."""
        self._streams.pop(stream.id, None)
        if stream._error is not None:
            self._acknowledge(stream.id, stream._unacknowledged())
        if not self._streams:
            self.idle.set()

    def _forget_if_done(self, stream: H2Stream) -> None:
        if stream.done:
            self._forget(stream)

    def _close(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        for stream in list(self._streams.values()):
            stream._fail(error)
        self._streams.clear()
        self.idle.set()
        self._settings_acked.set()
        self._kick()
        self._sent_event.set()

    # -- the client's side ----------------------------------------------------------------------

    def open_stream(self, headers: Headers, *, end_stream: bool = False) -> H2Stream:
        """Client side: open a stream with the request's headers.

        Raises:
            ChannelClosed: the connection is gone or the peer stopped accepting streams.
        """
        if self._error is not None:
            raise ChannelClosed(str(self._error))
        if not self.accepting:
            raise ChannelClosed("the tunnel connection accepts no new streams")
        stream_id = self.conn.get_next_available_stream_id()
        stream = H2Stream(self, stream_id)
        try:
            self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.H2Error as exc:
            raise ChannelClosed(f"cannot open a stream: {exc}") from exc
        stream._local_ended = end_stream
        self._track(stream)
        self._kick()
        return stream

    # -- ending ---------------------------------------------------------------------------------

    def refuse_new_streams(self) -> None:
        """Server side: tell the peer to open no more streams here (in-flight ones go on)."""
        if self._error is None:
            self._settings_acked = anyio.Event()
            self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
            self._kick()

    async def settled(self) -> None:
        """After :meth:`refuse_new_streams`: wait until the peer has taken note (no stream can
        start any more) and every open stream is over, or the connection is gone."""
        while self._error is None and not self._settings_acked.is_set():
            with anyio.move_on_after(0.5):
                await self._settings_acked.wait()
        await self.idle.wait()

    async def goodbye(self) -> None:
        """Send GOAWAY and wait for it to leave; streams still open fail."""
        if self._error is not None:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self.conn.close_connection()
        with contextlib.suppress(ConnectionError):
            await self._flush()
        self._close(ChannelClosed("the tunnel connection was closed"))


def _text_headers(headers: Any) -> Headers:
    return [
        (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
        for k, v in headers
    ]


def _fresh(error: BaseException) -> BaseException:
    """A new exception like ``error``: one failure is raised in many tasks, each its own."""
    if isinstance(error, StreamReset):
        return StreamReset(str(error), error.code)
    return ChannelClosed(str(error))
