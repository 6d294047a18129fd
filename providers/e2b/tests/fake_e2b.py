"""A local fake of E2B's wire protocol, served on 127.0.0.1 for offline tests.

What it serves, one port for both (the SDK is pointed at it with ``E2B_API_URL`` and
``E2B_SANDBOX_URL``; sandbox traffic is routed by the ``E2b-Sandbox-Id`` header, as E2B's proxy does):

- the REST control plane the SDK calls (``POST /v2/sandboxes``, ``GET /v2/sandboxes``,
  ``GET``/``DELETE /sandboxes/{id}``, ``POST /sandboxes/{id}/timeout``,
  ``POST /v2/sandboxes/{id}/connect``, ``POST /sandboxes/{id}/pause``,
  ``POST /sandboxes/{id}/snapshots``, ``DELETE /templates/{id}``), decoding requests with the SDK's
  own generated models and rejecting what the vendor's API would (auth, unknown fields, bad
  types, unknown templates, idempotency keys reused with another body);
- envd's process service, through the SDK's own generated connect-rpc server stub
  (``ProcessASGIApplication``), so the exec wire format is the vendor's: commands are real
  processes (see :mod:`fake_e2b_jail`) started as ``bash -l -c`` by the SDK, with real exit codes,
  separate streams, stdin, signals, and E2B's deadline behaviour (the deadline kills the command's
  top process only, like envd);
- envd's ``/files`` endpoint (download, multipart and octet-stream upload) and ``/health``.

Sandboxes expire at their timeout (killed, or paused with ``autoPause``), like E2B's. Faults can be
injected (:meth:`FakeE2B.fail_next`) to test error translation and retries.

Known gaps: network ``allowOut`` lists are recorded but not enforced (only "no egress at all" is:
a loopback-only network namespace); no PTYs, no reattaching to a running command (``Connect``),
no filesystem RPC service (``/filesystem.Filesystem``), no gzip transfers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fake_e2b_jail as jail
import fake_vm
import uvicorn
from e2b.api.client.models import (
    ConnectSandboxV2,
    ListedSandbox,
    NewSandboxV2,
    SandboxDetail,
    SandboxPauseRequest,
    SandboxSnapshotRequest,
    SandboxState,
    SandboxTimeoutRequest,
    SnapshotInfo,
)
from e2b.api.client.models import Sandbox as CreatedSandbox
from e2b.api.client.types import Unset
from e2b.envd.process import process_connect
from fake_envd_process import EnvdProcess, FakeProcessService, Retained
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ENVD_VERSION = "0.6.7"
CHUNK = 32 * 1024


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": status, "message": message, **extra}, status_code=status)


@dataclass
class FakeSandbox:
    """A sandbox: its root directory, its settings and its running commands."""

    id: str
    template_id: str
    root: Path
    envd_token: str
    metadata: dict[str, str]
    env_vars: dict[str, str]
    started_at: datetime
    end_at: datetime
    allow_internet: bool
    auto_pause: bool
    vm: fake_vm.VM
    workdir: str | None
    """The template's workdir (envd's default cwd), ``None``: the user's home."""
    state: str = "running"
    procs: dict[int, EnvdProcess] = field(default_factory=dict)
    terminated: dict[int, Retained] = field(default_factory=dict)


@dataclass
class Fault:
    """An injected failure: the next ``count`` requests matching ``method`` and ``path`` fail."""

    method: str
    path: str
    status: int
    count: int
    message: str
    after_effect: bool = False
    """Fail after the request took effect (the sandbox exists, the answer is lost)."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait (after the effect, when ``after_effect``) before answering."""
    body: str | None = None
    """A raw body instead of the API's JSON error (what a gateway in front of it answers)."""
    content_type: str = "application/json"


class FakeE2B:
    """The fake service. Use :meth:`start` / :meth:`stop` (or as a context manager)."""

    def __init__(
        self,
        api_key: str = "e2b_fake_key",
        templates: dict[str, str | None] | None = None,
    ) -> None:
        self.api_key = api_key
        self.templates = dict(templates or {"base": "/home/user", "web-app": "/srv/app"})
        """Template name -> its ``WORKDIR`` (what envd's ``/init`` sets as the default cwd;
        ``None``: none, commands start in the user's home)."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.upload_rate: float | None = None
        """Bytes per second ``/files`` uploads are taken at (``None``: as fast as they come)."""
        self.uploads: list[tuple[str, int, str]] = []
        """(path, bytes, "octet-stream" | "multipart") of every upload to ``/files``."""
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.snapshots: dict[str, Path] = {}
        self.snapshot_workdirs: dict[str, str | None] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every control-plane request, for tests that count calls."""
        self.create_bodies: list[dict[str, Any]] = []
        self._idempotency: dict[str, tuple[str, dict[str, Any]]] = {}
        self._state = Path(tempfile.mkdtemp(prefix="fake-e2b-"))
        self.etc = fake_vm.write_etc(self._state / "etc", jail.USERS.values(), "e2b.local")
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeE2B:
        """Serve on a free loopback port in a background thread."""
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            http="auto",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            reaper = loop.create_task(self._reaper())
            loop.call_soon(ready.set)
            assert self._server is not None
            loop.run_until_complete(self._server.serve(sockets=[sock]))
            reaper.cancel()
            loop.run_until_complete(asyncio.gather(reaper, return_exceptions=True))
            loop.run_until_complete(self._kill_everything())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-e2b", daemon=True)
        self._thread.start()
        ready.wait(10)
        for _ in range(200):
            if self._server.started:
                break
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        """Stop serving, kill every sandbox's processes, remove all state."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(20)
        shutil.rmtree(self._state, ignore_errors=True)

    def __enter__(self) -> FakeE2B:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The environment that points the e2b SDK at this fake."""
        return {
            "E2B_API_KEY": self.api_key,
            "E2B_API_URL": self.url,
            "E2B_SANDBOX_URL": self.url,
            "E2B_DOMAIN": "e2b.local",
        }

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        *,
        count: int = 1,
        message: str = "injected failure",
        after_effect: bool = False,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        body: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Make the next ``count`` matching requests fail with ``status``.

        ``path`` matches as a prefix ("/v2/sandboxes").
        """
        self.faults.append(
            Fault(
                method.upper(), path, status, count, message, after_effect, headers or {}, delay,
                body, content_type,
            )
        )  # fmt: skip

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the fake's loop (for tests poking at state)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- the ASGI app ----------------------------------------------------------------------------

    def app(self) -> Any:
        rest = Starlette(
            routes=[
                Route("/v2/sandboxes", self.create_sandbox, methods=["POST"]),
                Route("/v2/sandboxes", self.list_sandboxes, methods=["GET"]),
                Route("/sandboxes/{sid}", self.get_sandbox, methods=["GET"]),
                Route("/sandboxes/{sid}", self.kill_sandbox, methods=["DELETE"]),
                Route("/sandboxes/{sid}/timeout", self.set_timeout, methods=["POST"]),
                Route("/v2/sandboxes/{sid}/connect", self.connect_sandbox, methods=["POST"]),
                Route("/sandboxes/{sid}/pause", self.pause_sandbox, methods=["POST"]),
                Route("/sandboxes/{sid}/snapshots", self.snapshot_sandbox, methods=["POST"]),
                Route("/templates/{tid:path}", self.delete_template, methods=["DELETE"]),
            ]
        )
        envd_http = Starlette(
            routes=[
                Route("/files", self.download, methods=["GET"]),
                Route("/files", self.upload, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )
        process_app = process_connect.ProcessASGIApplication(FakeProcessService(self))  # type: ignore[arg-type]

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            path: str = scope["path"]
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            if "e2b-sandbox-id" in headers:  # sandbox traffic, through "the proxy"
                denied = self._check_sandbox_traffic(headers)
                if denied is not None:
                    await denied(scope, receive, send)
                    return
                target = process_app if path.startswith("/process.Process/") else envd_http
                await target(scope, receive, send)
                return
            self.requests.append((scope["method"], path))
            if headers.get("x-api-key") != self.api_key:
                await _error(401, "Invalid API key")(scope, receive, send)
                return
            fault = self._take_fault(scope["method"], path)
            if fault is not None and not fault.after_effect:
                await self._fault_response(fault, scope, receive, send)
                return
            if fault is not None:
                await self._after_effect(fault, rest, scope, receive, send)
                return
            await rest(scope, receive, send)

        return app

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.method == method and path.startswith(fault.path) and fault.count > 0:
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def _fault_response(self, fault: Fault, scope: Any, receive: Any, send: Any) -> None:
        response: Response = _error(fault.status, fault.message)
        if fault.body is not None:
            response = Response(fault.body, fault.status, media_type=fault.content_type)
        response.headers.update(fault.headers)
        await response(scope, receive, send)

    async def _after_effect(
        self, fault: Fault, rest: Any, scope: Any, receive: Any, send: Any
    ) -> None:
        async def swallow(message: dict[str, Any]) -> None:
            return None

        await rest(scope, receive, swallow)
        await asyncio.sleep(fault.delay)
        await self._fault_response(fault, scope, receive, send)

    def _check_sandbox_traffic(self, headers: dict[str, str]) -> Response | None:
        sid = headers["e2b-sandbox-id"]
        sb = self.sandboxes.get(sid)
        if sb is None or sb.state != "running":
            return JSONResponse(
                {"sandboxId": sid, "message": f"The sandbox {sid} was not found", "code": 502},
                status_code=502,
            )
        if headers.get("x-access-token") != sb.envd_token:
            return _error(401, "invalid access token")
        return None

    # -- control plane --------------------------------------------------------------------------

    async def _json(self, request: Request) -> dict[str, Any] | JSONResponse:
        raw = await request.body()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        return body

    @staticmethod
    def _unknown_fields(model: Any) -> JSONResponse | None:
        extra = getattr(model, "additional_properties", {})
        if extra:
            return _error(400, f"unknown fields: {sorted(extra)}")
        return None

    def _sandbox(self, sid: str) -> FakeSandbox | None:
        sb = self.sandboxes.get(sid)
        if sb is not None and sb.state == "killed":
            return None
        return sb

    async def create_sandbox(self, request: Request) -> Response:
        body = await self._json(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            new = NewSandboxV2.from_dict(body)
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, f"invalid request body: {exc}")
        bad = self._unknown_fields(new)
        if bad is not None:
            return bad
        problems = _validate_new_sandbox(new)
        if problems:
            return _error(400, problems)
        key = request.headers.get("idempotency-key")
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if key is not None:
            seen = self._idempotency.get(key)
            if seen is not None:
                if seen[0] != digest:
                    return _error(
                        422,
                        "idempotency key reused with a different request",
                        error_code="idempotency_request_mismatch",
                    )
                return JSONResponse(seen[1], status_code=201)
        template = new.template_id
        snapshot = self.snapshots.get(template)
        if template not in self.templates and snapshot is None:
            return _error(404, f"template '{template}' not found")
        sid = "i" + secrets.token_hex(10)
        root = self._state / "sandboxes" / sid
        if snapshot is not None:
            shutil.copytree(snapshot, root, symlinks=True)
        jail.prepare_root(root)
        workdir = (
            self.templates.get(template)
            if snapshot is None
            else self.snapshot_workdirs.get(template)
        )
        if workdir:
            (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            os.chown(root / workdir.lstrip("/"), 1000, 1000)
        timeout = new.timeout if isinstance(new.timeout, int) else 300
        network = new.network
        deny_all = not (new.allow_internet_access is not False)
        if not isinstance(network, Unset):
            deny = network.deny_out if not isinstance(network.deny_out, Unset) else []
            allow = network.allow_out if not isinstance(network.allow_out, Unset) else []
            if "0.0.0.0/0" in (deny or []) and not allow:
                deny_all = True
        now = _now()
        sb = FakeSandbox(
            id=sid,
            template_id=template,
            root=root,
            envd_token=secrets.token_urlsafe(24),
            metadata=dict(new.metadata) if isinstance(new.metadata, dict) else {},
            env_vars=dict(new.env_vars) if isinstance(new.env_vars, dict) else {},
            started_at=now,
            end_at=now + timedelta(seconds=timeout),
            allow_internet=not deny_all,
            auto_pause=new.auto_pause is True,
            vm=fake_vm.VM(root, self.etc, private_net=deny_all),
            workdir=workdir,
        )
        await asyncio.to_thread(sb.vm.boot)
        sb.vm.attach_loop(asyncio.get_running_loop())
        self.sandboxes[sid] = sb
        self.create_bodies.append(body)
        reply = CreatedSandbox(
            template_id=template,
            sandbox_id=sid,
            client_id="fake-client",
            envd_version=ENVD_VERSION,
            envd_access_token=sb.envd_token,
            domain="e2b.local",
        ).to_dict()
        if key is not None:
            self._idempotency[key] = (digest, reply)
        return JSONResponse(reply, status_code=201)

    def _listed(self, sb: FakeSandbox) -> dict[str, Any]:
        return ListedSandbox(
            template_id=sb.template_id,
            sandbox_id=sb.id,
            client_id="fake-client",
            started_at=sb.started_at,
            end_at=sb.end_at,
            cpu_count=2,
            memory_mb=512,
            disk_size_mb=1024,
            state=SandboxState(sb.state),
            envd_version=ENVD_VERSION,
            metadata=sb.metadata,
        ).to_dict()

    async def list_sandboxes(self, request: Request) -> Response:
        params = request.query_params
        unknown = set(params) - {
            "metadata",
            "state",
            "order",
            "startedAfter",
            "template",
            "nextToken",
            "limit",
        }
        if unknown:
            return _error(400, f"unknown query parameters: {sorted(unknown)}")
        wanted: dict[str, str] = {}
        if "metadata" in params:
            for k, v in urllib.parse.parse_qsl(params["metadata"], keep_blank_values=True):
                wanted[urllib.parse.unquote(k)] = urllib.parse.unquote(v)
        states = {"running", "paused"}
        if "state" in params:
            states = set(params["state"].split(","))
            if not states <= {"running", "paused"}:
                return _error(400, f"invalid state filter: {params['state']}")
        try:
            limit = int(params.get("limit", "100"))
        except ValueError:
            return _error(400, "limit must be an integer")
        if not 1 <= limit <= 100:
            return _error(400, "limit must be between 1 and 100")
        found = [
            sb
            for sb in sorted(self.sandboxes.values(), key=lambda s: (s.started_at, s.id))
            if sb.state in states and all(sb.metadata.get(k) == v for k, v in wanted.items())
        ]
        start = int(params.get("nextToken", "0") or 0)
        page = found[start : start + limit]
        headers = {}
        if start + limit < len(found):
            headers["x-next-token"] = str(start + limit)
        return JSONResponse([self._listed(sb) for sb in page], headers=headers)

    async def get_sandbox(self, request: Request) -> Response:
        sb = self._sandbox(request.path_params["sid"])
        if sb is None:
            return _error(
                404,
                f"sandbox \"{request.path_params['sid']}\" doesn't exist or you don't have access to it",
            )
        detail = SandboxDetail(
            template_id=sb.template_id,
            sandbox_id=sb.id,
            client_id="fake-client",
            started_at=sb.started_at,
            end_at=sb.end_at,
            envd_version=ENVD_VERSION,
            cpu_count=2,
            memory_mb=512,
            disk_size_mb=1024,
            state=SandboxState(sb.state),
            envd_access_token=sb.envd_token,
            allow_internet_access=sb.allow_internet,
            domain="e2b.local",
            metadata=sb.metadata,
        ).to_dict()
        return JSONResponse(detail)

    async def kill_sandbox(self, request: Request) -> Response:
        sb = self._sandbox(request.path_params["sid"])
        if sb is None:
            return _error(404, "sandbox not found")
        await self._kill(sb)
        return Response(status_code=204)

    async def set_timeout(self, request: Request) -> Response:
        body = await self._json(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            req = SandboxTimeoutRequest.from_dict(body)
        except (KeyError, TypeError) as exc:
            return _error(400, f"invalid request body: {exc}")
        if self._unknown_fields(req) or not isinstance(req.timeout, int) or req.timeout < 0:
            return _error(400, "invalid timeout")
        sb = self._sandbox(request.path_params["sid"])
        if sb is None or sb.state != "running":
            return _error(404, "sandbox not found")
        sb.end_at = _now() + timedelta(seconds=req.timeout)
        return Response(status_code=204)

    async def connect_sandbox(self, request: Request) -> Response:
        body = await self._json(request)
        if isinstance(body, JSONResponse):
            return body
        req = ConnectSandboxV2.from_dict(body)
        if self._unknown_fields(req):
            return _error(400, "unknown fields")
        timeout = req.timeout if isinstance(req.timeout, int) else 300
        sb = self._sandbox(request.path_params["sid"])
        if sb is None:
            return _error(404, "sandbox not found")
        status = 200
        new_end = _now() + timedelta(seconds=timeout)
        if sb.state == "paused":
            self._signal_all(sb, signal.SIGCONT)
            sb.state = "running"
            sb.end_at = new_end
            status = 201
        elif new_end > sb.end_at:  # a running sandbox's TTL is only ever extended
            sb.end_at = new_end
        reply = CreatedSandbox(
            template_id=sb.template_id,
            sandbox_id=sb.id,
            client_id="fake-client",
            envd_version=ENVD_VERSION,
            envd_access_token=sb.envd_token,
            domain="e2b.local",
        ).to_dict()
        return JSONResponse(reply, status_code=status)

    async def pause_sandbox(self, request: Request) -> Response:
        body = await self._json(request)
        if isinstance(body, JSONResponse):
            return body
        req = SandboxPauseRequest.from_dict(body)
        if self._unknown_fields(req):
            return _error(400, "unknown fields")
        sb = self._sandbox(request.path_params["sid"])
        if sb is None:
            return _error(404, "sandbox not found")
        if sb.state == "paused":
            return _error(409, "sandbox is already paused")
        self._signal_all(sb, signal.SIGSTOP)
        sb.state = "paused"
        return Response(status_code=204)

    async def snapshot_sandbox(self, request: Request) -> Response:
        body = await self._json(request)
        if isinstance(body, JSONResponse):
            return body
        req = SandboxSnapshotRequest.from_dict(body)
        if self._unknown_fields(req):
            return _error(400, "unknown fields")
        sb = self._sandbox(request.path_params["sid"])
        if sb is None or sb.state != "running":
            return _error(404, "sandbox not found")
        name = req.name if isinstance(req.name, str) else "snap-" + secrets.token_hex(6)
        snapshot_id = f"{name}:default"
        target = self._state / "snapshots" / snapshot_id.replace(":", "_")
        if target.exists():
            shutil.rmtree(target)
        await asyncio.to_thread(shutil.copytree, sb.root, target, symlinks=True)
        self.snapshots[snapshot_id] = target
        self.snapshot_workdirs[snapshot_id] = sb.workdir
        info = SnapshotInfo(snapshot_id=snapshot_id, names=[f"fake-team/{snapshot_id}"])
        return JSONResponse(info.to_dict(), status_code=201)

    async def delete_template(self, request: Request) -> Response:
        tid = urllib.parse.unquote(request.path_params["tid"])
        target = self.snapshots.pop(tid, None)
        if target is None:
            return _error(404, "template not found")
        shutil.rmtree(target, ignore_errors=True)
        return Response(status_code=204)

    # -- sandbox lifetime -------------------------------------------------------------------------

    def _signal_all(self, sb: FakeSandbox, sig: int) -> None:
        sb.vm.signal(-1, sig)

    async def _kill(self, sb: FakeSandbox) -> None:
        sb.state = "killed"
        sb.vm.halt()
        self.sandboxes.pop(sb.id, None)
        await asyncio.to_thread(shutil.rmtree, sb.root, True)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = _now()
            for sb in list(self.sandboxes.values()):
                if sb.state == "running" and sb.end_at <= now:
                    if sb.auto_pause:
                        self._signal_all(sb, signal.SIGSTOP)
                        sb.state = "paused"
                    else:
                        await self._kill(sb)

    async def _kill_everything(self) -> None:
        for sb in list(self.sandboxes.values()):
            await self._kill(sb)

    # -- envd HTTP ---------------------------------------------------------------------------------

    def _envd_sandbox(self, request: Request) -> FakeSandbox:
        return self.sandboxes[request.headers["e2b-sandbox-id"]]

    @staticmethod
    def _user(request: Request) -> fake_vm.User | JSONResponse:
        name = request.query_params.get("username") or jail.DEFAULT_USER
        user = jail.USERS.get(name)
        if user is None:
            return _error(401, f"error looking up user '{name}': unknown user {name}")
        return user

    def _virtual(self, sb: FakeSandbox, user: fake_vm.User, path: str) -> str:
        if not path.startswith("/"):
            path = f"{user.home}/{path}"
        return fake_vm.resolve(sb.root, path, self.etc)

    async def health(self, request: Request) -> Response:
        return Response(status_code=204)

    async def download(self, request: Request) -> Response:
        sb = self._envd_sandbox(request)
        user = self._user(request)
        if isinstance(user, JSONResponse):
            return user
        path = request.query_params.get("path", "")
        try:
            virtual = self._virtual(sb, user, path)
        except OSError as exc:
            return _error(400, f"error expanding and resolving path '{path}': {exc}")
        host = fake_vm.host_path(sb.root, virtual, self.etc)
        if not host.exists():
            return _error(404, f"path '{virtual}' does not exist")
        if host.is_dir():
            return _error(400, f"path '{virtual}' is a directory")
        try:
            fh = await asyncio.to_thread(open, host, "rb")
        except OSError as exc:
            return _error(500, f"error opening file '{virtual}': {exc.strerror}")

        async def body() -> AsyncIterator[bytes]:
            with fh:
                while chunk := await asyncio.to_thread(fh.read, 1 << 20):
                    yield chunk

        size = os.fstat(fh.fileno()).st_size
        return StreamingResponse(
            body(),
            media_type="application/octet-stream",
            headers={"content-length": str(size)},
        )

    async def upload(self, request: Request) -> Response:
        sb = self._envd_sandbox(request)
        user = self._user(request)
        if isinstance(user, JSONResponse):
            return user
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        params_path = request.query_params.get("path")
        if ctype == "application/octet-stream":
            if not params_path:
                return _error(400, "path query parameter is required for raw body upload")
            if request.headers.get("content-encoding") not in (None, "identity"):
                return _error(400, "the fake does not implement compressed uploads")
            return await self._store(sb, user, params_path, request.stream())
        if ctype.startswith("multipart/"):
            form = await request.form(max_part_size=1 << 40)
            entries = []
            for name, value in form.multi_items():
                if name != "file" or isinstance(value, str):
                    continue
                target = params_path or value.filename or ""

                async def chunks(v: Any = value) -> AsyncIterator[bytes]:
                    while data := await v.read(1 << 20):
                        yield data

                result = await self._store(sb, user, target, chunks(), multi=True)
                if isinstance(result, Response):
                    return result
                entries.extend(result)
            await form.close()
            return JSONResponse(entries)
        return _error(
            400,
            f"unsupported content type: {ctype}, expected multipart/form-data or application/octet-stream",
        )

    async def _store(
        self,
        sb: FakeSandbox,
        user: fake_vm.User,
        path: str,
        data: AsyncIterator[bytes],
        multi: bool = False,
    ) -> Any:
        try:
            virtual = self._virtual(sb, user, path)
        except OSError as exc:
            return _error(400, f"error resolving path: {exc}")
        if fake_vm.is_read_only(virtual):
            return _error(500, f"error opening file: open {virtual}: read-only file system")
        host = fake_vm.host_path(sb.root, virtual, self.etc)
        if host.is_dir():
            return _error(400, f"path is a directory: {virtual}")
        try:
            _ensure_dirs(sb.root, host.parent, user)
            fh = await asyncio.to_thread(open, host, "wb")
        except NotADirectoryError as exc:
            return _error(500, f"error ensuring directories: {exc}")
        except OSError as exc:
            return _error(500, f"error opening file: {exc}")
        received = 0
        with fh:
            os.chown(host, user.uid, user.gid)
            async for chunk in data:
                await asyncio.to_thread(fh.write, chunk)
                received += len(chunk)
                if self.upload_rate:  # a slow link to the sandbox
                    await asyncio.sleep(len(chunk) / self.upload_rate)
        self.uploads.append((virtual, received, "multipart" if multi else "octet-stream"))
        entry = {"path": virtual, "name": os.path.basename(virtual), "type": "file"}
        return [entry] if multi else JSONResponse([entry])


def _ensure_dirs(root: Path, directory: Path, user: fake_vm.User) -> None:
    missing = []
    d = directory
    while not d.exists() and d != root:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir()
        os.chown(d, user.uid, user.gid)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")


def _validate_new_sandbox(new: NewSandboxV2) -> str:
    if not isinstance(new.template_id, str) or not new.template_id:
        return "templateID must be a non-empty string"
    if not isinstance(new.timeout, (int, Unset)) or isinstance(new.timeout, bool):
        return "timeout must be an integer"
    if isinstance(new.timeout, int) and not 0 <= new.timeout <= 86400:
        return "timeout must be between 0 and 86400 seconds"
    for name in ("metadata", "env_vars"):
        value = getattr(new, name)
        if isinstance(value, Unset):
            continue
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return f"{name} must map strings to strings"
    return ""


@contextlib.contextmanager
def serve() -> Iterator[FakeE2B]:
    """Run a fake for the duration of a ``with`` block."""
    fake = FakeE2B().start()
    try:
        yield fake
    finally:
        fake.stop()
