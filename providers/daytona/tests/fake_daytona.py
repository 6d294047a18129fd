"""A local fake of Daytona's wire protocol, served on 127.0.0.1 for the real ``daytona`` SDK.

Two HTTP surfaces, as the vendor has them:

* the REST API under ``/api`` (``DAYTONA_API_URL``): sandboxes, labels, preview links, snapshots;
* the toolbox API under ``/toolbox/{sandboxId}`` (the ``toolboxProxyUrl`` every sandbox record
  carries): process sessions with WebSocket log streaming, ``/process/execute``, and files.

Request bodies are parsed with the SDK's own generated pydantic models and every response is built
from them (``Model(...).to_json()``), so a wrong field name, a missing required field or a bad type
fails here the way it fails against Daytona. Unknown request properties are rejected with 400.

Each fake sandbox is a temp directory; commands run as real processes under bubblewrap with that
directory bound at ``/home/daytona`` and a private ``/tmp`` (read-only system, private pid and user
namespaces, no network when ``networkBlockAll``). Deleting a session kills its process groups.
Faults can be injected per route with :meth:`FakeDaytona.fail`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import re
import secrets
import shutil
import signal
import tempfile
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from daytona_api_client_async.models import (
    CreateSandbox,
    CreateSandboxSnapshot,
    ListSandboxesResponse,
    PortPreviewUrl,
    SandboxListItem,
    SignedPortPreviewUrl,
    ToolboxProxyUrl,
)
from daytona_api_client_async.models import (
    Sandbox as SandboxDto,
)
from daytona_toolbox_api_client_async.models import (
    Command as CommandDto,
)
from daytona_toolbox_api_client_async.models import (
    CreateSessionRequest,
    ErrorResponse,
    ExecuteRequest,
    ExecuteResponse,
    FilesDownloadRequest,
    SessionCommandLogsResponse,
    SessionExecuteRequest,
    SessionExecuteResponse,
    WorkDirResponse,
)
from daytona_toolbox_api_client_async.models import (
    Session as SessionDto,
)

STDOUT_PREFIX = b"\x01\x01\x01"
STDERR_PREFIX = b"\x02\x02\x02"
HOME = "/home/daytona"
ORG = "00000000-0000-4000-8000-00000000f4ce"
RO_SYSTEM = ("/usr", "/etc", "/bin", "/lib", "/lib64", "/sbin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    """A JSON response from a model's ``to_json()`` text or a plain object."""
    text = data if isinstance(data, str) else json.dumps(data)
    return web.Response(text=text, status=status, content_type="application/json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def api_error(status: int, message: str) -> web.Response:
    """An error in the REST API's (NestJS) envelope."""
    names = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        409: "Conflict",
        429: "Too Many Requests",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    body = {"statusCode": status, "message": message, "error": names.get(status, "Error")}
    return _json(body, status=status)


def daemon_error(request: web.Request, status: int, message: str, code: str) -> web.Response:
    """An error in the toolbox daemon's envelope (the SDK's ``ErrorResponse`` model)."""
    body = ErrorResponse(
        code=code,
        message=message,
        method=request.method,
        path=request.path,
        source="DAYTONA_DAEMON",
        status_code=status,
        timestamp=_now(),
    ).to_json()
    return _json(body, status=status)


class BadRequest(Exception):
    """Raised while parsing a request; becomes a 400."""


def parse(model: Any, data: Any) -> Any:
    """Validate ``data`` with a generated model; unknown properties are a 400 like the vendor's."""
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        obj = model.from_dict(data)
    except Exception as exc:  # pydantic.ValidationError and friends
        raise BadRequest(f"invalid request body: {exc}") from exc
    extra = getattr(obj, "additional_properties", {})
    if extra:
        raise BadRequest(f"property {sorted(extra)[0]} should not exist")
    return obj


# -- processes --------------------------------------------------------------------------------


def split_log(data: bytes) -> list[tuple[str, bytes]]:
    """A log file's content as (stream, bytes) pieces, following its 3-byte markers."""
    pieces: list[tuple[str, bytes]] = []
    for part in re.split(b"(\x01\x01\x01|\x02\x02\x02)", data):
        if part == STDOUT_PREFIX:
            pieces.append(("stdout", b""))
        elif part == STDERR_PREFIX:
            pieces.append(("stderr", b""))
        elif pieces:
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + part)
    return pieces


@dataclass
class Proc:
    """One command run: a real process, its output log and its exit code.

    Like the daemon, output goes to a log file on disk, each chunk tagged with the 3-byte marker
    of its stream; followers tail the file. Nothing of it is held in memory.
    """

    id: str
    command: str
    process: asyncio.subprocess.Process
    log_path: Path
    size: int = 0
    exit_code: int | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def _pump(self, kind: str, stream: asyncio.StreamReader, log: Any) -> None:
        prefix = STDOUT_PREFIX if kind == "stdout" else STDERR_PREFIX
        while chunk := await stream.read(65536):
            log.write(prefix + chunk)
            async with self.changed:
                self.size += len(prefix) + len(chunk)
                self.changed.notify_all()

    async def run(self) -> None:
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        with open(self.log_path, "ab", buffering=0) as log:  # noqa: ASYNC230 - test fake
            await asyncio.gather(
                self._pump("stdout", self.process.stdout, log),
                self._pump("stderr", self.process.stderr, log),
            )
        code = await self.process.wait()
        async with self.changed:
            # A shell reports death by signal N as 128+N; so does the daemon.
            self.exit_code = 128 - code if code < 0 else code
            self.done.set()
            self.changed.notify_all()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def joined(self, kind: str | None = None) -> bytes:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return b""
        return b"".join(d for k, d in split_log(data) if kind is None or k == kind)


@dataclass
class FakeSandbox:
    """Server-side state of one sandbox."""

    dto: dict[str, Any]
    root: Path
    sessions: dict[str, dict[str, Proc]] = field(default_factory=dict)
    detached: list[Proc] = field(default_factory=list)
    """Commands of deleted sessions left running (see ``FakeDaytona.delete_kills_commands``)."""
    paused: bool = False

    @property
    def id(self) -> str:
        return str(self.dto["id"])

    def all_procs(self) -> list[Proc]:
        return [*self.detached, *(p for cmds in self.sessions.values() for p in cmds.values())]

    def host_path(self, path: str, *, write: bool) -> Path | None:
        """Map a path inside the sandbox to the host; ``None`` when it is outside what the
        sandbox may write (or, for reads, outside anything it can see)."""
        norm = posixpath.normpath(path if path.startswith("/") else posixpath.join(HOME, path))
        for inside, outside in ((HOME, self.root / "home"), ("/tmp", self.root / "tmp")):
            if norm == inside or norm.startswith(inside + "/"):
                return outside / posixpath.relpath(norm, inside)
        if not write and any(norm == p or norm.startswith(p + "/") for p in RO_SYSTEM):
            return Path(norm)
        return None


def _bwrap_argv(sb: FakeSandbox, command: str) -> list[str]:
    argv = ["bwrap", "--tmpfs", "/", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{name}"):
            argv += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
        elif os.path.isdir(f"/{name}"):
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
    argv += [
        "--ro-bind", "/etc", "/etc",
        "--bind", str(sb.root / "home"), HOME,
        "--bind", str(sb.root / "tmp"), "/tmp",
        "--proc", "/proc", "--dev", "/dev",
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--uid", "1000", "--gid", "1000", "--hostname", "daytona",
        "--die-with-parent", "--chdir", HOME,
    ]  # fmt: skip
    if sb.dto.get("networkBlockAll"):
        argv.append("--unshare-net")
    return [*argv, "--", "/bin/sh", "-c", command]


# -- the server -------------------------------------------------------------------------------


class FakeDaytona:
    """The fake control plane and toolbox. ``async with FakeDaytona() as fake: fake.api_url``."""

    def __init__(self, api_key: str = "fake-daytona-key") -> None:
        self.api_key = api_key
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.snapshots: dict[str, Path] = {}
        self.requests: list[tuple[str, str]] = []
        self.created_bodies: list[dict[str, Any]] = []
        self._faults: list[dict[str, Any]] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-daytona-"))
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""
        self._signed: dict[str, tuple[str, int, float]] = {}
        self.delete_kills_commands = True
        """False models older daemons, whose session deletion kills only the session's shell
        and leaves the commands it started running."""

    # lifecycle

    async def __aenter__(self) -> FakeDaytona:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        r = app.router
        r.add_post("/api/sandbox", self.create_sandbox)
        r.add_get("/api/sandbox", self.list_sandboxes)
        r.add_get("/api/sandbox/{id}", self.get_sandbox)
        r.add_delete("/api/sandbox/{id}", self.delete_sandbox)
        r.add_get("/api/sandbox/{id}/toolbox-proxy-url", self.toolbox_proxy_url)
        r.add_get("/api/sandbox/{id}/ports/{port}/preview-url", self.preview_url)
        r.add_get("/api/sandbox/{id}/ports/{port}/signed-preview-url", self.signed_preview_url)
        r.add_post("/api/sandbox/{id}/snapshot", self.create_snapshot)
        r.add_post("/api/sandbox/{id}/pause", self.pause_sandbox)
        r.add_post("/api/sandbox/{id}/start", self.start_sandbox)
        t = "/toolbox/{sid}"
        r.add_post(t + "/process/execute", self.execute)
        r.add_post(t + "/process/session", self.create_session)
        r.add_get(t + "/process/session/{session}", self.get_session)
        r.add_delete(t + "/process/session/{session}", self.delete_session)
        r.add_post(t + "/process/session/{session}/exec", self.session_exec)
        r.add_get(t + "/process/session/{session}/command/{cmd}", self.get_command)
        r.add_get(t + "/process/session/{session}/command/{cmd}/logs", self.command_logs)
        r.add_post(t + "/process/session/{session}/command/{cmd}/input", self.send_input)
        r.add_post(t + "/files/bulk-upload", self.bulk_upload)
        r.add_post(t + "/files/bulk-download", self.bulk_download)
        r.add_post(t + "/files/folder", self.create_folder)
        r.add_delete(t + "/files", self.delete_file)
        r.add_post(t + "/files/permissions", self.set_permissions)
        r.add_get(t + "/work-dir", self.work_dir)
        r.add_get(t + "/user-home-dir", self.work_dir)
        r.add_route("*", "/preview/{id}/{port}/{tail:.*}", self.preview_proxy)
        r.add_route("*", "/signed/{token}/{tail:.*}", self.signed_proxy)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for sb in list(self.sandboxes.values()):
            self._destroy(sb)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def api_url(self) -> str:
        """What ``DAYTONA_API_URL`` should be."""
        return self.base_url + "/api"

    # fault injection

    def fail(
        self,
        method: str,
        path_pattern: str,
        status: int,
        *,
        times: int = 1,
        message: str = "injected failure",
        after: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and the ``path_pattern`` regex
        with ``status``. With ``after``, the request is first handled (e.g. the sandbox is
        created) and only the answer is replaced, as when a reply is lost."""
        self._faults.append({"method": method, "re": re.compile(path_pattern), "status": status,
                             "times": times, "message": message, "after": after,
                             "headers": headers or {}})  # fmt: skip

    def _take_fault(self, request: web.Request) -> dict[str, Any] | None:
        for fault in self._faults:
            if fault["method"] == request.method and fault["re"].search(request.path):
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.path.startswith("/api/socket.io"):
            # No notification gateway here: the SDK falls back to polling, as it documents.
            return api_error(404, "Cannot GET " + request.path)
        if not request.path.startswith(("/preview/", "/signed/")):
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {self.api_key}":
                if request.path.startswith("/toolbox/"):
                    return daemon_error(request, 401, "unauthorized", "UNAUTHORIZED")
                return api_error(401, "Unauthorized")
        fault = self._take_fault(request)
        if fault is not None and not fault["after"]:
            resp = api_error(fault["status"], fault["message"])
            resp.headers.update(fault["headers"])
            return resp
        try:
            response = await handler(request)
        except BadRequest as exc:
            if request.path.startswith("/toolbox/"):
                return daemon_error(request, 400, str(exc), "INVALID_REQUEST_BODY")
            return api_error(400, str(exc))
        if fault is not None:
            return api_error(fault["status"], fault["message"])
        return response

    # REST API: sandboxes

    def _lookup(self, request: web.Request, key: str = "id") -> FakeSandbox | None:
        ident = request.match_info[key]
        sb = self.sandboxes.get(ident)
        if sb is None:
            sb = next((s for s in self.sandboxes.values() if s.dto["name"] == ident), None)
        return sb

    def _not_found(self, request: web.Request, key: str = "id") -> web.Response:
        return api_error(404, f"Sandbox with ID or name {request.match_info[key]} not found")

    async def create_sandbox(self, request: web.Request) -> web.Response:
        raw = await request.json()
        body: CreateSandbox = parse(CreateSandbox, raw)
        self.created_bodies.append(raw)
        if body.snapshot and body.build_info:
            raise BadRequest("Cannot specify both snapshot and buildInfo")
        if body.snapshot and any(v is not None for v in (body.cpu, body.memory, body.disk)):
            raise BadRequest("Cannot specify Sandbox resources when using a snapshot")
        if body.snapshot and body.snapshot not in self.snapshots:
            return api_error(404, f"Snapshot {body.snapshot} not found")
        name = body.name or None
        if name and any(s.dto["name"] == name for s in self.sandboxes.values()):
            return api_error(409, f"Sandbox with name {name} already exists")
        if body.network_allow_list:
            for cidr in body.network_allow_list.split(","):
                if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", cidr.strip()):
                    raise BadRequest(f"Invalid CIDR in networkAllowList: {cidr}")
        image = None
        if body.build_info is not None:
            match = re.search(r"^FROM\s+(\S+)", body.build_info.dockerfile_content, re.M)
            if match is None:
                raise BadRequest("dockerfileContent must start with FROM")
            image = match.group(1)
        sid = str(uuid.uuid4())
        root = self._tmp / sid
        (root / "tmp").mkdir(parents=True)
        (root / "logs").mkdir()
        if body.snapshot:
            shutil.copytree(self.snapshots[body.snapshot], root / "home", symlinks=True)
        else:
            (root / "home").mkdir()
        now = _now()
        ttl = body.ttl_minutes or 0
        dto = SandboxDto(
            id=sid,
            organization_id=ORG,
            name=name or sid,
            snapshot=body.snapshot or (None if image else "daytonaio/sandbox:0.5.0"),
            user=body.user or "daytona",
            env=body.env or {},
            labels=body.labels or {},
            public=bool(body.public),
            network_block_all=bool(body.network_block_all),
            kvm=False,
            network_allow_list=body.network_allow_list,
            domain_allow_list=body.domain_allow_list,
            target=body.target or "us",
            cpu=body.cpu or 1,
            gpu=body.gpu or 0,
            memory=body.memory or 1,
            disk=body.disk or 3,
            state="started",
            desired_state="started",
            auto_stop_interval=15 if body.auto_stop_interval is None else body.auto_stop_interval,
            auto_archive_interval=body.auto_archive_interval or 10080,
            auto_delete_interval=-1 if body.auto_delete_interval is None else body.auto_delete_interval,
            auto_destroy_at=(
                datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() + ttl * 60,
                                       timezone.utc).isoformat().replace("+00:00", "Z")
                if ttl else None
            ),
            created_at=now,
            updated_at=now,
            last_activity_at=now,
            daemon_version="0.226.1-fake",
            toolbox_proxy_url=self.base_url + "/toolbox",
        ).to_json()  # fmt: skip
        dto = json.loads(dto)
        if image:
            digest = uuid.uuid5(uuid.NAMESPACE_URL, body.build_info.dockerfile_content).hex
            dto["buildInfo"] = {"dockerfileContent": body.build_info.dockerfile_content,
                                "createdAt": now, "updatedAt": now,
                                "snapshotRef": f"registry.local/daytona/{digest}:daytona"}  # fmt: skip
        self.sandboxes[sid] = FakeSandbox(dto=dto, root=root)
        if ttl:  # Daytona destroys the sandbox when its TTL elapses, whatever its state
            asyncio.get_running_loop().call_later(ttl * 60, self._expire, sid)
        return _json(self._full(self.sandboxes[sid]))

    def _full(self, sb: FakeSandbox) -> str:
        dto = SandboxDto.from_dict({k: v for k, v in sb.dto.items() if not k.startswith("_")})
        assert dto is not None
        # Nothing outside Daytona's published model goes out.
        assert not dto.additional_properties
        assert dto.build_info is None or not dto.build_info.additional_properties
        return dto.to_json()

    async def get_sandbox(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        return _json(self._full(sb))

    async def list_sandboxes(self, request: web.Request) -> web.Response:
        wanted: dict[str, str] = {}
        if "labels" in request.query:
            try:
                wanted = json.loads(request.query["labels"])
            except json.JSONDecodeError as exc:
                raise BadRequest("labels must be a JSON object") from exc
            if not isinstance(wanted, dict):
                raise BadRequest("labels must be a JSON object")
        limit = int(request.query.get("limit", "100"))
        start = int(request.query.get("cursor", "0") or "0")
        keys = set(SandboxListItem.model_fields)  # build list items from the full records
        matching = [
            sb for sb in self.sandboxes.values()
            if all(sb.dto["labels"].get(k) == v for k, v in wanted.items())
        ]  # fmt: skip
        page = matching[start : start + limit]
        items = []
        for sb in page:
            full = SandboxDto.from_dict(sb.dto)
            assert full is not None
            values = {k: getattr(full, k) for k in keys if k != "additional_properties"}
            values["sandbox_class"] = "small"
            items.append(SandboxListItem(**values))
        nxt = str(start + limit) if start + limit < len(matching) else None
        return _json(ListSandboxesResponse(items=items, next_cursor=nxt).to_json())

    def _expire(self, sid: str) -> None:
        if sid in self.sandboxes:
            self._destroy(self.sandboxes[sid])

    def _destroy(self, sb: FakeSandbox) -> None:
        for proc in sb.all_procs():
            proc.kill()
        self.sandboxes.pop(sb.id, None)
        shutil.rmtree(sb.root, ignore_errors=True)

    async def delete_sandbox(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        self._destroy(sb)
        sb.dto.update(state="destroyed", desiredState="destroyed")
        return _json(self._full(sb))

    async def toolbox_proxy_url(self, request: web.Request) -> web.Response:
        if self._lookup(request) is None:
            return self._not_found(request)
        return _json(ToolboxProxyUrl(url=self.base_url + "/toolbox").to_json())

    async def preview_url(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        port = int(request.match_info["port"])
        if not 1 <= port <= 65535:
            raise BadRequest("Invalid port")
        token = sb.dto.setdefault("_previewToken", secrets.token_urlsafe(16))
        url = f"{self.base_url}/preview/{sb.id}/{port}/"
        return _json(PortPreviewUrl(sandbox_id=sb.id, url=url, token=token).to_json())

    async def signed_preview_url(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        port = int(request.match_info["port"])
        if not 1 <= port <= 65535:
            raise BadRequest("Invalid port")
        expires = int(request.query.get("expiresInSeconds", "60"))
        if not 1 <= expires <= 86400:
            raise BadRequest("expiresInSeconds must be between 1 and 86400")
        token = secrets.token_urlsafe(16)
        self._signed[token] = (sb.id, port, asyncio.get_running_loop().time() + expires)
        url = f"{self.base_url}/signed/{token}/"
        dto = SignedPortPreviewUrl(sandbox_id=sb.id, port=port, token=token, url=url)
        return _json(dto.to_json())

    async def signed_proxy(self, request: web.Request) -> web.StreamResponse:
        sid, port, until = self._signed.get(request.match_info["token"], ("", 0, 0.0))
        if sid not in self.sandboxes or asyncio.get_running_loop().time() > until:
            return api_error(401, "Unauthorized")
        return await self._forward(request, port)

    async def preview_proxy(self, request: web.Request) -> web.StreamResponse:
        """Forward a preview request to the port inside the sandbox (its loopback is the host's
        in this fake), checking the preview token as Daytona's proxy does."""
        sb = self._lookup(request)
        if sb is None:
            return api_error(404, "sandbox not found")
        token = request.headers.get("X-Daytona-Preview-Token")
        if not sb.dto["public"] and token != sb.dto.get("_previewToken"):
            return api_error(401, "Unauthorized")
        return await self._forward(request, int(request.match_info["port"]))

    async def _forward(self, request: web.Request, port: int) -> web.StreamResponse:
        import aiohttp

        target = f"http://127.0.0.1:{port}/{request.match_info['tail']}"
        async with aiohttp.ClientSession() as client:
            try:
                async with client.request(request.method, target, data=await request.read()) as up:
                    return web.Response(status=up.status, body=await up.read(),
                                        content_type=up.content_type)  # fmt: skip
            except aiohttp.ClientError:
                return api_error(502, f"nothing listens on port {port}")

    async def create_snapshot(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        body: CreateSandboxSnapshot = parse(CreateSandboxSnapshot, await request.json())
        if body.name in self.snapshots:
            return api_error(409, f"Snapshot {body.name} already exists")
        dest = self._tmp / "snapshots" / body.name
        shutil.copytree(sb.root / "home", dest, symlinks=True)
        self.snapshots[body.name] = dest
        return _json(self._full(sb))

    async def pause_sandbox(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        for proc in sb.all_procs():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.process.pid, signal.SIGSTOP)
        sb.paused = True
        sb.dto.update(state="paused", desiredState="paused")
        return _json(self._full(sb))

    async def start_sandbox(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        for proc in sb.all_procs():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.process.pid, signal.SIGCONT)
        sb.paused = False
        sb.dto.update(state="started", desiredState="started")
        return _json(self._full(sb))

    # toolbox: processes

    def _toolbox_sandbox(self, request: web.Request) -> FakeSandbox | web.Response:
        sb = self.sandboxes.get(request.match_info["sid"])
        if sb is None:
            return api_error(404, "sandbox not found")  # the proxy answers, not the daemon
        if sb.paused:
            return api_error(409, "sandbox is not started")
        return sb

    async def _spawn(self, sb: FakeSandbox, command: str, extra_env: dict[str, str]) -> Proc:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": HOME, "USER": "daytona", "LANG": "C.UTF-8",
               **sb.dto["env"], **extra_env}  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *_bwrap_argv(sb, command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        pid = str(uuid.uuid4())
        proc = Proc(id=pid, command=command, process=process, log_path=sb.root / "logs" / pid)
        task = asyncio.ensure_future(proc.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return proc

    async def execute(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        body: ExecuteRequest = parse(ExecuteRequest, await request.json())
        command = body.command if not body.cwd else f"cd {_sh_quote(body.cwd)} && {body.command}"
        proc = await self._spawn(sb, command, body.envs or {})
        assert proc.process.stdin is not None
        proc.process.stdin.close()
        try:
            await asyncio.wait_for(proc.done.wait(), body.timeout or 10)
        except TimeoutError:
            proc.kill()
            return daemon_error(
                request, 408, "command execution timeout", "PROCESS_EXECUTION_TIMEOUT"
            )
        merged = proc.joined().decode("utf-8", errors="replace")
        return _json(ExecuteResponse(exit_code=proc.exit_code, result=merged).to_json())

    def _session(self, request: web.Request, sb: FakeSandbox) -> dict[str, Proc] | web.Response:
        name = request.match_info["session"]
        if name not in sb.sessions:
            return daemon_error(request, 404, f"session {name} not found", "NOT_FOUND")
        return sb.sessions[name]

    async def create_session(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        body: CreateSessionRequest = parse(CreateSessionRequest, await request.json())
        if body.session_id in sb.sessions:
            return daemon_error(request, 409, "session already exists", "CONFLICT")
        sb.sessions[body.session_id] = {}
        return web.Response(status=201)

    async def get_session(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        cmds = self._session(request, sb)
        if isinstance(cmds, web.Response):
            return cmds
        dto = SessionDto(
            session_id=request.match_info["session"],
            commands=[CommandDto(id=p.id, command=p.command, exit_code=p.exit_code)
                      for p in cmds.values()],
        )  # fmt: skip
        return _json(dto.to_json())

    async def delete_session(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        cmds = self._session(request, sb)
        if isinstance(cmds, web.Response):
            return cmds
        for proc in cmds.values():
            if self.delete_kills_commands:
                proc.kill()
            else:
                sb.detached.append(proc)
        del sb.sessions[request.match_info["session"]]
        return web.Response(status=204)

    async def session_exec(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        cmds = self._session(request, sb)
        if isinstance(cmds, web.Response):
            return cmds
        body: SessionExecuteRequest = parse(SessionExecuteRequest, await request.json())
        if not body.command.strip():
            raise BadRequest("command cannot be empty")
        proc = await self._spawn(sb, body.command, {})
        cmds[proc.id] = proc
        if body.run_async or body.var_async:
            return _json(SessionExecuteResponse(cmd_id=proc.id).to_json(), status=202)
        assert proc.process.stdin is not None
        proc.process.stdin.close()
        await proc.done.wait()
        out, err = proc.joined("stdout"), proc.joined("stderr")
        resp = SessionExecuteResponse(
            cmd_id=proc.id,
            exit_code=proc.exit_code,
            output=proc.joined().decode("utf-8", errors="replace"),
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
        )
        return _json(resp.to_json())

    def _command(self, request: web.Request) -> Proc | web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        cmds = self._session(request, sb)
        if isinstance(cmds, web.Response):
            return cmds
        proc = cmds.get(request.match_info["cmd"])
        if proc is None:
            return daemon_error(request, 404, "command not found", "NOT_FOUND")
        return proc

    async def get_command(self, request: web.Request) -> web.Response:
        proc = self._command(request)
        if isinstance(proc, web.Response):
            return proc
        dto = CommandDto(id=proc.id, command=proc.command, exit_code=proc.exit_code)
        return _json(dto.to_json())

    async def command_logs(self, request: web.Request) -> web.StreamResponse:
        proc = self._command(request)
        if isinstance(proc, web.Response):
            return proc
        follow = request.query.get("follow") == "true"
        if not follow:
            out, err = proc.joined("stdout"), proc.joined("stderr")
            resp = SessionCommandLogsResponse(
                output=proc.joined().decode("utf-8", errors="replace"),
                stdout=out.decode("utf-8", errors="replace"),
                stderr=err.decode("utf-8", errors="replace"),
            )
            return _json(resp.to_json())
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            raise BadRequest("follow=true needs a WebSocket upgrade")
        await ws.prepare(request)
        sent = 0
        with open(proc.log_path, "rb") as log:  # noqa: ASYNC230 - local disk, test fake
            while True:
                async with proc.changed:
                    await proc.changed.wait_for(lambda n=sent: proc.size > n or proc.done.is_set())
                    size, finished = proc.size, proc.done.is_set()
                while sent < size:
                    data = log.read(min(size - sent, 1 << 16))
                    sent += len(data)
                    try:
                        await ws.send_bytes(data)
                    except ConnectionError:  # the client went away (e.g. it timed out)
                        return ws
                if finished and sent == proc.size:
                    break
        await ws.close(code=1000)
        return ws

    async def send_input(self, request: web.Request) -> web.Response:
        proc = self._command(request)
        if isinstance(proc, web.Response):
            return proc
        data = (await request.json()).get("data")
        if not isinstance(data, str):
            raise BadRequest("data must be a string")
        if proc.done.is_set():
            return daemon_error(
                request, 410, "command already completed", "COMMAND_ALREADY_COMPLETED"
            )
        assert proc.process.stdin is not None
        proc.process.stdin.write(data.encode())
        await proc.process.stdin.drain()
        return web.Response(status=204)

    # toolbox: files

    async def bulk_upload(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        reader = await request.multipart()
        paths: dict[str, str] = {}
        errors = []
        while (part := await reader.next()) is not None:
            name = part.name or ""  # type: ignore[union-attr]
            match = re.fullmatch(r"files\[(\d+)\]\.(path|file)", name)
            if match is None:
                raise BadRequest(f"unexpected form field {name}")
            index, what = match.groups()
            if what == "path":
                paths[index] = (await part.text()).strip()  # type: ignore[union-attr]
                continue
            dest = paths.get(index) or part.filename  # type: ignore[union-attr]
            if not dest:
                raise BadRequest(f"no path for files[{index}]")
            host = sb.host_path(dest, write=True)
            if host is None:
                errors.append(f"{dest}: permission denied")
                await part.release()  # type: ignore[union-attr]
                continue
            if host.is_dir():
                errors.append(f"{dest}: is a directory")
                await part.release()  # type: ignore[union-attr]
                continue
            # As the daemon's writeUploadedPart (apps/daemon/pkg/toolbox/fs/upload_files.go):
            # parents made 0755, the content written to a temp file beside the target, the temp
            # file set to 0644 and renamed over the target (so a replaced file loses its mode,
            # and its own permission bits are never consulted).
            host.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".daytona-upload-", dir=host.parent)
            with os.fdopen(fd, "wb") as handle:
                while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                    handle.write(chunk)
            os.chmod(tmp, 0o644)
            os.replace(tmp, host.resolve())
        if errors:
            return _json({"errors": errors}, status=400)
        return _json({"files": [{"path": p} for p in paths.values()]})

    async def bulk_download(self, request: web.Request) -> web.StreamResponse:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        body: FilesDownloadRequest = parse(FilesDownloadRequest, await request.json())
        writer = web.StreamResponse()
        boundary = "fakedaytona" + secrets.token_hex(8)
        writer.content_type = "multipart/form-data"
        writer.headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        await writer.prepare(request)
        for path in body.paths:
            host = sb.host_path(path, write=False)
            error: tuple[int, str, str] | None = None
            if host is None or not host.exists():
                error = (404, f"file not found: {path}", "FILE_NOT_FOUND")
            elif host.is_dir():
                error = (400, f"path is a directory: {path}", "INVALID_FILE_PATH")
            elif not os.access(host, os.R_OK):
                error = (403, f"permission denied: {path}", "FILE_ACCESS_DENIED")

            if error is not None:
                payload = json.dumps({"message": error[1], "statusCode": error[0],
                                      "code": error[2], "source": "DAYTONA_DAEMON"}).encode()  # fmt: skip
                head = (f"--{boundary}\r\nContent-Disposition: {_disposition('error', path)}\r\n"
                        "Content-Type: application/json\r\n\r\n")  # fmt: skip
                await writer.write(head.encode() + payload + b"\r\n")
                continue
            head = (f"--{boundary}\r\nContent-Disposition: {_disposition('file', path)}\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n")  # fmt: skip
            await writer.write(head.encode())
            assert host is not None
            with open(host, "rb") as handle:  # noqa: ASYNC230 - local disk, test fake
                while chunk := handle.read(1 << 20):
                    await writer.write(chunk)
            await writer.write(b"\r\n")
        await writer.write(f"--{boundary}--\r\n".encode())
        await writer.write_eof()
        return writer

    async def create_folder(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        path, mode = request.query.get("path"), request.query.get("mode")
        if not path or not mode or not re.fullmatch(r"[0-7]{3,4}", mode):
            raise BadRequest("path and an octal mode are required")
        host = sb.host_path(path, write=True)
        if host is None:
            return daemon_error(request, 403, f"permission denied: {path}", "FILE_ACCESS_DENIED")
        host.mkdir(parents=True, exist_ok=True)
        host.chmod(int(mode, 8))
        return web.Response(status=201)

    async def set_permissions(self, request: web.Request) -> web.Response:
        """``POST /files/permissions``, as the daemon's SetFilePermissions
        (apps/daemon/pkg/toolbox/fs/set_file_permissions.go); owner and group are not modelled."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        path, mode = request.query.get("path"), request.query.get("mode")
        if not path:
            raise BadRequest("path is required")
        if request.query.get("owner") or request.query.get("group"):
            raise BadRequest("the fake does not model owner or group changes")
        host = sb.host_path(path, write=True)
        if host is None:
            return daemon_error(request, 403, f"permission denied: {path}", "FILE_ACCESS_DENIED")
        if not host.exists():
            return daemon_error(request, 404, f"file not found: {path}", "FILE_NOT_FOUND")
        if mode:
            if not re.fullmatch(r"[0-7]{1,4}", mode):
                raise BadRequest("invalid mode format")
            host.chmod(int(mode, 8))
        return web.Response(status=200)

    async def delete_file(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        path = request.query.get("path")
        if not path:
            raise BadRequest("path is required")
        host = sb.host_path(path, write=True)
        if host is None:
            return daemon_error(request, 403, f"permission denied: {path}", "FILE_ACCESS_DENIED")
        if not host.exists() and not host.is_symlink():
            return daemon_error(request, 404, f"file not found: {path}", "FILE_NOT_FOUND")
        if host.is_dir() and not host.is_symlink():
            if request.query.get("recursive") != "true":
                return daemon_error(request, 400, "directory, use recursive", "BAD_REQUEST")
            shutil.rmtree(host)
        else:
            host.unlink()
        return web.Response(status=204)

    async def work_dir(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        return _json(WorkDirResponse(dir=HOME).to_json())


def _disposition(name: str, path: str) -> str:
    """A multipart part's Content-Disposition; non-ASCII names in RFC 5987 form, as the daemon
    sends them (the SDK reads header bytes as latin-1 and decodes ``filename*``)."""
    if path.isascii():
        return f'form-data; name="{name}"; filename="{path.replace(chr(34), "%22")}"'
    return f"form-data; name=\"{name}\"; filename*=utf-8''{urllib.parse.quote(path, safe='')}"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
