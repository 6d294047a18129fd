"""The edge: runs where the agents are, accepts connectors, serves their routes to MCP clients.

One ASGI application on one TLS port: connectors dial ``wss://EDGE/connect`` (their token is
checked on the upgrade, before anything else happens), MCP clients call
``https://EDGE/<route>/mcp`` (streamable HTTP, with a caller bearer token), and ``/healthz``
answers load balancers. Each caller request becomes an HTTP/2 stream on the least busy
connection serving its route; the response streams back as it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import uvicorn

from ..audit import AuditLog
from ..errors import AuthenticationError
from ._h2 import ChannelClosed, H2Channel, H2Stream, StreamReset
from ._wire import (
    CALLER_HEADER,
    CONNECT_PATH,
    EXCHANGE_HEADER,
    ROUTES_HEADER,
    request_headers,
    response_headers,
    session_digest,
)
from .exchange import ExchangeInfo, Refusal, describe, error_body
from .tokens import Caller, CallerTokens, ConnectorClaims, ConnectorKeys, valid_route_name

__all__ = ["Edge"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[Message]]
ASGISend = Callable[[Message], Awaitable[None]]

MiB = 1 << 20
_ROUTE_PATH = re.compile(r"/([^/]+)/mcp")


@dataclass(eq=False)
class _Link:
    """One connector connection and the routes it serves."""

    channel: H2Channel
    connector: str
    routes: frozenset[str]
    peer: str
    opened: float = field(default_factory=time.monotonic)


class _CallerGone(Exception):
    """The MCP client disconnected."""


class Edge:
    """Accepts connectors and serves their routes to MCP clients (an ASGI application).

    Args:
        connector_keys: verifies connector tokens (:class:`~agent_sandbox.tunnel.ConnectorKeys`).
        callers: authenticates MCP clients (:class:`~agent_sandbox.tunnel.CallerTokens`).
        max_request_bytes: largest request body accepted from a caller.
        drain_seconds: on :meth:`stop`, how long in-flight exchanges may take to finish.
        audit: records every exchange and every connector connection.
    """

    def __init__(
        self,
        *,
        connector_keys: ConnectorKeys,
        callers: CallerTokens,
        max_request_bytes: int = 4 * MiB,
        drain_seconds: float = 30.0,
        audit: AuditLog | None = None,
    ) -> None:
        self.connector_keys = connector_keys
        self.callers = callers
        self.max_request_bytes = max_request_bytes
        self.drain_seconds = drain_seconds
        self.audit = audit or AuditLog()
        self._links: list[_Link] = []
        self._known_routes: set[str] = set()
        self._inflight = 0
        self._quiet = anyio.Event()
        self._quiet.set()
        self._stop = anyio.Event()
        self._draining = False

    # -- what is connected ----------------------------------------------------------------------

    def _pick(self, route: str) -> _Link:
        serving = [link for link in self._links if route in link.routes]
        ready = [link for link in serving if link.channel.accepting]
        if ready:
            return min(ready, key=lambda link: link.channel.open_streams)
        if serving:
            raise Refusal(503, "route_busy", f"route {route!r} has no free tunnel stream")
        if route in self._known_routes:
            raise Refusal(503, "route_unavailable", f"route {route!r} has no connector right now")
        raise Refusal(404, "route_not_found", f"no route {route!r}")

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        """The ASGI entry point."""
        if scope["type"] == "websocket":
            await self._connector(scope, receive, send)
        elif scope["type"] == "http":
            if scope["path"] == "/healthz":
                await _respond(send, 200, b"ok\n", content_type="text/plain")
            else:
                await self._exchange(scope, receive, send)

    # -- connectors -----------------------------------------------------------------------------

    async def _connector(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        headers = _headers(scope)
        peer = _peer(scope)
        announced = [r.strip() for r in headers.get(ROUTES_HEADER, "").split(",") if r.strip()]
        claims: ConnectorClaims | None = None
        refused: Refusal | None = None
        try:  # decided before the record is opened, so the record names the connector
            if scope["path"] != CONNECT_PATH:
                raise Refusal(404, "not_found", "connectors dial /connect")
            if self._draining:
                raise Refusal(503, "draining", "the edge is shutting down")
            token = _bearer(headers)
            if token is None:
                raise Refusal(401, "connector_unauthenticated", "no connector token")
            try:
                claims = self.connector_keys.verify(token)
            except AuthenticationError as exc:
                raise Refusal(401, "connector_unauthenticated", str(exc)) from exc
            if not announced or not all(valid_route_name(r) for r in announced):
                raise Refusal(400, "bad_request", f"invalid {ROUTES_HEADER} header")
            extra = sorted(set(announced) - claims.routes)
            if extra:
                raise Refusal(
                    403, "route_not_granted", f"the token does not grant route(s) {extra}"
                )
        except Refusal as refusal:
            refused = refusal
        arguments = {
            "peer": peer,
            "routes": announced,
            "connector": claims.name if claims is not None else None,
        }
        with self.audit.span("tunnel.connect", arguments=arguments) as record:
            if refused is not None or claims is None:
                assert refused is not None
                record.decision = "deny"
                record.result = {"status": refused.status, "reason": refused.reason}
                log.warning("connector from %s refused: %s", peer, refused.message)
                await _reject_upgrade(scope, send, refused)
                return
            record.decision = "allow"
            record.result = {"status": 101}
        await send({"type": "websocket.accept"})
        await self._carry(claims.name, frozenset(announced), peer, receive, send)

    async def _carry(
        self,
        connector: str,
        routes: frozenset[str],
        peer: str,
        receive: ASGIReceive,
        send: ASGISend,
    ) -> None:
        async def send_bytes(data: bytes) -> None:
            await send({"type": "websocket.send", "bytes": data})

        async def receive_bytes() -> bytes | None:
            message = await receive()
            if message["type"] == "websocket.receive":
                data = message.get("bytes")
                return data if isinstance(data, bytes) else None
            return None

        channel = H2Channel(send_bytes, client_side=True)
        link = _Link(channel=channel, connector=connector, routes=routes, peer=peer)
        self._links.append(link)
        self._known_routes |= routes
        log.info("connector %s connected from %s serving %s", connector, peer, sorted(routes))
        try:
            await channel.run(receive_bytes)
        finally:
            self._links.remove(link)
            self.audit.record(
                "tunnel.disconnect",
                arguments={"peer": peer, "connector": connector, "routes": sorted(routes)},
                duration_ms=round((time.monotonic() - link.opened) * 1000, 3),
            )
            log.info("connector %s from %s disconnected", connector, peer)
            with anyio.move_on_after(1, shield=True):
                try:
                    await send({"type": "websocket.close", "code": 1001})
                except Exception:  # the socket is already gone
                    log.debug("closing a dead connector socket failed", exc_info=True)

    # -- MCP callers ----------------------------------------------------------------------------

    def _authenticate(self, headers: dict[str, str], route: str) -> Caller:
        token = _bearer(headers)
        caller = self.callers.authenticate(token) if token else None
        if caller is None:
            raise Refusal(401, "caller_unauthenticated", "a valid caller bearer token is required")
        if not caller.may_use(route):
            raise Refusal(403, "caller_forbidden", f"caller {caller.name!r} may not use {route!r}")
        return caller

    async def _exchange(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self._inflight += 1
        self._quiet = anyio.Event() if self._quiet.is_set() else self._quiet
        try:
            await self._exchange_counted(scope, receive, send)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._quiet.set()

    async def _exchange_counted(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        exchange_id = uuid.uuid4().hex
        headers = _headers(scope)
        method = scope["method"]
        match = _ROUTE_PATH.fullmatch(scope["path"])
        route = match.group(1) if match else ""
        counts = {"request_bytes": 0, "response_bytes": 0}
        arguments: dict[str, Any] = {
            "route": route or None,
            "http_method": method,
            "caller": None,
            "session": session_digest(headers),
        }
        info = ExchangeInfo()
        refused: Refusal | None = None
        gone = False
        try:  # everything decided before the exchange is forwarded
            if not valid_route_name(route):
                raise Refusal(404, "not_found", "MCP routes are served at /<route>/mcp")
            caller = self._authenticate(headers, route)
            arguments["caller"] = caller.name
            if self._draining:
                raise Refusal(503, "draining", "the edge is shutting down")
            if method not in ("GET", "POST", "DELETE"):
                raise Refusal(405, "method_not_allowed", f"HTTP {method} is not MCP")
            body = await _read_request(receive, headers, self.max_request_bytes)
            counts["request_bytes"] = len(body)
            info = describe(headers, body)
            arguments["mcp_method"] = info.method
            link = self._pick(route)
            arguments["connector"] = link.connector
        except Refusal as refusal:
            refused = refusal
        except _CallerGone:
            gone = True
        with self.audit.span(
            "tunnel.exchange", tool=info.tool, call_id=exchange_id, arguments=arguments
        ) as record:
            if gone:
                record.result = {"status": None, "reason": "caller_gone", **counts}
                return
            if refused is not None:
                record.decision = "deny" if refused.status < 500 else None
                record.result = {"status": refused.status, "reason": refused.reason, **counts}
                await _respond_refusal(send, refused, info.request_id)
                return
            record.decision = "allow"
            outbound = [
                (":method", method),
                (":scheme", "https"),
                (":authority", "agent-sandbox-tunnel"),
                (":path", f"/{route}/mcp"),
                *request_headers(headers.items()),
                (CALLER_HEADER, caller.name),
                (EXCHANGE_HEADER, exchange_id),
            ]
            started = False
            try:
                stream = link.channel.open_stream(outbound, end_stream=not body)
                try:
                    if body:
                        await stream.send_data(body, end_stream=True)
                    answer = await _watching(receive, stream, stream.response_headers())
                    status = int(dict(answer).get(":status", "502"))
                    record.result = {"status": status, **counts}
                    await send(
                        {
                            "type": "http.response.start",
                            "status": status,
                            "headers": [
                                (k.encode("latin-1"), v.encode("latin-1"))
                                for k, v in response_headers(answer)
                            ],
                        }
                    )
                    started = True
                    await _watching(receive, stream, self._relay(stream, send, counts))
                finally:
                    stream.reset()  # a no-op once the stream is complete
                record.result = {"status": status, **counts}
            except (ChannelClosed, StreamReset) as exc:
                record.result = {"status": None, "reason": "tunnel_lost", **counts}
                record.error = {"type": type(exc).__name__, "message": str(exc)}
                if started:
                    # Return with the response unfinished: the server cuts the connection and
                    # the client sees the body end early, as from a server that died.
                    return
                record.result["status"] = 502
                lost = Refusal(502, "tunnel_lost", f"the tunnel to {route!r} failed: {exc}")
                await _respond_refusal(send, lost, info.request_id)
            except _CallerGone:
                record.result = {"status": None, "reason": "caller_gone", **counts}

    async def _relay(self, stream: H2Stream, send: ASGISend, counts: dict[str, int]) -> None:
        while chunk := await stream.read():
            counts["response_bytes"] += len(chunk)
            last = stream.at_end  # known without waiting: the last chunk ends the response
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- serving --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin the drain: new callers and connectors are refused (503), in-flight exchanges
        get ``drain_seconds`` to finish, then connectors are told goodbye."""
        self._draining = True
        self._stop.set()

    async def drain(self) -> None:
        """Wait for in-flight exchanges (up to ``drain_seconds``), then close every connection."""
        self._draining = True
        with anyio.move_on_after(self.drain_seconds):
            await self._quiet.wait()
        if self._inflight:
            log.warning(
                "drain: %d exchange(s) still running after the grace period", self._inflight
            )
        for link in list(self._links):
            await link.channel.goodbye()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        tls_cert: str | Path | None,
        tls_key: str | Path | None,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT, which start the drain), then drain.

        Without ``tls_cert`` the edge serves plain HTTP: meant for loopback only (tests, or a
        TLS-terminating proxy on the same host).
        """
        config = uvicorn.Config(
            self,
            host=host,
            port=port,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            ws="websockets-sansio",
            ws_max_size=4 * MiB,
            ws_ping_interval=ping_interval,
            ws_ping_timeout=ping_timeout,
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        server = _Server(config, self.stop)
        async with anyio.create_task_group() as tg:

            async def drain_then_exit() -> None:
                await self._stop.wait()
                await self.drain()
                server.should_exit = True

            async def announce() -> None:
                while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, no event
                    await anyio.sleep(0.02)
                if on_ready is not None:
                    on_ready()

            tg.start_soon(drain_then_exit)
            tg.start_soon(announce)
            await server.serve()
            tg.cancel_scope.cancel()


class _Server(uvicorn.Server):
    """uvicorn, with the first SIGTERM/SIGINT starting the edge's drain instead of an exit."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._signalled = False
        self._loop = asyncio.get_running_loop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        self._loop.call_soon_threadsafe(self._on_signal)


# -- helpers ------------------------------------------------------------------------------------


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _read_request(receive: ASGIReceive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refusal(413, "request_too_large", f"the request exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _CallerGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refusal(413, "request_too_large", f"the request exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _watching(receive: ASGIReceive, stream: H2Stream, work: Awaitable[Any]) -> Any:
    """Await ``work`` unless the caller disconnects first (then reset the stream and raise
    :class:`_CallerGone`); an exception of ``work`` is raised as is."""
    outcome: list[Any] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not outcome:  # (the server reports a disconnect once the response is complete)
                stream.reset()
            tg.cancel_scope.cancel()

        async def run() -> None:
            try:
                outcome.append(await work)
            except Exception as exc:
                failure.append(exc)
            finally:
                tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(run)
    if outcome:
        return outcome[0]
    if failure:
        raise failure[0]
    raise _CallerGone


async def _respond(
    send: ASGISend,
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _respond_refusal(send: ASGISend, refusal: Refusal, request_id: Any) -> None:
    extra = []
    if refusal.status == 401:
        extra.append((b"www-authenticate", b'Bearer realm="agent-sandbox-tunnel"'))
    await _respond(send, refusal.status, error_body(refusal, request_id), extra=extra)


async def _reject_upgrade(scope: Scope, send: ASGISend, refusal: Refusal) -> None:
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = f"{refusal.reason}: {refusal.message}\n".encode()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})
