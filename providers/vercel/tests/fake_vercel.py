"""A local fake of Vercel Sandbox's wire protocol, served on 127.0.0.1 for offline tests.

Run as its own process (``python fake_vercel.py``; it prints ``READY <url>``), so its memory and
its root privileges stay out of the test process. The ``vercel-sandbox`` SDK reaches it through
``SandboxServiceOptions(base_url=...)``.

What it follows, and where from:

- Requests are decoded with models mirroring the SDK's own request serializers
  (``vercel/sandbox/_internal/api_client.py``: ``_CreateSandboxRequest``, ``_RunCommandRequest``,
  ``_MkdirRequest``, ...): camelCase names, unknown fields refused with 400, as the API's
  validation does. Every JSON answer is validated with the SDK's own response models
  (``_SandboxResponse``, ``_CommandResponse``, ...) before it is sent.
- Errors are ``{"error": {"code", "message"}}`` with the status the vendor uses
  (``packages/vercel-sandbox-mock/src/server/http.ts`` and ``mock-server.ts`` in
  github.com/vercel/sandbox): 404 ``not_found``, 410 ``sandbox_stopped`` for commands and files
  of a stopped session, 410 ``snapshot_not_found``, 401 for a bad token; ``fs/read`` of a missing
  file is a 404 with an empty body, as there.
- Streams are ``application/x-ndjson``: ``{"command": ...}`` first, ``{"stream", "data"}``
  records, a final ``{"command": {..., "exitCode": N}}`` for ``wait=true``; the logs endpoint
  replays a command's output from its start on every connection and ends when the command has
  exited (``vercel/sandbox/_internal/log_stream.py``).
- Output is text: "the command output channel is UTF-8 only and would otherwise corrupt binary
  files" (``packages/vercel-sandbox/src/sandbox-user.ts``), so each stream is decoded as UTF-8
  with invalid bytes replaced (U+FFFD).
- A process killed by signal N reports ``exitCode`` 128 + N, with no separate signal, and
  ``timeout`` (ms) kills with SIGKILL (137): ``packages/vercel-sandbox/src/command.test.ts``.
  ``kill`` signals the process itself (the SDK: "Send a signal to the running process").
- stdin: ``POST .../stdin`` with base64 ``data``, ``offset`` and ``close``; bytes before the
  confirmed offset are skipped, the answer carries ``bytesWritten``; 400
  ``command_stdin_unavailable`` for a process without stdin, 404 once it exited; bodies over
  1 MB are refused (``vercel/sandbox/_internal/process_stdin.py``).
- At most 5 tags and 15 ports, ``timeout`` up to 24 h (SKILL.md, Limitations); sandbox names
  unique per project (409). A session stops when its ``timeout`` runs out; a ``persistent``
  sandbox keeps its filesystem for the next session, a non-persistent one does not. Taking a
  snapshot stops the session (SKILL.md: "Create snapshot (stops the sandbox)"); deleted
  snapshots are soft-deleted (``status: "deleted"``, mock-server.ts). ``GET`` with
  ``resume=true`` starts a new session from ``currentSnapshotId``.
- Commands run as ``ubuntu`` (``sudo`` as root with ``SUDO_USER=ubuntu``), cwd
  ``/vercel/sandbox``; the file API acts as ``ubuntu`` too (sandbox-user.ts: the HTTP file API
  "may not be able to read files this user has kept private"). See :mod:`fake_vercel_jail`.
- ``fs/write`` takes a gzipped tar (``x-cwd`` its base, as ``write_files_request`` sends it);
  the SDK writes ``mtime`` 0 in every header and the vendor's mock writes each file anew, so a
  written file's time is the write's (``tar -m``), its mode the header's.

Known gaps: allow-lists of a ``custom`` network policy are recorded, not enforced (``deny-all``
is: loopback only); no PTY (``interactive``), drives, forks or regions; CPU and memory are
reported, not enforced; a command that cannot be executed exits 127 with the error on stderr
(the vendor's exact answer is not documented).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import json
import os
import posixpath
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import fake_vercel_jail as jail
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from vercel.sandbox._internal import api_client as sdk

CHUNK = 64 * 1024
MAX_TAGS = 5
MAX_PORTS = 15
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_BODY = 1024 * 1024
PATH = "/vercel/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _now() -> int:
    return int(time.time() * 1000)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def answer(model: type[BaseModel], body: dict[str, Any]) -> JSONResponse:
    """Send ``body`` after checking the SDK's response model accepts it."""
    model.model_validate(body)
    return JSONResponse(body)


# -- requests, as the SDK's serializers write them -----------------------------------------------


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Req):
    vcpus: int | None = Field(default=None, ge=1, le=32)
    memory: int | None = Field(default=None, ge=1)


class Source(_Req):
    type: Literal["git", "tarball", "snapshot"]
    snapshotId: str | None = None
    url: str | None = None
    depth: int | None = None
    revision: str | None = None
    username: str | None = None
    password: str | None = None


class CreateSandbox(_Req):
    projectId: str
    name: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$")
    image: str | None = None
    source: Source | None = None
    ports: list[int] | None = None
    timeout: int | None = Field(default=None, ge=1000, le=MAX_TIMEOUT_MS)
    resources: Resources | None = None
    persistent: bool | None = None
    networkPolicy: dict[str, Any] | None = None
    networkId: str | None = None
    env: dict[str, str] | None = None
    tags: dict[str, str] | None = None
    mounts: dict[str, Any] | None = None
    snapshotExpiration: int | None = None
    keepLastSnapshots: dict[str, Any] | None = None
    region: str | None = None
    failoverRegions: list[str] | None = None


class UpdateSandbox(_Req):
    ports: list[int] | None = None
    timeout: int | None = Field(default=None, ge=1000, le=MAX_TIMEOUT_MS)
    resources: Resources | None = None
    persistent: bool | None = None
    networkPolicy: dict[str, Any] | None = None
    env: dict[str, str] | None = None
    tags: dict[str, str] | None = None
    currentSnapshotId: str | None = None
    region: str | None = None


class RunCommand(_Req):
    command: str = Field(min_length=1)
    args: list[str] | None = None
    cwd: str | None = None
    env: dict[str, str] | None = None
    sudo: bool | None = None
    wait: bool | None = None
    logs: bool | None = None
    timeout: int | None = Field(default=None, ge=0)
    attachStdin: bool | None = None


class Stdin(_Req):
    data: str | None = None
    offset: int | None = Field(default=None, ge=0)
    close: bool | None = None


class Kill(_Req):
    signal: int = Field(ge=1, le=64)


class FsPath(_Req):
    path: str = Field(min_length=1)
    cwd: str | None = None


class Mkdir(FsPath):
    recursive: bool = True


class Extend(_Req):
    duration: int = Field(ge=1000)


class SnapshotBody(_Req):
    expiration: int | None = None


def _policy(policy: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
    """(deny_network, the policy as read back) from a request's network policy."""
    if policy is None:
        return False, None
    if "mode" in policy:
        if set(policy) != {"mode"} or policy["mode"] not in ("allow-all", "deny-all"):
            raise ValueError("networkPolicy: mode must be allow-all or deny-all, alone")
        return policy["mode"] == "deny-all", {"mode": policy["mode"]}
    unknown = set(policy) - {"allow", "subnets"}
    if unknown:
        raise ValueError(f"networkPolicy: unknown fields {sorted(unknown)}")
    allow = policy.get("allow", {})
    if not isinstance(allow, dict):
        raise ValueError("networkPolicy.allow must map domains to rules")
    return False, {
        "allow": allow,
        **({"subnets": policy["subnets"]} if "subnets" in policy else {}),
    }


# -- state ---------------------------------------------------------------------------------------


@dataclass
class Command:
    id: str
    session: Session
    name: str
    args: list[str]
    cwd: str
    started_at: int
    proc: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    records: list[tuple[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    stdin_fd: int | None = None
    stdin_written: int = 0
    stdin_closed: bool = False
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    finisher: asyncio.Task[None] | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "args": self.args,
            "cwd": self.cwd,
            "sessionId": self.session.id,
            "exitCode": self.exit_code,
            "startedAt": self.started_at,
        }

    def add(self, stream: str, data: str) -> None:
        if data:
            self.records.append((stream, data))
            self.changed.set()
            self.changed = asyncio.Event()


@dataclass
class Session:
    id: str
    sandbox: Sandbox
    root: Path
    timeout_ms: int
    deny_network: bool
    network_policy: dict[str, Any] | None
    requested_at: int
    status: str = "running"
    stopped_at: int | None = None
    commands: dict[str, Command] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        sb = self.sandbox
        return {
            "id": self.id,
            "sourceSandboxName": sb.name,
            "projectId": sb.project_id,
            "status": self.status,
            "cwd": jail.WORKDIR,
            "region": "iad1",
            "memory": sb.memory,
            "vcpus": sb.vcpus,
            "timeout": self.timeout_ms,
            "networkPolicy": self.network_policy,
            "requestedAt": self.requested_at,
            "startedAt": self.requested_at,
            "stoppedAt": self.stopped_at,
        }


@dataclass
class Sandbox:
    name: str
    project_id: str
    image: str
    persistent: bool
    timeout_ms: int
    vcpus: int
    memory: int
    env: dict[str, str]
    tags: dict[str, str] | None
    ports: list[int]
    deny_network: bool
    network_policy: dict[str, Any] | None
    created_at: int
    session: Session | None = None
    current_snapshot_id: str | None = None

    def payload(self) -> dict[str, Any]:
        session = self.session
        body: dict[str, Any] = {
            "name": self.name,
            "currentSessionId": session.id if session else "",
            "image": self.image,
            "status": session.status if session else "stopped",
            "persistent": self.persistent,
            "currentSnapshotId": self.current_snapshot_id,
            "projectId": self.project_id,
            "cwd": jail.WORKDIR,
            "region": "iad1",
            "memory": self.memory,
            "vcpus": self.vcpus,
            "timeout": self.timeout_ms,
            "networkPolicy": self.network_policy,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "tags": self.tags,
        }
        return {k: v for k, v in body.items() if v is not None}

    def routes(self) -> list[dict[str, Any]]:
        return [
            {
                "url": f"https://{self.name}-{port}.vercel.run",
                "port": port,
                "subdomain": f"{self.name}-{port}",
            }
            for port in self.ports
        ]


@dataclass
class Fault:
    """The next ``count`` requests matching ``method`` and a ``path`` prefix fail."""

    method: str
    path: str
    status: int
    code: str
    message: str
    count: int
    after_effect: bool = False


class FakeVercel:
    """The fake service's state and its ASGI app."""

    def __init__(self, token: str, team_id: str, project_id: str) -> None:
        self.token, self.team_id, self.project_id = token, team_id, project_id
        self.sandboxes: dict[str, Sandbox] = {}
        self.sessions: dict[str, Session] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.state = Path(tempfile.mkdtemp(prefix="fake-vercel-"))
        self.etc = jail.write_etc(self.state / "etc")

    # -- plumbing ---------------------------------------------------------------------------------

    def app(self) -> Any:
        s = "/v2/sandboxes/sessions/{sid}"
        routes = [
            Route("/v3/sandboxes", self.create, methods=["POST"]),
            Route("/v2/sandboxes", self.list, methods=["GET"]),
            Route("/v2/sandboxes/sessions/{sid}", self.get_session, methods=["GET"]),
            Route(s + "/stop", self.stop_session, methods=["POST"]),
            Route(s + "/extend-timeout", self.extend, methods=["POST"]),
            Route(s + "/snapshot", self.snapshot, methods=["POST"]),
            Route(s + "/cmd", self.run_command, methods=["POST"]),
            Route(s + "/cmd", self.list_commands, methods=["GET"]),
            Route(s + "/cmd/{cid}", self.get_command, methods=["GET"]),
            Route(s + "/cmd/{cid}/kill", self.kill, methods=["POST"]),
            Route(s + "/cmd/{cid}/logs", self.logs, methods=["GET"]),
            Route(s + "/cmd/{cid}/stdin", self.stdin, methods=["POST"]),
            Route(s + "/fs/read", self.fs_read, methods=["POST"]),
            Route(s + "/fs/write", self.fs_write, methods=["POST"]),
            Route(s + "/fs/mkdir", self.fs_mkdir, methods=["POST"]),
            Route("/v2/sandboxes/snapshots/{snap}", self.get_snapshot, methods=["GET"]),
            Route("/v2/sandboxes/snapshots/{snap}", self.delete_snapshot, methods=["DELETE"]),
            Route("/v2/sandboxes/{name}", self.get, methods=["GET"]),
            Route("/v2/sandboxes/{name}", self.update, methods=["PATCH"]),
            Route("/v2/sandboxes/{name}", self.delete, methods=["DELETE"]),
            Route("/_fake/faults", self.add_fault, methods=["POST"]),
            Route("/_fake/requests", self.list_requests, methods=["GET"]),
            Route("/_fake/sandboxes", self.list_all, methods=["GET"]),
        ]
        inner = Starlette(routes=routes)

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            path, method = scope["path"], scope["method"]
            if not path.startswith("/_fake/"):
                self.requests.append((method, path))
                denied = self._auth(scope)
                if denied is not None:
                    await denied(scope, receive, send)
                    return
                fault = self._take_fault(method, path)
                if fault is not None:
                    if fault.after_effect:
                        await inner(scope, receive, _swallow)
                    await error(fault.status, fault.code, fault.message)(scope, receive, send)
                    return
            await inner(scope, receive, send)

        return app

    def _auth(self, scope: dict[str, Any]) -> Response | None:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if headers.get("authorization") != f"Bearer {self.token}":
            return error(401, "unauthorized", "Invalid or missing token")
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
        )
        if query.get("teamId") != self.team_id:
            return error(403, "forbidden", "Not authorized for this team")
        return None

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.method == method and path.startswith(fault.path):
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def _body(self, request: Request, model: type[_Req]) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return error(413, "payload_too_large", "Request body exceeds 1 MB")
        try:
            return model.model_validate(json.loads(raw) if raw else {})
        except (ValueError, ValidationError) as exc:
            return error(400, "bad_request", f"Invalid request: {exc}")

    def _project(self, request: Request, key: str = "projectId") -> Response | None:
        if request.query_params.get(key) != self.project_id:
            return error(404, "not_found", "Project not found")
        return None

    def _session(self, request: Request, *, running: bool = False) -> Session | Response:
        session = self.sessions.get(request.path_params["sid"])
        if session is None:
            return error(404, "not_found", "Session not found")
        if running and session.status != "running":
            return error(410, "sandbox_stopped", "Sandbox is stopped")
        return session

    def _command(self, request: Request) -> Command | Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        command = session.commands.get(request.path_params["cid"])
        if command is None:
            return error(404, "not_found", "Command not found")
        return command

    def _sandbox_answer(self, sb: Sandbox, **extra: Any) -> JSONResponse:
        body = {"sandbox": sb.payload(), "routes": sb.routes(), **extra}
        if sb.session is not None:
            body["session"] = sb.session.payload()
        return answer(sdk._SandboxResponse, body)

    # -- admin, for tests -------------------------------------------------------------------------

    async def add_fault(self, request: Request) -> Response:
        self.faults.append(Fault(**json.loads(await request.body())))
        return JSONResponse({})

    async def list_requests(self, request: Request) -> Response:
        return JSONResponse({"requests": self.requests})

    async def list_all(self, request: Request) -> Response:
        return JSONResponse(
            {
                name: {
                    "status": sb.session.status if sb.session else "stopped",
                    "tags": sb.tags,
                    "vcpus": sb.vcpus,
                    "memory": sb.memory,
                    "persistent": sb.persistent,
                    "timeout": sb.timeout_ms,
                    "networkPolicy": sb.network_policy,
                    "denyNetwork": sb.deny_network,
                    "ports": sb.ports,
                    "env": sb.env,
                    "image": sb.image,
                }
                for name, sb in self.sandboxes.items()
            }
        )

    # -- sandboxes --------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        body = await self._body(request, CreateSandbox)
        if isinstance(body, Response):
            return body
        if body.projectId != self.project_id:
            return error(404, "not_found", "Project not found")
        if body.tags is not None and len(body.tags) > MAX_TAGS:
            return error(400, "bad_request", f"At most {MAX_TAGS} tags are allowed")
        if body.ports is not None and (
            len(body.ports) > MAX_PORTS or any(not 1 <= p <= 65535 for p in body.ports)
        ):
            return error(400, "bad_request", f"At most {MAX_PORTS} ports in 1-65535")
        try:
            deny, policy = _policy(body.networkPolicy)
        except ValueError as exc:
            return error(400, "bad_request", str(exc))
        name = body.name or f"sandbox-{secrets.token_hex(8)}"
        if name in self.sandboxes:
            return error(409, "sandbox_already_exists", f"Sandbox {name} already exists")
        restore = None
        if body.source is not None:
            if body.source.type != "snapshot":
                return error(400, "bad_request", "only snapshot sources are supported here")
            snap = self.snapshots.get(body.source.snapshotId or "")
            if snap is None or snap["status"] != "created":
                return error(410, "snapshot_not_found", "Snapshot not found")
            restore = Path(snap["dir"])
        vcpus = (body.resources.vcpus if body.resources else None) or 2
        memory = (body.resources.memory if body.resources else None) or 2048 * vcpus
        if memory != 2048 * vcpus:
            return error(400, "bad_request", "memory must be 2048 MB per vCPU")
        sb = Sandbox(
            name=name,
            project_id=self.project_id,
            image=body.image or "vercel/sandbox/universal:latest",
            persistent=True if body.persistent is None else body.persistent,
            timeout_ms=body.timeout or 300_000,
            vcpus=vcpus,
            memory=memory,
            env=body.env or {},
            tags=body.tags,
            ports=body.ports or [],
            deny_network=deny,
            network_policy=policy,
            created_at=_now(),
            current_snapshot_id=body.source.snapshotId if body.source else None,
        )
        self.sandboxes[name] = sb
        self._start_session(sb, restore)
        return self._sandbox_answer(sb, resumed=False)

    def _start_session(self, sb: Sandbox, restore: Path | None) -> Session:
        sid = _id("sbx_se")
        root = self.state / "sessions" / sid
        if restore is not None:
            shutil.copytree(restore, root, symlinks=True)
        jail.prepare_root(root)
        session = Session(
            id=sid,
            sandbox=sb,
            root=root,
            timeout_ms=sb.timeout_ms,
            deny_network=sb.deny_network,
            network_policy=sb.network_policy,
            requested_at=_now(),
        )
        self.sessions[sid] = session
        sb.session = session
        return session

    async def _stop(self, session: Session, *, keep: bool) -> None:
        """Stop a session: kill its processes; keep its filesystem as the sandbox's snapshot."""
        if session.status != "running":
            return
        session.status = "stopping"
        await asyncio.to_thread(jail.kill_under, session.root)
        for command in session.commands.values():
            await _settle(command)
        if keep:
            snap = self._take_snapshot(session)
            session.sandbox.current_snapshot_id = snap["id"]
        session.status = "stopped"
        session.stopped_at = _now()

    def _take_snapshot(self, session: Session) -> dict[str, Any]:
        snap_id = _id("snap")
        target = self.state / "snapshots" / snap_id
        shutil.copytree(session.root, target, symlinks=True)
        snap = {
            "id": snap_id,
            "sourceSessionId": session.id,
            "region": "iad1",
            "status": "created",
            "sizeBytes": sum(p.stat().st_size for p in target.rglob("*") if p.is_file()),
            "createdAt": _now(),
            "updatedAt": _now(),
            "dir": str(target),
        }
        self.snapshots[snap_id] = snap
        return snap

    async def get(self, request: Request) -> Response:
        bad = self._project(request)
        if bad is not None:
            return bad
        sb = self.sandboxes.get(request.path_params["name"])
        if sb is None:
            return error(404, "not_found", "Sandbox not found")
        resumed = False
        if request.query_params.get("resume") == "true" and (
            sb.session is None or sb.session.status != "running"
        ):
            restore = None
            if sb.current_snapshot_id is not None:
                snap = self.snapshots.get(sb.current_snapshot_id)
                if snap is None or snap["status"] != "created":
                    return error(410, "snapshot_not_found", "Snapshot not found")
                restore = Path(snap["dir"])
            self._start_session(sb, restore)
            resumed = True
        return self._sandbox_answer(sb, resumed=resumed)

    async def list(self, request: Request) -> Response:
        bad = self._project(request, "project")
        if bad is not None:
            return bad
        found = sorted(self.sandboxes.values(), key=lambda s: s.created_at, reverse=True)
        tag = request.query_params.get("tags")
        if tag:
            key, _, value = tag.partition(":")
            found = [s for s in found if (s.tags or {}).get(key) == value]
        start = int(request.query_params.get("cursor") or 0)
        limit = int(request.query_params.get("limit") or 10)
        page = found[start : start + limit]
        more = start + limit < len(found)
        body = {
            "sandboxes": [s.payload() for s in page],
            "pagination": {"count": len(page), "next": str(start + limit) if more else None},
        }
        return answer(sdk._SandboxesResponse, body)

    async def update(self, request: Request) -> Response:
        bad = self._project(request)
        if bad is not None:
            return bad
        sb = self.sandboxes.get(request.path_params["name"])
        if sb is None:
            return error(404, "not_found", "Sandbox not found")
        body = await self._body(request, UpdateSandbox)
        if isinstance(body, Response):
            return body
        if body.ports is not None:
            if len(body.ports) > MAX_PORTS:
                return error(400, "bad_request", f"At most {MAX_PORTS} ports")
            sb.ports = body.ports
        if body.tags is not None:
            if len(body.tags) > MAX_TAGS:
                return error(400, "bad_request", f"At most {MAX_TAGS} tags are allowed")
            sb.tags = body.tags
        if body.timeout is not None:
            sb.timeout_ms = body.timeout
        if body.currentSnapshotId is not None:
            sb.current_snapshot_id = body.currentSnapshotId
        return answer(sdk._SandboxResponse, {"sandbox": sb.payload(), "routes": sb.routes()})

    async def delete(self, request: Request) -> Response:
        bad = self._project(request)
        if bad is not None:
            return bad
        sb = self.sandboxes.pop(request.path_params["name"], None)
        if sb is None:
            return error(404, "not_found", "Sandbox not found")
        if sb.session is not None:
            await self._stop(sb.session, keep=False)
        return self._sandbox_answer(sb)

    # -- sessions ---------------------------------------------------------------------------------

    async def get_session(self, request: Request) -> Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        return answer(
            sdk._RuntimeSessionResponse,
            {"session": session.payload(), "routes": session.sandbox.routes()},
        )

    async def stop_session(self, request: Request) -> Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        await self._stop(session, keep=session.sandbox.persistent)
        body = {"session": session.payload(), "sandbox": session.sandbox.payload()}
        return answer(sdk._RuntimeSessionResponse, body)

    async def extend(self, request: Request) -> Response:
        session = self._session(request, running=True)
        if isinstance(session, Response):
            return session
        body = await self._body(request, Extend)
        if isinstance(body, Response):
            return body
        session.timeout_ms += body.duration
        return answer(sdk._RuntimeSessionResponse, {"session": session.payload()})

    async def snapshot(self, request: Request) -> Response:
        session = self._session(request, running=True)
        if isinstance(session, Response):
            return session
        body = await self._body(request, SnapshotBody)
        if isinstance(body, Response):
            return body
        session.status = "snapshotting"
        await asyncio.to_thread(jail.kill_under, session.root)
        for command in session.commands.values():
            await _settle(command)
        snap = self._take_snapshot(session)
        session.sandbox.current_snapshot_id = snap["id"]
        session.status = "stopped"
        session.stopped_at = _now()
        shown = {k: v for k, v in snap.items() if k != "dir"}
        return answer(
            sdk._CreateSnapshotResponse, {"snapshot": shown, "session": session.payload()}
        )

    async def get_snapshot(self, request: Request) -> Response:
        snap = self.snapshots.get(request.path_params["snap"])
        if snap is None:
            return error(404, "not_found", "Snapshot not found")
        shown = {k: v for k, v in snap.items() if k != "dir"}
        return answer(sdk._SnapshotResponse, {"snapshot": shown})

    async def delete_snapshot(self, request: Request) -> Response:
        snap = self.snapshots.get(request.path_params["snap"])
        if snap is None:
            return error(404, "not_found", "Snapshot not found")
        snap["status"] = "deleted"  # soft delete: still listed, never restorable
        snap["updatedAt"] = _now()
        shutil.rmtree(snap["dir"], ignore_errors=True)
        shown = {k: v for k, v in snap.items() if k != "dir"}
        return answer(sdk._SnapshotResponse, {"snapshot": shown})

    async def reap(self) -> None:
        """Stop sessions whose timeout ran out, as the service does."""
        while True:
            await asyncio.sleep(0.2)
            now = _now()
            for session in list(self.sessions.values()):
                if session.status == "running" and session.requested_at + session.timeout_ms <= now:
                    await self._stop(session, keep=session.sandbox.persistent)

    # -- commands ---------------------------------------------------------------------------------

    def _jail(self, session: Session, sudo: bool, cwd: str) -> jail.Jail:
        user = jail.ROOT if sudo else jail.UBUNTU
        return jail.Jail(session.root, user, cwd, deny_network=session.deny_network, etc=self.etc)

    def _env(self, session: Session, sudo: bool, extra: dict[str, str] | None) -> dict[str, str]:
        user = jail.ROOT if sudo else jail.UBUNTU
        env = {"PATH": PATH, "HOME": user.home, "USER": user.name, "LANG": "C.UTF-8"}
        if sudo:
            env["SUDO_USER"] = jail.UBUNTU.name
        return {**env, **session.sandbox.env, **(extra or {})}

    async def run_command(self, request: Request) -> Response:
        session = self._session(request, running=True)
        if isinstance(session, Response):
            return session
        body = await self._body(request, RunCommand)
        if isinstance(body, Response):
            return body
        cwd = body.cwd or jail.WORKDIR
        if not cwd.startswith("/"):
            cwd = posixpath.normpath(posixpath.join(jail.WORKDIR, cwd))
        command = Command(
            id=_id("cmd"),
            session=session,
            name=body.command,
            args=list(body.args or []),
            cwd=cwd,
            started_at=_now(),
        )
        session.commands[command.id] = command
        await self._spawn(command, body)
        wait = body.wait or request.query_params.get("wait") == "true"
        if not wait:
            return answer(sdk._CommandResponse, {"command": command.payload()})
        logs = body.logs or request.query_params.get("logs") == "true"

        async def stream() -> AsyncIterator[bytes]:
            yield _line({"command": command.payload()})
            if logs:
                async for stream_name, data in _follow(command):
                    yield _line({"stream": stream_name, "data": data})
            await command.ended.wait()
            yield _line({"command": command.payload()})

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def _spawn(self, command: Command, body: RunCommand) -> None:
        session = command.session
        box = self._jail(session, bool(body.sudo), command.cwd)
        stdin_r = stdin_w = None
        if body.attachStdin:
            stdin_r, stdin_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                command.name,
                *command.args,
                stdin=stdin_r if stdin_r is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(session, bool(body.sudo), body.env),
                preexec_fn=box.preexec,
                start_new_session=True,
                executable=None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if stdin_w is not None:
                os.close(stdin_w)
            command.add("stderr", f"{command.name}: {exc}\n")
            missing = isinstance(exc, FileNotFoundError)
            command.exit_code = 127 if missing else 126
            command.ended.set()
            command.changed.set()
            return
        finally:
            if stdin_r is not None:
                os.close(stdin_r)
        command.proc = proc
        command.stdin_fd = stdin_w
        tasks = [
            asyncio.create_task(_pump(command, "stdout", proc.stdout)),
            asyncio.create_task(_pump(command, "stderr", proc.stderr)),
        ]
        if body.timeout:
            asyncio.get_running_loop().call_later(body.timeout / 1000, _sigkill, proc)

        async def finish() -> None:
            await asyncio.gather(*tasks)
            code = await proc.wait()
            command.exit_code = 128 - code if code < 0 else code
            _close_stdin(command)
            command.ended.set()
            command.changed.set()

        command.finisher = asyncio.create_task(finish())

    async def list_commands(self, request: Request) -> Response:
        session = self._session(request)
        if isinstance(session, Response):
            return session
        body = {"commands": [c.payload() for c in session.commands.values()]}
        return answer(sdk._CommandsResponse, body)

    async def get_command(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        if request.query_params.get("wait") == "true":
            await command.ended.wait()
        return answer(sdk._CommandResponse, {"command": command.payload()})

    async def kill(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        body = await self._body(request, Kill)
        if isinstance(body, Response):
            return body
        if command.proc is not None and command.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(command.proc.pid, body.signal)
        return answer(sdk._CommandResponse, {"command": command.payload()})

    async def logs(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command

        async def stream() -> AsyncIterator[bytes]:
            async for stream_name, data in _follow(command):
                yield _line({"stream": stream_name, "data": data})

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def stdin(self, request: Request) -> Response:
        command = self._command(request)
        if isinstance(command, Response):
            return command
        body = await self._body(request, Stdin)
        if isinstance(body, Response):
            return body
        if command.exit_code is not None:
            return error(404, "not_found", "Command has exited")
        if command.stdin_fd is None and not command.stdin_closed:
            return error(400, "command_stdin_unavailable", "Command has no stdin attached")
        async with command.stdin_lock:
            data = base64.b64decode(body.data) if body.data else b""
            if data or body.close:
                offset = command.stdin_written if body.offset is None else body.offset
                if offset > command.stdin_written:
                    return error(400, "bad_request", "offset is past the bytes written")
                data = data[command.stdin_written - offset :]
            if data:
                if command.stdin_closed:
                    return error(400, "command_stdin_unavailable", "stdin is closed")
                try:
                    await asyncio.to_thread(_write_all, command.stdin_fd, data)
                except OSError:
                    _close_stdin(command)
                    return error(400, "command_stdin_unavailable", "Command stopped reading")
                command.stdin_written += len(data)
            if body.close:
                _close_stdin(command)
        return answer(
            sdk._CommandStdinResponse,
            {"command": command.payload(), "bytesWritten": command.stdin_written},
        )

    # -- files --------------------------------------------------------------------------------

    async def _run_as_user(
        self, session: Session, argv: list[str], stdin: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        box = self._jail(session, False, "/")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": PATH, "HOME": jail.UBUNTU.home, "LANG": "C.UTF-8"},
            preexec_fn=box.preexec,
        )
        out, err = await proc.communicate(stdin)
        return await proc.wait(), out, err

    def _fs_path(self, body: FsPath) -> str:
        return posixpath.normpath(posixpath.join(body.cwd or jail.WORKDIR, body.path))

    async def fs_read(self, request: Request) -> Response:
        session = self._session(request, running=True)
        if isinstance(session, Response):
            return session
        body = await self._body(request, FsPath)
        if isinstance(body, Response):
            return body
        code, out, err = await self._run_as_user(session, ["cat", "--", self._fs_path(body)])
        if code == 0:
            return Response(out, media_type="application/octet-stream")
        message = err.decode(errors="replace").strip()
        if "No such file" in message:
            return Response(status_code=404)
        if "Permission denied" in message:
            return error(403, "forbidden", message)
        if "Is a directory" in message:
            return error(400, "bad_request", message)
        return error(500, "internal_error", message)

    async def fs_write(self, request: Request) -> Response:
        session = self._session(request, running=True)
        if isinstance(session, Response):
            return session
        if request.headers.get("content-type") != "application/gzip":
            return error(400, "bad_request", "expected an application/gzip tar archive")
        base = request.headers.get("x-cwd") or jail.WORKDIR
        archive = await request.body()
        code, _, err = await self._run_as_user(
            session, ["tar", "-xzmf", "-", "-C", base, "--no-same-owner"], stdin=archive
        )
        if code != 0:
            message = err.decode(errors="replace").strip()
            status = 403 if "Permission denied" in message else 400
            return error(status, "forbidden" if status == 403 else "bad_request", message)
        return JSONResponse({})

    async def fs_mkdir(self, request: Request) -> Response:
        session = self._session(request, running=True)
        if isinstance(session, Response):
            return session
        body = await self._body(request, Mkdir)
        if isinstance(body, Response):
            return body
        argv = ["mkdir", *(["-p"] if body.recursive else []), "--", self._fs_path(body)]
        code, _, err = await self._run_as_user(session, argv)
        if code != 0:
            message = err.decode(errors="replace").strip()
            if "No such file" in message:
                return error(404, "path_not_found", message)
            if "Permission denied" in message:
                return error(403, "forbidden", message)
            return error(400, "bad_request", message)
        return JSONResponse({})

    async def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await self._stop(session, keep=False)
        await asyncio.to_thread(jail.kill_under, self.state)
        shutil.rmtree(self.state, ignore_errors=True)


async def _swallow(message: dict[str, Any]) -> None:
    return None


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


async def _pump(command: Command, stream: str, reader: asyncio.StreamReader | None) -> None:
    assert reader is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := await reader.read(CHUNK):
        command.add(stream, decoder.decode(chunk))
    command.add(stream, decoder.decode(b"", final=True))


async def _follow(command: Command) -> AsyncIterator[tuple[str, str]]:
    """A command's records from the first, then live ones until it has ended."""
    sent = 0
    while True:
        changed = command.changed
        while sent < len(command.records):
            yield command.records[sent]
            sent += 1
        if command.ended.is_set():
            return
        await changed.wait()


async def _settle(command: Command) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(command.ended.wait(), 10)


def _sigkill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)


def _close_stdin(command: Command) -> None:
    if command.stdin_fd is not None:
        with contextlib.suppress(OSError):
            os.close(command.stdin_fd)
        command.stdin_fd = None
    command.stdin_closed = True


def _write_all(fd: int | None, data: bytes) -> None:
    if fd is None:
        raise OSError("stdin closed")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> None:
    """Serve until SIGTERM; print ``READY <url>`` once listening."""
    token, team, project = sys.argv[1:4]
    fake = FakeVercel(token, team, project)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        fake.app(),
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        reaper = asyncio.create_task(fake.reap())
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: print(f"READY http://127.0.0.1:{port}", flush=True))
        try:
            await server.serve(sockets=[sock])
        finally:
            reaper.cancel()
            await fake.shutdown()

    # uvicorn re-raises the SIGTERM it caught once serving ends: let that be a no-op, so the
    # cleanup above (kill every session's processes, remove the state) runs.
    signal.signal(signal.SIGTERM, lambda *_: None)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
