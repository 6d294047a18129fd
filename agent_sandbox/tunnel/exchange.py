"""One MCP exchange as the tunnel sees it: what is asked, and how a refusal reads.

The method and the name (the tool of a ``tools/call``) come from the ``Mcp-Method`` and
``Mcp-Name`` headers of newer MCP revisions when present, and from the JSON-RPC body otherwise.
When both are there they must agree: a server on an older revision ignores the headers, so a
rule decided on a header the body contradicts could be walked around.

A refusal is an HTTP error status whose body is a JSON-RPC error, which the MCP SDK clients
surface to the caller as the error of the request (the code, the message and ``data.reason``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ExchangeInfo", "Refusal", "describe", "error_body"]

NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""The methods whose target is mirrored in ``Mcp-Name``, and the parameter it mirrors."""

ERROR_CODE = -32000
"""The JSON-RPC code of every tunnel refusal (implementation-defined server error)."""

_B64 = re.compile(r"=\?base64\?(?P<payload>[A-Za-z0-9+/=]*)\?=")


class Refusal(Exception):
    """An exchange the tunnel will not carry: an HTTP status, a stable reason, a message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ExchangeInfo:
    """What an MCP request asks for.

    Attributes:
        method: the JSON-RPC method (of the first message of a batch), or ``None`` (a GET or
            DELETE, a response, or a body that is not JSON-RPC).
        name: the tool, prompt or resource URI named, for the methods in ``NAME_PARAMS``.
        request_id: the JSON-RPC id, to answer a refusal with.
        calls: every ``(method, name)`` in the body (one per message of a batch).
    """

    method: str | None = None
    name: str | None = None
    request_id: Any = None
    calls: tuple[tuple[str, str | None], ...] = ()

    @property
    def tool(self) -> str | None:
        """The tool of a ``tools/call``."""
        return self.name if self.method == "tools/call" else None


def _decode_header(value: str | None) -> str | None:
    if value is None:
        return None
    match = _B64.fullmatch(value)
    if match is None:
        return value
    try:
        return base64.b64decode(match.group("payload"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Refusal(400, "bad_request", "malformed base64 in Mcp-Name") from None


def describe(headers: Mapping[str, str], body: bytes) -> ExchangeInfo:
    """Read an exchange's method, name and id from its headers and JSON-RPC body.

    ``headers`` has lower-case names. A body that is not JSON describes nothing (the upstream
    answers it); a header that disagrees with the body is a :class:`Refusal` (400).
    """
    header_method = headers.get("mcp-method")
    header_name = _decode_header(headers.get("mcp-name"))
    calls: list[tuple[str, str | None]] = []
    request_id: Any = None
    if body:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        messages = parsed if isinstance(parsed, list) else [parsed]
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("method"), str):
                continue
            method = message["method"]
            params = message.get("params")
            name = None
            key = NAME_PARAMS.get(method)
            if key is not None and isinstance(params, dict):
                value = params.get(key)
                name = value if isinstance(value, str) else None
            calls.append((method, name))
            if request_id is None and "id" in message:
                request_id = message["id"]
    if not calls and header_method is not None:
        calls.append((header_method, header_name))
    method, name = calls[0] if calls else (None, None)
    if header_method is not None and header_method != method:
        raise Refusal(400, "header_mismatch", "the Mcp-Method header does not match the body")
    if header_name is not None and header_name != name:
        raise Refusal(400, "header_mismatch", "the Mcp-Name header does not match the body")
    return ExchangeInfo(method=method, name=name, request_id=request_id, calls=tuple(calls))


def error_body(refusal: Refusal, request_id: Any = None) -> bytes:
    """The JSON-RPC error answering a refused request."""
    if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
        request_id = None
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": ERROR_CODE,
            "message": refusal.message,
            "data": {"reason": refusal.reason, "status": refusal.status},
        },
    }
    return json.dumps(body).encode("utf-8")
