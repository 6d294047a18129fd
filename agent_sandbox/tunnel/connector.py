"""The connector: runs inside the private network, dials out to the edge, never listens.

It keeps ``connections`` WebSockets open to each edge URL (TLS, token on the upgrade), speaks
HTTP/2 over each as the server, and answers every stream by forwarding it to the route's MCP
server — after checking the route, the size, the method and tool rules and the upstream's address.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import websockets
from websockets.asyncio.client import ClientConnection

from ..audit import AuditLog
from ..errors import ConfigError
from ._h2 import ChannelClosed, H2Channel, H2Stream, StreamReset
from ._wire import (
    CALLER_HEADER,
    EXCHANGE_HEADER,
    ROUTES_HEADER,
    request_headers,
    response_headers,
    session_digest,
)
from .exchange import ExchangeInfo, Refusal, describe, error_body
from .network import AddressPolicy, CheckedBackend, UpstreamRefused
from .routes import Route

__all__ = ["Connector", "backoff_delay"]

log = logging.getLogger(__name__)

MiB = 1 << 20


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): full jitter, capped exponential."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 32)))


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


class Connector:
    """Serves routes to one or more edges over outbound WebSockets.

    Args:
        edges: the edges' WebSocket URLs (``wss://edge.example/connect``); ``ws://`` only for
            a loopback edge.
        routes: the private MCP servers served, by name.
        token_file: a file holding the connector token, read again on every dial (rotate the
            token by rewriting the file).
        token: the token itself, when it does not come from a file.
        connections: WebSockets kept open to each edge (several, for availability).
        addresses: which upstream addresses may be reached (private ranges by default).
        ca_file: CA bundle to verify the edge's certificate (default: the system's).
        upstream_ca_file: CA bundle for ``https://`` upstreams (default: the system's).
        max_request_bytes: largest request body forwarded.
        max_response_bytes: largest response body forwarded (a longer one is cut off).
        max_streams: concurrent exchanges per connection.
        ping_interval: seconds between keepalive pings (WebSocket); a peer silent for
            ``ping_timeout`` more is taken as gone.
        backoff: ``(base, cap)`` seconds of the jittered exponential reconnect delay.
        drain_seconds: on :meth:`stop`, how long in-flight exchanges may take to finish.
        connect_timeout: seconds to open a connection (to the edge or an upstream).
        audit: records every exchange and every connection attempt.

    Raises:
        ConfigError: no edge, no route, both or neither of ``token`` and ``token_file``, an
            edge URL that is not ``wss://`` (or ``ws://`` to loopback), duplicate route names.
    """

    def __init__(
        self,
        edges: Sequence[str],
        routes: Sequence[Route],
        *,
        token_file: str | Path | None = None,
        token: str | None = None,
        connections: int = 2,
        addresses: AddressPolicy | None = None,
        ca_file: str | Path | None = None,
        upstream_ca_file: str | Path | None = None,
        max_request_bytes: int = 4 * MiB,
        max_response_bytes: int = 64 * MiB,
        max_streams: int = 128,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        drain_seconds: float = 30.0,
        connect_timeout: float = 10.0,
        audit: AuditLog | None = None,
    ) -> None:
        if not edges:
            raise ConfigError("the connector needs at least one edge URL")
        if not routes:
            raise ConfigError("the connector needs at least one route")
        for url in edges:
            parts = urlsplit(url)
            if parts.scheme == "ws" and _is_loopback(parts.hostname or ""):
                continue
            if parts.scheme != "wss" or not parts.hostname:
                raise ConfigError(f"edge URL {url!r} must be wss:// (ws:// only to loopback)")
        if (token is None) == (token_file is None):
            raise ConfigError("give the connector token as a file or a value (exactly one)")
        names = [r.name for r in routes]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate route names: {sorted(names)}")
        if connections < 1:
            raise ConfigError("connections must be at least 1")
        self.edges = list(edges)
        self.routes = {r.name: r for r in routes}
        self.token_file = Path(token_file) if token_file is not None else None
        self._token = token
        self.connections = connections
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.max_streams = max_streams
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff = backoff
        self.drain_seconds = drain_seconds
        self.connect_timeout = connect_timeout
        self.audit = audit or AuditLog()
        self._edge_ssl = ssl.create_default_context(
            cafile=str(ca_file) if ca_file is not None else None
        )
        upstream_ssl = ssl.create_default_context(
            cafile=str(upstream_ca_file) if upstream_ca_file is not None else None
        )
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=upstream_ssl,
            max_connections=max_streams * connections * len(self.edges),
            max_keepalive_connections=32,
            keepalive_expiry=30.0,
            network_backend=CheckedBackend(addresses or AddressPolicy()),
        )
        self._stop = anyio.Event()
        self._live: dict[H2Channel, ClientConnection] = {}
        self.connected = anyio.Event()
        """Set while at least one connection is up (for readiness checks)."""

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Begin the drain: no new exchanges, in-flight ones get ``drain_seconds`` to finish."""
        self._stop.set()

    async def run(self) -> None:
        """Keep the connections up until :meth:`stop`, then drain and close them."""
        try:
            async with anyio.create_task_group() as tg:
                for url in self.edges:
                    for index in range(self.connections):
                        tg.start_soon(self._keep_connected, url, index)
                await self._stop.wait()
                await self._drain()
                tg.cancel_scope.cancel()
        finally:
            await self._pool.aclose()

    async def _drain(self) -> None:
        live = list(self._live.items())
        for channel, _ in live:
            channel.refuse_new_streams()
        with anyio.move_on_after(self.drain_seconds):
            for channel, _ in live:
                await channel.settled()
        for channel, ws in live:
            left = channel.open_streams
            if left:
                log.warning("drain: %d exchange(s) still running after the grace period", left)
            await channel.goodbye()
            with anyio.move_on_after(2):
                await ws.close(1001, "connector shutting down")

    def _read_token(self) -> str:
        if self.token_file is None:
            assert self._token is not None
            return self._token
        try:
            return self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {self.token_file}: {exc}") from exc

    async def _keep_connected(self, url: str, index: int) -> None:
        attempt = 0
        base, cap = self.backoff
        while not self._stop.is_set():
            ws = await self._dial(url, index)
            if ws is None:
                delay = backoff_delay(attempt, base=base, cap=cap)
                attempt += 1
            else:
                attempt = 0
                await self._serve(ws, url, index)
                delay = backoff_delay(0, base=base, cap=cap)
            with anyio.move_on_after(delay):
                await self._stop.wait()

    async def _dial(self, url: str, index: int) -> ClientConnection | None:
        arguments = {"edge": url, "connection": index, "routes": sorted(self.routes)}
        with self.audit.span("tunnel.dial", arguments=arguments) as record:
            try:
                token = self._read_token()
                ws = await websockets.connect(
                    url,
                    additional_headers={
                        "Authorization": f"Bearer {token}",
                        ROUTES_HEADER: ",".join(sorted(self.routes)),
                    },
                    ssl=self._edge_ssl if url.startswith("wss:") else None,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    open_timeout=self.connect_timeout,
                    close_timeout=5,
                    max_size=4 * MiB,
                    compression=None,
                    user_agent_header="agent-sandbox-tunnel",
                )
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                detail = exc.response.body.decode("utf-8", "replace").strip()[:200]
                record.decision = "deny" if status in (401, 403) else None
                record.result = {"status": status, "detail": detail}
                log.error("edge %s refused the connection: %s %s", url, status, detail)
                return None
            except (OSError, TimeoutError, websockets.InvalidHandshake, ConfigError) as exc:
                record.result = {"error": f"{type(exc).__name__}: {exc}"}
                log.warning("cannot reach edge %s: %s", url, exc)
                return None
            record.decision = "allow"
            record.result = {"status": 101}
            log.info("connected to edge %s (connection %d)", url, index)
            return ws

    async def _serve(self, ws: ClientConnection, url: str, index: int) -> None:
        channel = H2Channel(
            ws.send,
            client_side=False,
            on_request=self._exchange,
            max_concurrent_streams=self.max_streams,
        )

        async def receive() -> bytes | None:
            try:
                message = await ws.recv()
            except websockets.ConnectionClosed:
                return None
            return message if isinstance(message, bytes) else None

        self._live[channel] = ws
        self.connected.set()
        opened = time.monotonic()
        try:
            await channel.run(receive)
        finally:
            del self._live[channel]
            if not self._live:
                self.connected = anyio.Event()
            with anyio.move_on_after(2, shield=True):
                await ws.close()
            why = _close_reason(ws)
            self.audit.record(
                "tunnel.disconnect",
                arguments={"edge": url, "connection": index},
                result={"close_code": ws.close_code, "reason": why},
                duration_ms=round((time.monotonic() - opened) * 1000, 3),
            )
            log.info("tunnel connection %d to %s closed: %s", index, url, why)

    # -- one exchange ---------------------------------------------------------------------------

    async def _exchange(self, stream: H2Stream) -> None:
        raw = stream.headers or []
        headers = dict(raw)
        method = headers.get(":method", "")
        path = headers.get(":path", "").split("?", 1)[0]
        route_name = path.removesuffix("/mcp").strip("/")
        counts = {"request_bytes": 0, "response_bytes": 0}
        arguments: dict[str, Any] = {
            "route": route_name,
            "http_method": method,
            "caller": headers.get(CALLER_HEADER),
            "session": session_digest(headers),
        }
        info = ExchangeInfo()
        refused: Refusal | None = None
        lost: ConnectionError | None = None
        try:  # everything decided before the exchange is forwarded
            route = self.routes.get(route_name)
            if route is None or not path.endswith("/mcp"):
                raise Refusal(404, "route_not_found", f"no route {route_name!r} here")
            if method not in ("GET", "POST", "DELETE"):
                raise Refusal(405, "method_not_allowed", f"HTTP {method} is not MCP")
            body = await _read_body(stream, self.max_request_bytes)
            counts["request_bytes"] = len(body)
            info = describe(headers, body)
            arguments["mcp_method"] = info.method
            route.check(info)
        except Refusal as refusal:
            refused = refusal
        except (ChannelClosed, StreamReset) as exc:
            lost = exc
        with self.audit.span(
            "tunnel.exchange",
            tool=info.tool,
            call_id=headers.get(EXCHANGE_HEADER),
            arguments=arguments,
        ) as record:
            try:
                if lost is not None:
                    raise lost
                if refused is not None:
                    record.decision = "deny"
                    raise refused
                assert route is not None
                record.decision = "allow"
                status = await self._forward(stream, route, method, raw, body, counts)
                record.result = {"status": status, **counts}
            except Refusal as refusal:
                if refusal.reason == "upstream_refused":
                    record.decision = "deny"
                record.result = {"status": refusal.status, "reason": refusal.reason, **counts}
                await _refuse(stream, refusal, info.request_id)
            except (ChannelClosed, StreamReset) as exc:
                record.result = {"status": None, "reason": "tunnel_lost", **counts}
                record.error = {"type": type(exc).__name__, "message": str(exc)}
            except anyio.get_cancelled_exc_class():
                reason = "reset_by_edge" if stream.reset_by_peer else "tunnel_lost"
                record.result = {"status": None, "reason": reason, **counts}
                raise

    async def _forward(
        self,
        stream: H2Stream,
        route: Route,
        method: str,
        raw: list[tuple[str, str]],
        body: bytes,
        counts: dict[str, int],
    ) -> int:
        parts = urlsplit(route.url)
        headers = [("host", parts.netloc), *request_headers(raw)]
        if method == "POST" or body:
            headers.append(("content-length", str(len(body))))
        extensions: dict[str, Any] = {
            "timeout": {"connect": self.connect_timeout, "pool": self.connect_timeout, "write": 60}
        }
        try:
            async with self._pool.stream(
                method, route.url, headers=headers, content=body, extensions=extensions
            ) as response:
                status = response.status
                if 300 <= status < 400:
                    raise Refusal(
                        502,
                        "upstream_redirect",
                        f"the MCP server of {route.name} redirected (not followed)",
                    )
                out = response_headers(
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers
                )
                length = next((int(v) for k, v in out if k == "content-length" and v.isdigit()), 0)
                if length > self.max_response_bytes:
                    raise Refusal(
                        502, "response_too_large", _too_large(route, self.max_response_bytes)
                    )
                await stream.send_headers([(":status", str(status)), *out])
                # A body read whole by its client (not an event stream) goes one chunk behind,
                # so the last chunk carries END_STREAM: a small response leaves as one message.
                # An event stream goes at once: its events must not wait for the next one.
                streaming = dict(out).get("content-type", "").startswith("text/event-stream")
                pending = b""
                async for chunk in response.aiter_stream():
                    counts["response_bytes"] += len(chunk)
                    if counts["response_bytes"] > self.max_response_bytes:
                        stream.reset()
                        raise _Cut("response_too_large")
                    if streaming:
                        await stream.send_data(chunk)
                        continue
                    if pending:
                        await stream.send_data(pending)
                    pending = chunk
                await stream.send_data(pending, end_stream=True)
                return status
        except UpstreamRefused as exc:
            raise Refusal(502, "upstream_refused", str(exc)) from exc
        except (httpcore.ConnectError, httpcore.ConnectTimeout, httpcore.PoolTimeout) as exc:
            raise Refusal(
                502, "upstream_unreachable", f"cannot reach the MCP server of {route.name}: {exc}"
            ) from exc
        except _Cut as cut:
            raise Refusal(502, cut.reason, _too_large(route, self.max_response_bytes)) from None
        except (httpcore.ReadError, httpcore.RemoteProtocolError, httpcore.ReadTimeout) as exc:
            raise Refusal(
                502, "upstream_failed", f"the MCP server of {route.name} failed: {exc}"
            ) from exc


def _close_reason(ws: ClientConnection) -> str:
    """Why a connection ended: the peer's close reason, else ours (a ping timeout), else the code."""
    for frame in (ws.protocol.close_rcvd, ws.protocol.close_sent):
        if frame is not None and frame.reason:
            return frame.reason
    return f"close code {ws.close_code}"


class _Cut(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _too_large(route: Route, limit: int) -> str:
    return f"the response of {route.name} exceeds the tunnel's limit ({limit} bytes)"


async def _read_body(stream: H2Stream, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read():
        size += len(chunk)
        if size > limit:
            raise Refusal(413, "request_too_large", f"the request exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _refuse(stream: H2Stream, refusal: Refusal, request_id: Any) -> None:
    """Answer with the refusal, or reset the stream when the response had already begun."""
    if stream.response_started:
        stream.reset()
        return
    body = error_body(refusal, request_id)
    await stream.send_headers(
        [
            (":status", str(refusal.status)),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
    )
    await stream.send_data(body, end_stream=True)
