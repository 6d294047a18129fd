"""The Worker's HTTP API as the provider uses it: requests, error answers, server-sent events.

Two sets of routes answer on the Worker: Cloudflare's sandbox bridge under ``/v1`` and the routes
agent-sandbox adds under ``/asb/v1`` (``worker/src/openapi.json``). Both answer errors as JSON
``{"error": message, "code": code}``; :func:`table` turns them into our typed errors.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from agent_sandbox.errors import (
    AuthenticationError,
    ConfigError,
    FileNotFound,
    OperationTimeout,
    ProcessNotFound,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
    StdinClosed,
)

PROVIDER = "cloudflare"
FOLLOW_SECONDS = 300
"""The longest the Worker follows a process in one response (then it says ``more``)."""
MAX_SSE_LINE = 1 << 20
"""Longest event line (and event data) accepted from the Worker (its chunks are 256 KiB, 350 KB
in base64)."""


class BridgeError(Exception):
    """An error answer of the Worker: its HTTP status, its ``code`` and its message."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


def table(exc: Exception, lower: str) -> SandboxError | None:
    """Our error for a :class:`BridgeError` code or an ``httpx`` failure; ``None`` leaves it to
    the shared rows (HTTP status, then ``ProviderError``)."""
    if isinstance(exc, httpx.TimeoutException):
        return OperationTimeout(f"the Worker did not answer in time: {exc}")
    if isinstance(exc, httpx.TransportError):
        return ProviderUnavailable(f"cannot reach the Worker: {exc}")
    if not isinstance(exc, BridgeError):
        return None
    message = str(exc)
    code = exc.code
    if code == "unauthorized":
        return AuthenticationError("the Worker rejected the API key (SANDBOX_API_KEY): " + message)
    if code == "sandbox_not_found":
        return SandboxNotFound(message)
    if code == "process_not_found":
        return ProcessNotFound(message)
    if code == "cwd_not_found":
        return FileNotFound(message)
    if code == "conflict":
        if "stdin" in lower or "has ended" in lower:
            return StdinClosed(message)
        return SandboxConflict(message)
    if code == "capacity_exceeded":
        return QuotaExceeded(
            "every container of the Worker is in use (raise max_instances in its "
            f"wrangler.jsonc, or destroy sandboxes): {message}",
            retryable=True,
        )
    if code in ("pool_error", "exec_transport_error", "session_error"):
        return ProviderUnavailable(f"the Worker could not reach the sandbox: {message}")
    if code in ("invalid_request",):
        return ConfigError(f"the Worker refused the request: {message}")
    if code in ("exec_error", "tunnel_error") or code.startswith("workspace_"):
        return ProviderError(message)
    return None


async def raise_for(response: httpx.Response) -> None:
    """Raise :class:`BridgeError` for an error answer (reading its body first)."""
    if response.is_success:
        return
    body = await response.aread()
    try:
        data = json.loads(body)
        code, message = str(data["code"]), str(data["error"])
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()[:300]
        if response.status_code == 404 and response.request.url.path.startswith("/asb/"):
            # The plain bridge (or something else) answers there, not agent-sandbox's Worker.
            raise ConfigError(
                f"{response.request.url.host} does not serve agent-sandbox's routes; deploy the "
                "Worker from providers/cloudflare/worker (see docs/providers/cloudflare.md)"
            ) from None
        code, message = "", text or f"HTTP {response.status_code}"
    raise BridgeError(response.status_code, code, message)


@dataclass(frozen=True)
class Event:
    """One server-sent event."""

    name: str
    data: str

    def json(self) -> dict[str, Any]:
        """The data as a JSON object (a ``ProviderError`` when it is not one)."""
        try:
            value = json.loads(self.data)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ProviderError(
                f"malformed {self.name!r} event from the Worker: {self.data[:200]!r}"
            )
        return value

    def chunk(self) -> bytes:
        """The data as base64-decoded bytes (a ``ProviderError`` when it is not base64)."""
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(
                f"malformed {self.name!r} chunk from the Worker: {self.data[:80]!r}"
            ) from None


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of a response, each refused (``ProviderError``) once it passes
    :data:`MAX_SSE_LINE` bytes: never buffered whole."""
    pending = bytearray()
    async for chunk in response.aiter_bytes():
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            if end - start > MAX_SSE_LINE:
                break
            yield pending[start:end].rstrip(b"\r").decode("utf-8", "replace")
            start = end + 1
        del pending[:start]
        if len(pending) > MAX_SSE_LINE:
            raise ProviderError("an event line from the Worker is too long")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", "replace")


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """The events of an SSE response (``event:`` and ``data:`` lines, a blank line ends one).

    Their lines carry what a sandbox's processes print (and a process can write into its
    runner's output), so an event holds at most :data:`MAX_SSE_LINE` bytes of data."""
    name, data, size = "message", list[str](), 0
    async for line in _lines(response):
        if not line:
            if data:
                yield Event(name, "\n".join(data))
            name, data, size = "message", list[str](), 0
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            size += len(data[-1])
            if size > MAX_SSE_LINE:
                raise ProviderError("an event from the Worker is too long")
    if data:
        yield Event(name, "\n".join(data))


STDIN_CHUNK = 16 << 20
"""Largest stdin body sent in one request (a Worker accepts 100 MB)."""
SESSION = "asb"
"""The bridge session every sandbox's commands run in: it holds the sandbox's environment."""


class Api:
    """The Worker at ``url``, with the API key; one connection pool for every call."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            follow_redirects=False,
        )
        self._stream_timeout = httpx.Timeout(timeout, read=FOLLOW_SECONDS + 60)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, its body read; raises :class:`BridgeError` for an error answer."""
        response = await self.client.request(method, path, **kwargs)
        await raise_for(response)
        return response

    async def stream(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request whose (successful) answer is an event stream, left open for reading."""
        request = self.client.build_request(method, path, timeout=self._stream_timeout, **kwargs)
        response = await self.client.send(request, stream=True)
        try:
            await raise_for(response)
        except BaseException:
            await response.aclose()
            raise
        return response

    # -- the registry (agent-sandbox's routes) ---------------------------------------------

    async def create_sandbox(
        self, labels: dict[str, str], ttl: float, create_key: str, idle: float | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"labels": labels, "ttl_seconds": ttl, "create_key": create_key}
        if idle is not None:
            body["idle_timeout_seconds"] = idle
        return dict((await self.call("POST", "/asb/v1/sandboxes", json=body)).json())

    async def get_sandbox(self, sandbox_id: str) -> dict[str, Any]:
        return dict((await self.call("GET", f"/asb/v1/sandboxes/{sandbox_id}")).json())

    async def list_sandboxes(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        params = {"labels": json.dumps(labels)} if labels else {}
        answer = (await self.call("GET", "/asb/v1/sandboxes", params=params)).json()
        return list(answer["sandboxes"])

    # -- processes (agent-sandbox's routes) ------------------------------------------------

    async def start(self, sandbox_id: str, body: dict[str, Any], session: bool) -> httpx.Response:
        headers = {"Session-Id": SESSION} if session else {}
        path = f"/asb/v1/sandboxes/{sandbox_id}/processes"
        return await self.stream("POST", path, json=body, headers=headers)

    async def follow(self, sandbox_id: str, ref: str, stdout: int, stderr: int) -> httpx.Response:
        path = f"/asb/v1/sandboxes/{sandbox_id}/processes/{ref}"
        return await self.stream("GET", path, params={"stdout": stdout, "stderr": stderr})

    async def kill(self, sandbox_id: str, ref: str) -> None:
        await self.call("POST", f"/asb/v1/sandboxes/{sandbox_id}/processes/{ref}/kill")

    async def stdin(self, sandbox_id: str, ref: str, data: bytes, close: bool) -> None:
        """Append ``data`` to the process's stdin (in parts of :data:`STDIN_CHUNK`), then close
        it if asked."""
        path = f"/asb/v1/sandboxes/{sandbox_id}/processes/{ref}/stdin"
        parts = [data[i : i + STDIN_CHUNK] for i in range(0, len(data), STDIN_CHUNK)] or [b""]
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            params = {"close": "true"} if close and last else {}
            headers = {"Content-Type": "application/octet-stream"}
            await self.call("PUT", path, content=part, params=params, headers=headers)

    async def processes(self, sandbox_id: str) -> list[dict[str, Any]]:
        answer = (await self.call("GET", f"/asb/v1/sandboxes/{sandbox_id}/processes")).json()
        return list(answer["processes"])

    # -- the bridge's own routes -----------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        await self.call("DELETE", f"/v1/sandbox/{sandbox_id}")

    async def create_session(self, sandbox_id: str, cwd: str, env: dict[str, str]) -> None:
        body: dict[str, Any] = {"id": SESSION, "cwd": cwd}
        if env:
            body["env"] = env
        await self.call("POST", f"/v1/sandbox/{sandbox_id}/session", json=body)

    async def tunnel(self, sandbox_id: str, port: int) -> str:
        answer = (await self.call("POST", f"/v1/sandbox/{sandbox_id}/tunnel/{port}")).json()
        return str(answer["url"])

    async def persist(self, sandbox_id: str, max_bytes: int) -> bytes:
        """The tar of the sandbox's /workspace; ``QuotaExceeded`` past ``max_bytes``."""
        path = f"/v1/sandbox/{sandbox_id}/persist"
        response = await self.stream("POST", path)
        chunks, size = [], 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise QuotaExceeded(
                        f"the workspace archive is larger than {max_bytes} bytes, the most the "
                        "bridge restores (hydrate)"
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        return b"".join(chunks)

    async def hydrate(self, sandbox_id: str, archive: bytes) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        path = f"/v1/sandbox/{sandbox_id}/hydrate"
        await self.call("POST", path, content=archive, headers=headers)
