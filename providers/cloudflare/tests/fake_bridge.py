"""A local fake of agent-sandbox's Cloudflare Worker, served on 127.0.0.1 for offline tests.

The Worker (``providers/cloudflare/worker``) is Cloudflare's sandbox bridge plus agent-sandbox's
routes. This fake models both, each after its own source:

- the bridge's routes the provider uses -- ``POST /v1/sandbox``,
  ``POST /v1/sandbox/{id}/session``, ``POST``/``DELETE /v1/sandbox/{id}/tunnel/{port}``,
  ``POST /v1/sandbox/{id}/persist`` and ``/hydrate`` -- its ``exec`` and ``DELETE`` routes, after
  ``src/bridge/routes.ts`` and ``helpers.ts`` of ``@cloudflare/sandbox`` 0.12.10 (in the npm
  package's ``dist/bridge/index.js.map``): its id format check, auth, warm-pool assignment
  (``capacity_exceeded`` 503 past ``max_instances``; Hono's trailing wildcard runs it for a bare
  ``DELETE`` too), session, tunnel and archive behaviour and error bodies ``{"error", "code"}``. Every request and response is checked against the bridge's
  own OpenAPI document (``bridge-openapi-0.12.10.json``, extracted from the package by
  ``worker/scripts/bridge-openapi.mjs``): a request the document forbids is answered 400
  ``invalid_request``, a response it does not declare is recorded in :attr:`FakeWorker.violations`
  (the tests fail on any);
- agent-sandbox's routes (``/asb/v1``), the registry in front of the bridge and the Worker's own
  ``DELETE /v1/sandbox/{id}`` (no container started to destroy one), after
  ``worker/src/routes.ts``, ``registry.ts`` and ``index.ts``, checked against
  ``worker/src/openapi.json`` the same way; processes run ``worker/src/runner.sh`` itself;
- the container side of the SDK, after ``packages/sandbox-container/src/session.ts`` of
  cloudflare/sandbox-sdk: a command runs under bash with stdin ``/dev/null`` in its session's
  environment and working directory, and its output reaches the Worker line by line, decoded as
  UTF-8 (bytes that are not are replaced, NUL bytes dropped, every line -- the last one too --
  ending in a newline), so only what survives that pipe survives here.

Containers are real (:mod:`fake_container`): a root directory and a uid per sandbox, commands as
confined processes. A container can be stopped (:meth:`FakeWorker.stop_container`, what sleeping
after its idle timeout does): the pool then gives the sandbox a fresh one, as the bridge's warm
pool does. Known gaps: the bridge's file, pty, mount and pool routes are not served; tunnels
answer ``http://127.0.0.1:<port>`` (the fake's containers share this machine's network) where
Cloudflare gives a ``trycloudflare.com`` address; no 100 ms polling delay of the SDK's stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import uvicorn
from fake_container import BASE_ENV, WORKSPACE, Container
from openapi_check import OpenApi, Operation, SchemaViolation
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

HERE = Path(__file__).resolve().parent
WORKER_SRC = HERE.parent / "worker" / "src"
BRIDGE_VERSION = "0.12.10"
BRIDGE_DOC = OpenApi(HERE / f"bridge-openapi-{BRIDGE_VERSION}.json")
WORKER_DOC = OpenApi(WORKER_SRC / "openapi.json")
RUNNER = (WORKER_SRC / "runner.sh").read_text()

SANDBOX_ID = re.compile(r"^[a-z2-7]{1,128}$")
SESSION_ID = re.compile(r"^[a-zA-Z0-9._-]{1,128}$")
REF = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BASE64_LINE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
SANDBOX_PATH = re.compile(r"^/v1/sandbox/([^/]+)(/.*)?$")
FOLLOW_SECONDS = 300
MAX_HYDRATE_BYTES = 32 * 1024 * 1024
_SAFE = re.compile(r"^[A-Za-z0-9@%+=:,./-]+$")
_LINE_LIMIT = 4 << 20


def shell_quote(arg: str) -> str:
    """The bridge's ``shellQuote`` (helpers.ts): safe tokens as they are, others in ``$'...'``."""
    if _SAFE.match(arg):
        return arg
    escaped = (
        arg.replace("\\", "\\\\")
        .replace("'", "\\'")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f"$'{escaped}'"


def runner_command(command: str, sandbox_id: str, args: list[str | int]) -> str:
    """runner.ts ``runnerCommand``."""
    argv = ["sh", "-c", RUNNER, "asb", command, sandbox_id, *map(str, args)]
    return " ".join(shell_quote(a) for a in argv)


def base32_id() -> str:
    """routes.ts POST /sandbox: 16 random bytes, RFC 4648 base32, lowercase, no padding."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def error(message: str, code: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Record:
    """registry.ts: one row of the sandboxes table."""

    id: str
    labels: dict[str, str]
    created_at: int
    expires_at: int
    idle_timeout: float | None
    create_key: str | None

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "labels": self.labels,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "idle_timeout_seconds": self.idle_timeout,
        }

    def expired(self) -> bool:
        return self.expires_at <= time.time() * 1000


@dataclass
class Session:
    """A bridge session: the environment and working directory its commands start with."""

    env: dict[str, str]
    cwd: str


@dataclass
class Box:
    """A sandbox id's container, as the warm pool assigned it."""

    container: Container
    running: bool = True
    sessions: dict[str, Session] = field(default_factory=dict)
    tunnels: dict[int, dict[str, Any]] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


@dataclass
class Fault:
    method: str
    path: str
    status: int
    code: str
    message: str
    count: int
    after_effect: bool


class ContainerStopped(Exception):
    """The SDK's stream failed: the container went away during a command."""


class PoolError(Exception):
    """What the warm pool raises (routes.ts maps it to 503 or 502)."""


class FakeWorker:
    """The fake Worker. ``with FakeWorker() as fake: fake.url``."""

    def __init__(self, api_key: str = "fake-sandbox-api-key", max_instances: int = 64) -> None:
        self.api_key = api_key
        self.max_instances = max_instances
        self.records: dict[str, Record] = {}
        self.boxes: dict[str, Box] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        """``(method, path)`` of every request, for tests that count calls."""
        self.violations: list[str] = []
        """Responses the documents do not declare (the fake's own bugs or the model's)."""
        self.default_ttl_seconds = 3600.0
        self.plain_bridge = False
        """Serve only the bridge (the vendor's own Worker template), not agent-sandbox's routes."""
        self._state = Path(tempfile.mkdtemp(prefix="fake-cf-worker-"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- serving --------------------------------------------------------------------------------

    def start(self) -> FakeWorker:
        """Serve on a free loopback port from a thread of its own."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "DELETE"])]
        )
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            assert self._server is not None
            loop.run_until_complete(self._server.serve(sockets=[sock]))
            for box in list(self.boxes.values()):
                box.container.remove()
            pending = [t for box in self.boxes.values() for t in box.tasks]
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-cf-worker", daemon=True)
        self._thread.start()
        ready.wait(10)
        for _ in range(500):
            if self._server.started:
                break
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving, kill every container's processes, remove all state."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        for box in self.boxes.values():
            box.container.remove()
        shutil.rmtree(self._state, ignore_errors=True)

    def __enter__(self) -> FakeWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the fake's loop (tests poking at its state)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)  # type: ignore[arg-type]

    # -- test hooks -----------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        code: str,
        message: str = "injected",
        *,
        count: int = 1,
        after_effect: bool = False,
    ) -> None:
        """Answer the next ``count`` requests whose path starts with ``path`` with this error
        (with ``after_effect``, once the request has done what it does: a lost answer)."""
        self.faults.append(Fault(method.upper(), path, status, code, message, count, after_effect))

    def stop_container(self, sandbox_id: str) -> None:
        """Stop a sandbox's container, as sleeping after its idle timeout does."""

        async def stop() -> None:
            box = self.boxes.get(sandbox_id)
            if box is not None:
                box.running = False
                box.container.kill_all()

        self.run(stop())

    def cron(self) -> list[str]:
        """The Worker's scheduled handler (index.ts ``sweep``): destroy expired sandboxes."""

        async def sweep() -> list[str]:
            expired = [r.id for r in self.records.values() if r.expired()]
            for sandbox_id in expired:
                await self._destroy(sandbox_id)
            return expired

        result: list[str] = self.run(sweep())
        return result

    # -- the request pipeline -------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        method, path = request.method, request.url.path
        self.requests.append((method, path))
        body = await request.body()
        fault = next(
            (
                f
                for f in self.faults
                if f.method == method and path.startswith(f.path) and f.count > 0
            ),
            None,
        )
        if fault is not None:
            fault.count -= 1
            if not fault.after_effect:
                return error(fault.message, fault.code, fault.status)
        ours = path.startswith("/asb/")
        if ours and self.plain_bridge:
            return Response("Not Found", status_code=404)  # index.ts of the bridge's template
        doc = WORKER_DOC if ours else BRIDGE_DOC
        op = doc.operation(method, path)
        response = await self._route(request, body, op, ours)
        if fault is not None:
            if isinstance(response, StreamingResponse):
                await response.body_iterator.aclose()  # type: ignore[attr-defined]
            return error(fault.message, fault.code, fault.status)
        if op is not None and not getattr(response, "from_gate", False):
            self._check_response(doc, op, response)
        return response

    def _check_response(self, doc: OpenApi, op: Operation, response: Response) -> None:
        ctype = response.headers.get("content-type", "")
        payload = b"" if isinstance(response, StreamingResponse) else bytes(response.body)
        try:
            doc.check_response(op, response.status_code, ctype, payload)
        except SchemaViolation as exc:
            self.violations.append(f"{doc.name} {op.method.upper()} {op.template}: {exc}")

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        provided = header[7:] if header.lower().startswith("bearer ") else ""
        return secrets.compare_digest(provided, self.api_key)

    def _check_request(
        self, doc: OpenApi, op: Operation | None, request: Request, body: bytes
    ) -> Response | None:
        if op is None:
            return None
        try:
            doc.check_request(
                op,
                dict(request.query_params),
                dict(request.headers),
                request.headers.get("content-type"),
                body,
            )
        except SchemaViolation as exc:
            # Stricter than the vendor's code where the document says more: not one of the
            # operation's documented answers, so not checked against them.
            return _gate(error(f"{exc}", "invalid_request", 400))
        return None

    async def _route(
        self, request: Request, body: bytes, op: Operation | None, ours: bool
    ) -> Response:
        path, method = request.url.path, request.method
        if ours:
            if not self._authorized(request):
                return error("Unauthorized", "unauthorized", 401)
            invalid = self._check_request(WORKER_DOC, op, request, body)
            if invalid is not None:
                return invalid
            return await self._ours(request, body, op)
        # index.ts: the registry in front of the bridge's /v1/sandbox/:id routes.
        match = SANDBOX_PATH.match(path)
        if match and SANDBOX_ID.match(match[1]) and self._authorized(request):
            sandbox_id, rest = match[1], match[2]
            record = self.records.get(sandbox_id)
            if method == "DELETE" and not rest:
                if record is not None:
                    await self._destroy(sandbox_id)
                return Response(status_code=204)
            if record is None:
                return _gate(error(f"no sandbox {sandbox_id}", "sandbox_not_found", 404))
            if record.expired():
                self._later(self._destroy(sandbox_id))
                return _gate(error(f"sandbox {sandbox_id} expired", "sandbox_not_found", 404))
        elif path == "/v1/sandbox" and method == "POST":
            answer = await self._bridge(request, body, op)
            if answer.status_code == 200:
                sandbox_id = json.loads(bytes(answer.body))["id"]
                self._add(sandbox_id, {}, self.default_ttl_seconds, None, None)
            return answer
        return await self._bridge(request, body, op)

    # -- the bridge (routes.ts of @cloudflare/sandbox) ------------------------------------------

    async def _bridge(self, request: Request, body: bytes, op: Operation | None) -> Response:
        path, method = request.url.path, request.method
        if path == "/health" and method == "GET":
            return JSONResponse({"ok": True})
        if path == "/v1/openapi.json" and method == "GET":
            if not self._authorized(request) and request.query_params.get("token") != self.api_key:
                return error("Unauthorized", "unauthorized", 401)
            return JSONResponse(BRIDGE_DOC.doc)
        if path == "/v1/sandbox" and method == "POST":
            if not self._authorized(request):
                return error("Unauthorized", "unauthorized", 401)
            return JSONResponse({"id": base32_id()})
        match = SANDBOX_PATH.match(path)
        if match is None:
            return Response("Not Found", status_code=404)
        sandbox_id, rest = match[1], match[2] or ""
        # the /sandbox/* middleware: id format, then auth (its 400 is not in the document)
        if not SANDBOX_ID.match(sandbox_id):
            return _gate(error("Invalid sandbox ID format", "invalid_request", 400))
        if not self._authorized(request):
            return error("Unauthorized", "unauthorized", 401)
        if op is None:
            return Response("Not Found", status_code=404)
        invalid = self._check_request(BRIDGE_DOC, op, request, body)
        if invalid is not None:
            return invalid
        # the /sandbox/:id/* pool middleware: Hono's trailing wildcard also matches the bare
        # path, so a DELETE gets the id a container (starting one) before destroying it
        try:
            box = self._pool(sandbox_id)
        except PoolError as exc:
            if "instance limit reached" in str(exc):
                return error(str(exc), "capacity_exceeded", 503)
            return error(f"pool error: {exc}", "pool_error", 502)
        if method == "DELETE" and not rest:
            await self._destroy_container(sandbox_id)
            return Response(status_code=204)
        handler: dict[str, Callable[..., Awaitable[Response]]] = {
            "post /v1/sandbox/{id}/session": self._session,
            "post /v1/sandbox/{id}/exec": self._exec,
            "post /v1/sandbox/{id}/tunnel/{port}": self._tunnel,
            "delete /v1/sandbox/{id}/tunnel/{port}": self._untunnel,
            "post /v1/sandbox/{id}/persist": self._persist,
            "post /v1/sandbox/{id}/hydrate": self._hydrate,
        }
        route = handler.get(f"{op.method} {op.template}")
        if route is None:
            return Response("not served by the fake", status_code=501)
        return await route(request, body, box, op)

    def _pool(self, sandbox_id: str) -> Box:
        """The warm pool's ``getContainer``: the id's container, or a fresh one."""
        box = self.boxes.get(sandbox_id)
        if box is not None and box.running:
            return box
        running = sum(1 for b in self.boxes.values() if b.running)
        if running >= self.max_instances:
            raise PoolError(
                f"Maximum number of running container instances exceeded: instance limit reached ({self.max_instances})"
            )
        if box is None:
            box = Box(Container(self._state))
            self.boxes[sandbox_id] = box
        else:
            box.container.reset()
            box.sessions.clear()
            box.tunnels.clear()
            box.running = True
        return box

    async def _destroy_container(self, sandbox_id: str) -> None:
        """The container's ``destroy`` and the pool's ``reportStopped``, when the pool's
        ``lookupContainer`` finds one for the id (no allocation)."""
        box = self.boxes.pop(sandbox_id, None)
        if box is not None:
            box.container.remove()

    async def _session(self, request: Request, body: bytes, box: Box, op: Operation) -> Response:
        options = json.loads(body) if body else {}
        if not isinstance(options, dict):
            options = {}
        session_id = str(options.get("id") or f"session-{int(time.time() * 1000)}")
        cwd = options.get("cwd") or WORKSPACE
        if session_id in box.sessions:
            return error(
                f"session create failed: Session '{session_id}' already exists",
                "session_error",
                502,
            )
        if not box.container.host_path(cwd).is_dir():
            return error(
                f"session create failed: Failed to create session '{session_id}': cd {cwd}: No such file or directory",
                "session_error",
                502,
            )
        box.sessions[session_id] = Session(dict(options.get("env") or {}), cwd)
        return JSONResponse({"id": session_id})

    async def _exec(self, request: Request, body: bytes, box: Box, op: Operation) -> Response:
        """The bridge's own exec route: argv shell-quoted and run in the session, its output
        base64 line by line as the SDK delivers it (lossy, see the module docstring)."""
        try:
            spec = json.loads(body)
        except ValueError:
            return error("Invalid JSON body", "invalid_request", 400)
        session = self._session_of(request, box)
        if isinstance(session, Response):
            return session
        command = " ".join(shell_quote(a) for a in spec["argv"])
        cwd = None
        if isinstance(spec.get("cwd"), str):
            cwd = _workspace_path(spec["cwd"])
            if cwd is None:
                return error(
                    "cwd must resolve to a location within /workspace", "invalid_request", 403
                )
            if not box.container.host_path(cwd).is_dir():
                # session.ts buildFIFOScript: a cwd that `cd` refuses is a message and exit 1
                command = f"printf '%s\\n' {shell_quote('Failed to change directory to ' + cwd)} >&2; exit 1"
                cwd = None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def out(stream: str, text: str) -> None:
            queue.put_nowait(_sse(stream, base64.b64encode(text.encode()).decode()))

        async def run() -> None:
            try:
                code = await self._sdk_exec(box, session, command, out, cwd=cwd)
                queue.put_nowait(_sse("exit", json.dumps({"exit_code": code})))
            except Exception as exc:
                queue.put_nowait(
                    _sse(
                        "error",
                        json.dumps(
                            {"error": f"exec failed: {exc}", "code": "exec_transport_error"}
                        ),
                    )
                )
            queue.put_nowait(None)

        self._spawn(box, run())
        return StreamingResponse(
            _drain(queue), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def _tunnel(self, request: Request, body: bytes, box: Box, op: Operation) -> Response:
        port = int(op.params["port"])
        if port == 3000:
            return error("Invalid port", "invalid_request", 400)
        if body.strip():
            try:
                options = json.loads(body)
            except ValueError:
                return error("Invalid JSON body", "invalid_request", 400)
            if (
                isinstance(options, dict)
                and "name" in options
                and not isinstance(options["name"], str)
            ):
                return error("name must be a string when provided", "invalid_request", 400)
        tunnel = box.tunnels.get(port)
        if tunnel is None:
            tunnel = {
                "id": str(uuid.uuid4()),
                "port": port,
                "url": f"http://127.0.0.1:{port}",
                "hostname": "127.0.0.1",
                "createdAt": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            }
            box.tunnels[port] = tunnel
        return JSONResponse(tunnel)

    async def _untunnel(self, request: Request, body: bytes, box: Box, op: Operation) -> Response:
        box.tunnels.pop(int(op.params["port"]), None)
        return Response(status_code=204)

    async def _persist(self, request: Request, body: bytes, box: Box, op: Operation) -> Response:
        excludes = [e for e in request.query_params.get("excludes", "").split(",") if e]
        if any(".." in e for e in excludes):
            return error('exclude paths must not contain ".."', "invalid_request", 400)
        command = "tar cf - " + " ".join(
            f"--exclude {shell_quote('./' + e.removeprefix('./'))}" for e in excludes
        )
        command += f" -C {shell_quote(WORKSPACE)} ."
        code, out, err = await self._run(box, command)
        if code != 0:
            return error(
                f"tar failed (exit {code}): {err.decode(errors='replace')}",
                "workspace_archive_read_error",
                502,
            )
        return Response(out, media_type="application/octet-stream")

    async def _hydrate(self, request: Request, body: bytes, box: Box, op: Operation) -> Response:
        if not body:
            return error("Empty tar payload", "invalid_request", 400)
        if len(body) > MAX_HYDRATE_BYTES:
            return error(
                f"tar payload too large: {len(body)} bytes exceeds the {MAX_HYDRATE_BYTES}-byte limit",
                "invalid_request",
                400,
            )
        tmp = f"/tmp/sandbox-hydrate-{int(time.time() * 1000)}.tar"
        host = box.container.host_path(tmp)
        host.write_bytes(body)
        os.chown(host, box.container.uid, box.container.gid)
        code, _, err = await self._run(
            box, f"mkdir -p {WORKSPACE} && tar xf {tmp} -C {WORKSPACE} && rm -f {tmp}"
        )
        if code != 0:
            return error(
                f"tar extract failed (exit {code}): {err.decode(errors='replace')}",
                "workspace_archive_write_error",
                502,
            )
        return JSONResponse({"ok": True})

    def _session_of(self, request: Request, box: Box) -> Session | Response | None:
        raw = request.headers.get("session-id")
        if not raw:
            return None
        if not SESSION_ID.match(raw) or ".." in raw:
            return error("Invalid session ID format", "invalid_request", 400)
        # the container's getOrCreateSession: an unknown id is a new session with defaults
        return box.sessions.setdefault(raw, Session({}, WORKSPACE))

    # -- the container side of the SDK (session.ts) --------------------------------------------

    async def _sdk_exec(
        self,
        box: Box,
        session: Session | None,
        command: str,
        on_output: Callable[[str, str], Any],
        *,
        cwd: str | None = None,
    ) -> int:
        """Run ``command`` as the SDK does (bash, stdin /dev/null, the session's environment);
        each output line, as the SDK delivers it, to ``on_output`` (which may be a coroutine
        function: then its awaiting holds the command back, like a full pipe); its exit status."""
        env = {**BASE_ENV, **(session.env if session else {})}
        start_cwd = cwd or (session.cwd if session else WORKSPACE)
        container = box.container
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash",
            "--norc",
            "-c",
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            limit=_LINE_LIMIT,
            preexec_fn=lambda: container.preexec(start_cwd),
        )

        async def pump(reader: asyncio.StreamReader, stream: str) -> None:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    raw = exc.partial
                    if not raw:
                        return
                except asyncio.LimitOverrunError:
                    raw = await reader.read(_LINE_LIMIT)
                # session.ts labelers: `read -r line` (NUL bytes dropped), a newline after every
                # line; the log is read back as UTF-8 text.
                text = raw.rstrip(b"\n").replace(b"\0", b"").decode("utf-8", "replace") + "\n"
                result = on_output(stream, text)
                if asyncio.iscoroutine(result):
                    await result

        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
            code = await proc.wait()
            if code < 0:  # the shell itself was killed: its container stopped under it
                raise ContainerStopped("the container stopped while the command ran")
            return code
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def _run(self, box: Box, command: str) -> tuple[int, bytes, bytes]:
        """A command run to its end, its raw output (the SDK's own internal commands)."""
        container = box.container
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash",
            "-c",
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(BASE_ENV),
            preexec_fn=lambda: container.preexec(WORKSPACE),
        )
        out, err = await proc.communicate()
        return proc.returncode or 0, out, err

    async def _write_file(self, box: Box, directory: str, name: str, data: bytes) -> None:
        """The SDK's ``writeFile`` of a stream (file-service.ts ``writeFileStream``): the parent
        made by a command of the container's user, the bytes written to a temporary file, which
        is renamed into place."""
        await self._run(box, f"mkdir -p {shell_quote(directory)}")
        folder = box.container.host_path(directory)
        temporary = folder / f"{name}.tmp.{uuid.uuid4()}"
        temporary.write_bytes(data)
        os.chown(temporary, box.container.uid, box.container.gid)
        temporary.replace(folder / name)

    def _spawn(self, box: Box, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        box.tasks.add(task)
        task.add_done_callback(box.tasks.discard)

    def _later(self, coro: Awaitable[Any]) -> None:
        """``ctx.waitUntil``."""
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    # -- agent-sandbox's routes (worker/src/routes.ts) ------------------------------------------

    def _add(
        self,
        sandbox_id: str,
        labels: dict[str, str],
        ttl: float,
        idle: float | None,
        key: str | None,
    ) -> tuple[Record, bool]:
        """registry.ts ``add``."""
        if key is not None:
            for record in self.records.values():
                if record.create_key == key:
                    return record, False
        now = int(time.time() * 1000)
        record = Record(sandbox_id, labels, now, now + round(ttl * 1000), idle, key)
        self.records[sandbox_id] = record
        return record, True

    async def _destroy(self, sandbox_id: str) -> None:
        """index.ts ``destroy``: the container destroyed if it has one, the record forgotten."""
        await self._destroy_container(sandbox_id)
        self.records.pop(sandbox_id, None)

    def _live(self, op: Operation) -> Record | Response:
        """routes.ts ``live``."""
        sandbox_id = op.params.get("id", "")
        record = self.records.get(sandbox_id)
        if record is None:
            return error(f"no sandbox {sandbox_id}", "sandbox_not_found", 404)
        if record.expired():
            self._later(self._destroy(sandbox_id))
            return error(
                f"sandbox {sandbox_id} expired at {_iso(record.expires_at)}",
                "sandbox_not_found",
                404,
            )
        return record

    def _executor(
        self, sandbox_id: str, session_header: str | None
    ) -> tuple[Box, Session | None] | Response:
        """runner.ts ``executor``."""
        if session_header is not None and (
            not SESSION_ID.match(session_header) or ".." in session_header
        ):
            return error("Invalid session ID format", "invalid_request", 400)
        try:
            box = self._pool(sandbox_id)
        except PoolError as exc:
            if "instance limit reached" in str(exc):
                return error(str(exc), "capacity_exceeded", 503)
            return error(f"pool error: {exc}", "pool_error", 502)
        session = None
        if session_header is not None:
            session = box.sessions.setdefault(session_header, Session({}, WORKSPACE))
        return box, session

    async def _control(
        self, box: Box, session: Session | None, command: str, sandbox_id: str
    ) -> list[str] | Response:
        """routes.ts ``control`` (runner.ts ``runControl``, failures answered by ``lost``)."""
        lines: list[str] = []
        try:
            await self._sdk_exec(
                box,
                session,
                command,
                lambda stream, text: lines.append(text) if stream == "stdout" else None,
            )
        except ContainerStopped as exc:
            return self._lost(sandbox_id, str(exc))
        return [line.rstrip("\n") for line in lines if line.startswith("!")]

    def _lost(self, sandbox_id: str, message: str) -> Response:
        """routes.ts ``lost``."""
        record = self.records.get(sandbox_id)
        if record is None or record.expired():
            return error(f"sandbox {sandbox_id} is gone", "sandbox_not_found", 404)
        return error(f"exec failed: {message}", "exec_transport_error", 502)

    async def _stream_runner(
        self,
        box: Box,
        session: Session | None,
        command: str,
        ok: list[str],
        lead: tuple[str, Any] | None,
    ) -> Response | str:
        """runner.ts ``streamRunner``."""
        loop = asyncio.get_running_loop()
        first: asyncio.Future[str] = loop.create_future()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
        state = {"last": "", "closed": False}

        def resolve(line: str) -> None:
            if not first.done():
                first.set_result(line)

        async def send(event: str, data: str) -> None:
            if not state["closed"]:
                await queue.put(_sse(event, data))

        async def on_output(stream: str, text: str) -> None:
            for line in text.split("\n"):
                if not line:
                    continue
                if stream == "stdout" and line.startswith("!"):
                    resolve(line)
                    state["last"] = line
                elif BASE64_LINE.match(line):
                    await send(stream, line)

        async def run() -> None:
            try:
                code = await self._sdk_exec(box, session, command, on_output)
                resolve("!ended")
                if state["last"] == "!more":
                    await send("more", "{}")
                else:
                    await send("exit", json.dumps({"exit_code": code}))
            except Exception as exc:
                resolve(f"!error exec failed: {exc}")
                await send(
                    "error",
                    json.dumps({"error": f"exec failed: {exc}", "code": "exec_transport_error"}),
                )
            finally:
                if not state["closed"]:
                    await queue.put(None)

        if lead is not None:
            await queue.put(_sse(lead[0], json.dumps(lead[1])))
        self._spawn(box, run())
        line = await first
        if line in ok:
            return StreamingResponse(
                _drain(queue), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        state["closed"] = True
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                queue.get_nowait()
        return line

    def _control_error(self, line: str, sandbox_id: str, ref: str | None) -> Response:
        """routes.ts ``controlError``."""
        if line == "!gone":
            self._later(self._destroy(sandbox_id))
            return error(
                f"sandbox {sandbox_id} is gone: its container stopped", "sandbox_not_found", 404
            )
        answers = {
            "!nosuch": (f"no process {ref} in sandbox {sandbox_id}", "process_not_found", 404),
            "!cwd": ("working directory not found", "cwd_not_found", 404),
            "!exists": (f"process {ref} already exists", "conflict", 409),
            "!ended": (f"process {ref} has ended", "conflict", 409),
            "!closed": (f"stdin of process {ref} is closed", "conflict", 409),
        }
        if line in answers:
            return error(*answers[line])
        if line.startswith("!error "):
            return self._lost(sandbox_id, line[7:])
        return error(f"unexpected answer from the sandbox: {line[:200]}", "exec_error", 502)

    async def _ours(self, request: Request, body: bytes, op: Operation | None) -> Response:
        if op is None:
            return Response("404 Not Found", status_code=404)
        name = op.spec["operationId"]
        if name == "openapi":
            return JSONResponse(WORKER_DOC.doc)
        if name == "createSandbox":
            return await self._create_sandbox(request, json.loads(body))
        if name == "listSandboxes":
            try:
                labels = json.loads(request.query_params.get("labels", "{}"))
            except ValueError:
                labels = None
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                return error("labels must be a JSON object of strings", "invalid_request", 400)
            found = [
                r.json()
                for r in sorted(self.records.values(), key=lambda r: r.created_at)
                if all(r.labels.get(k) == v for k, v in labels.items())
            ]
            return JSONResponse({"sandboxes": found})
        record = self._live(op)
        if isinstance(record, Response):
            return record
        if name == "getSandbox":
            return JSONResponse(record.json())
        ref = op.params.get("ref")
        if ref is not None and not REF.match(ref):
            return error("ref must match ^[A-Za-z0-9_-]{1,64}$", "invalid_request", 400)
        header = request.headers.get("session-id") if name == "startProcess" else None
        found = self._executor(record.id, header)
        if isinstance(found, Response):
            return found
        box, session = found
        seconds = max(
            1, min(FOLLOW_SECONDS, math.ceil((record.expires_at - time.time() * 1000) / 1000))
        )
        if name == "startProcess":
            spec = json.loads(body)
            env = spec.get("env") or {}
            pairs = [f"{k}={v}" for k, v in env.items()]
            timeout_ms = spec.get("timeout_ms")
            args: list[str | int] = [
                seconds,
                spec["ref"],
                1 if spec.get("detached") else 0,
                math.ceil(timeout_ms / 1000) if isinstance(timeout_ms, int) else 0,
                1 if spec.get("stdin") else 0,
                spec.get("cwd", "-"),
                len(pairs),
                *pairs,
                *spec["argv"],
            ]
            answer = await self._stream_runner(
                box,
                session,
                runner_command("start", record.id, args),
                ["!started"],
                ("start", {"ref": spec["ref"]}),
            )
            return (
                answer
                if isinstance(answer, Response)
                else self._control_error(answer, record.id, spec["ref"])
            )
        if name == "followProcess":
            offsets = [
                request.query_params.get("stdout", "0"),
                request.query_params.get("stderr", "0"),
            ]
            command = runner_command("follow", record.id, [seconds, str(ref), *offsets])
            answer = await self._stream_runner(box, session, command, ["!following"], None)
            return (
                answer
                if isinstance(answer, Response)
                else self._control_error(answer, record.id, ref)
            )
        if name == "killProcess":
            lines = await self._control(
                box, session, runner_command("kill", record.id, [str(ref)]), record.id
            )
            if isinstance(lines, Response):
                return lines
            return (
                Response(status_code=204)
                if "!ok" in lines
                else self._control_error(lines[0] if lines else "", record.id, ref)
            )
        if name == "writeStdin":
            close = request.query_params.get("close") == "true"
            staged = "-"
            if body:
                staged = f"in.tmp.{uuid.uuid4()}"
                await self._write_file(box, f"/tmp/.agent-sandbox/p/{ref}", staged, body)
            command = runner_command("push", record.id, [str(ref), staged, 1 if close else 0])
            lines = await self._control(box, session, command, record.id)
            if isinstance(lines, Response):
                return lines
            return (
                Response(status_code=204)
                if "!ok" in lines
                else self._control_error(lines[0] if lines else "", record.id, ref)
            )
        if name == "listProcesses":
            lines = await self._control(
                box, session, runner_command("list", record.id, []), record.id
            )
            if isinstance(lines, Response):
                return lines
            if "!ok" not in lines:
                return self._control_error(lines[0] if lines else "", record.id, None)
            processes = []
            for line in lines:
                parts = line.split(" ")
                if parts[0] != "!proc" or len(parts) != 5 or not REF.match(parts[1]):
                    continue
                _, pref, status, started, argv = parts
                try:
                    command_parts = (
                        base64.b64decode(argv).decode("utf-8", "replace").split("\0")[:-1]
                    )
                except ValueError:
                    continue
                code = None if status == "-" else int(status)
                processes.append(
                    {
                        "ref": pref,
                        "command": command_parts,
                        "running": code is None,
                        "exit_code": code,
                        "started_at": _iso(int(started or 0) * 1000),
                    }
                )
            return JSONResponse({"processes": processes})
        return Response("not served by the fake", status_code=501)

    async def _create_sandbox(self, request: Request, spec: dict[str, Any]) -> Response:
        """routes.ts POST /sandboxes."""
        key = spec.get("create_key")
        if key is not None:
            for record in self.records.values():
                if record.create_key == key:
                    return JSONResponse(record.json())
        sandbox_id = base32_id()  # index.ts mint: the bridge's POST /v1/sandbox
        record, created = self._add(
            sandbox_id,
            dict(spec.get("labels") or {}),
            spec["ttl_seconds"],
            spec.get("idle_timeout_seconds"),
            key,
        )
        if not created:
            return JSONResponse(record.json())
        found = self._executor(sandbox_id, None)
        if isinstance(found, Response):
            await self._destroy(sandbox_id)
            return found
        box, _ = found
        lines = await self._control(box, None, runner_command("init", sandbox_id, []), sandbox_id)
        if isinstance(lines, Response) or "!ok" not in lines:
            await self._destroy(sandbox_id)
            return error("could not prepare the sandbox", "exec_error", 502)
        return JSONResponse(record.json())


_BACKGROUND: set[asyncio.Task[Any]] = set()


class _GateResponse(JSONResponse):
    from_gate = True


def _gate(response: JSONResponse) -> Response:
    """A response no operation of the documents describes -- the registry's in front of the
    bridge, or the fake's refusal of a request its document forbids -- so not checked against
    them."""
    gated = _GateResponse(json.loads(bytes(response.body)), status_code=response.status_code)
    return gated


def _workspace_path(path: str) -> str | None:
    """helpers.ts ``resolveWorkspacePath``."""
    absolute = path if path.startswith("/") else f"/workspace/{path}"
    parts: list[str] = []
    for seg in absolute.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
        else:
            parts.append(seg)
    resolved = "/" + "/".join(parts)
    return resolved if resolved == "/workspace" or resolved.startswith("/workspace/") else None


def _sse(event: str, data: str) -> bytes:
    """routes.ts ``writeSSE``: every line of data gets its own ``data:`` prefix."""
    payload = "\n".join(f"data: {line}" for line in data.split("\n"))
    return f"event: {event}\n{payload}\n\n".encode()


async def _drain(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    while (item := await queue.get()) is not None:
        yield item


@contextlib.contextmanager
def serve(**kwargs: Any) -> Any:
    """A fake Worker for the duration of a ``with`` block."""
    fake = FakeWorker(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
