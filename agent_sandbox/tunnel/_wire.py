"""What crosses the tunnel besides the MCP exchange itself: header names and header filters."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

CONNECT_PATH = "/connect"
"""The edge's WebSocket endpoint connectors dial."""
ROUTES_HEADER = "x-agent-sandbox-routes"
"""Upgrade request header: the routes (comma-separated) this connection serves."""
CALLER_HEADER = "x-agent-sandbox-caller"
"""Tunnel request header: the name of the caller the edge authenticated."""
EXCHANGE_HEADER = "x-agent-sandbox-exchange"
"""Tunnel request header: the exchange id, the same in both sides' audit records."""

_REQUEST_HEADERS = frozenset(
    {"accept", "content-type", "last-event-id", "traceparent", "tracestate", "user-agent"}
)
_RESPONSE_HEADERS = frozenset({"content-type", "content-length", "cache-control", "retry-after"})


def request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The caller's headers that travel on to the MCP server: content negotiation, the
    ``Mcp-*`` headers (session, protocol version, method, name, params) and trace context.
    Credentials (``Authorization``, cookies) never do."""
    return [
        (k, v)
        for k, v in headers
        if not k.startswith(":") and (k in _REQUEST_HEADERS or k.startswith("mcp-"))
    ]


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The MCP server's headers that travel back: content type and length, caching, and the
    ``Mcp-*`` headers (session id, protocol version). Cookies and redirects never do."""
    return [
        (k, v)
        for k, v in headers
        if not k.startswith(":") and (k in _RESPONSE_HEADERS or k.startswith("mcp-"))
    ]


def session_digest(headers: dict[str, str]) -> str | None:
    """A short digest of the ``Mcp-Session-Id`` for audit records (the id itself is a secret)."""
    session = headers.get("mcp-session-id")
    if not session:
        return None
    return hashlib.sha256(session.encode("utf-8")).hexdigest()[:16]
