"""A local fake of Daytona's wire protocol, served on 127.0.0.1 for the real ``daytona`` SDK.

Two HTTP surfaces, as the vendor has them:

* the REST API under ``/api`` (``DAYTONA_API_URL``): sandboxes, labels, preview links, snapshots;
* the toolbox API under ``/toolbox/{sandboxId}`` (the ``toolboxProxyUrl`` every sandbox record
  carries): the daemon's process sessions, ``/process/execute`` and files.

Request bodies are parsed with the SDK's own generated pydantic models and every response is built
from them, so a wrong field name, a missing required field or a bad type fails here the way it
fails against Daytona. Unknown request properties are rejected with 400.

Each fake sandbox is a container of its own (:mod:`fake_daytona_vm`): its own pid and mount
namespaces, PID 1 reaping orphans, every process running as the image's user ``daytona``. What
the daemon does follows its sources in daytonaio/daytona (``apps/daemon``):

* sessions (``pkg/session/create.go``, ``execute.go``, ``wrapper_linux.go``, ``log.go``,
  ``input.go``, ``delete.go``, ``command.go``): a session is a shell (``GetShell``: zsh, else
  bash, else sh, from ``/etc/shells``) in a process group of its own; a command is written to its
  stdin wrapped in the daemon's script: the command sourced from ``cmd.sh`` with its stdout and
  stderr relayed *line by line by shell loops* into one log file, each line prefixed with
  ``\\x01\\x01\\x01`` or ``\\x02\\x02\\x02`` (so NUL bytes are lost, a newline is added to a last
  line that had none, and a partial line waits for its newline), and the exit code written once
  both relays have drained. Following the logs (``internal/util`` ``ReadLogWithExitCode``) reads
  the file in 1 KiB reads, polls every 20 ms at its end, and looks for the exit code only after 50
  empty polls: the stream ends a second after the output stops (``pkg/session/log.go`` ``ReadLog``
  also reads the socket: a client's close ends it at once). Input goes to the command's FIFO,
  with a newline added when missing and echoed into the log as stdout unless suppressed. Deleting
  a session (``delete.go``, ``common/process_termination.go``) sends SIGTERM to its process
  group, waits for the shell (up to a grace period), then SIGKILL: processes that left the group
  (``setsid``) live on. The wrapper's ``trap cleanup ... TERM`` runs in the session's shell itself
  and stays set there, so a shell that ran a command survives the SIGTERM and the delete waits
  out the whole grace period.
* ``/process/execute`` (``pkg/toolbox/process/execute/execute.go``): the command split on spaces
  outside quotes (no shell), run in a process group of its own, combined output.
* files (``pkg/toolbox/fs``): list and info follow symlinks (``os.Stat``; an entry that cannot be
  stat'ed is left out of a listing); upload writes a temp file beside the target, sets it 0644
  and renames it over the target; bulk download (``download_files.go``) answers per-file JSON
  error parts, its part headers naming the path in Latin-1 (``toLatin1``) and RFC 5987
  (``invalid file path: path points to a directory: <path>``, ``file not found: <path>``, ...);
  the daemon acts as the user it runs as, so its permission checks are that user's.

The REST API follows ``apps/api``: a delete is a soft delete (the sandbox is ``destroying`` for a
while, and a second delete meanwhile answers 409 "state change in progress"); a destroyed sandbox
is not found. Faults can be injected per route with :meth:`FakeDaytona.fail`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import posixpath
import re
import secrets
import shutil
import signal
import stat
import tempfile
import time
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
from daytona_api_client_async.models import Sandbox as SandboxDto
from daytona_toolbox_api_client_async.models import Command as CommandDto
from daytona_toolbox_api_client_async.models import (
    CreateSessionRequest,
    ErrorResponse,
    ExecuteRequest,
    ExecuteResponse,
    FileInfo,
    FilesDownloadRequest,
    SessionCommandLogsResponse,
    SessionExecuteRequest,
    SessionExecuteResponse,
    SessionSendInputRequest,
    UserHomeDirResponse,
    WorkDirResponse,
)
from daytona_toolbox_api_client_async.models import Session as SessionDto
from fake_daytona_vm import GID, HOME, UID, USER, USERS, prepare_root
from fake_vm import VM, host_path, resolve, write_etc

STDOUT_PREFIX = b"\x01\x01\x01"
STDERR_PREFIX = b"\x02\x02\x02"
ORG = "00000000-0000-4000-8000-00000000f4ce"
CONFIG_DIR = f"{HOME}/.daytona"
"""Where the daemon keeps its sessions' logs, inside the sandbox."""
LOG_READ = 1024
LOG_POLL = 0.02
LOG_EOF_CHECKS = 50
TERMINATION_GRACE = 5.0
DESTROY_DELAY = 0.3
"""Seconds a deleted sandbox stays ``destroying`` before it is gone."""

# apps/daemon/pkg/session/wrapper_linux.go (cmdWrapperFormat), as written to the session shell.
WRAPPER = """
{{
\tlog={log}
\tdir={dir}

\t# per-command FIFOs
\tsp="$dir/stdout.pipe"
\tep="$dir/stderr.pipe"
\tip={ip}
\t
\trm -f "$sp" "$ep" "$ip" && mkfifo "$sp" "$ep" "$ip" || exit 1

\tcleanup() {{ rm -f "$sp" "$ep" "$ip"; }}
\ttrap 'cleanup' EXIT HUP INT TERM

  # prefix each stream and append to shared log
\t( while IFS= read -r line || [ -n "$line" ]; do printf '\\001\\001\\001%s\\n' "$line"; done < "$sp" ) >> "$log" & r1=$!
\t( while IFS= read -r line || [ -n "$line" ]; do printf '\\002\\002\\002%s\\n' "$line"; done < "$ep" ) >> "$log" & r2=$!

\t# Sync commands should see EOF immediately; async commands keep stdin open for SendInput.
\t{stdin}
\tip_pid=$!

\t# Run your command from file (avoids heredoc parsing issues with pipe-fed shells)
\t{{ . {cmd}; }} < "$ip" > "$sp" 2> "$ep"
\t_ec=$?

\t# Stop the stdin holder so it doesn't outlive the command
\tkill "$ip_pid" 2>/dev/null; wait "$ip_pid" 2>/dev/null

\t# drain labelers (cleanup via trap)
\twait "$r1" "$r2"

\t# Write exit code only after labelers have flushed all output to the log file.
\techo "$_ec" >> {exit}

\t# Ensure unlink even if the waits failed
\tcleanup
}}
"""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    """A JSON response from a model's ``to_json()`` text or a plain object."""
    text = data if isinstance(data, str) else json.dumps(data)
    return web.Response(text=text, status=status, content_type="application/json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def api_error(status: int, message: str) -> web.Response:
    """An error in the REST API's (NestJS) envelope."""
    names = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
             409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error",
             503: "Service Unavailable"}  # fmt: skip
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


def may(root: Path, path: Path, want: int) -> bool:
    """Whether the daemon's user (uid/gid 1000) has ``want`` (``os.R_OK``...) on ``path``, and
    search permission on every directory above it inside its sandbox: the fake serves as root,
    the daemon does not."""
    parents = list(reversed(path.parents))
    if path == root or root in path.parents:  # the sandbox's root is its "/"
        parents = [p for p in parents if p == root or root in p.parents]
    try:
        checks = [(p, os.X_OK) for p in parents] + [(path, want)]
        for target, bits in checks:
            st = os.stat(target)
            shift = 6 if st.st_uid == UID else 3 if st.st_gid == GID else 0
            if (st.st_mode >> shift) & bits != bits:
                return False
    except OSError:
        return False
    return True


def reachable(root: Path, path: Path) -> bool:
    """Whether the daemon's user may search its way to ``path`` (``os.Stat`` answers EACCES
    before ENOENT only when a directory it passes through is not searchable)."""
    existing = next((p for p in path.parents if p.exists()), root)
    return may(root, existing, os.X_OK)


def file_info(host: Path, shown: str) -> dict[str, Any]:
    """The daemon's ``getFileInfo`` (``os.Stat``: a symlink is followed), its mode as Go's
    ``FileMode.String()`` writes it."""
    st = os.stat(host)
    kinds = {stat.S_IFDIR: "d", stat.S_IFIFO: "p", stat.S_IFSOCK: "S", stat.S_IFCHR: "Dc",
             stat.S_IFBLK: "D"}  # fmt: skip
    mode = kinds.get(stat.S_IFMT(st.st_mode), "-") + stat.filemode(st.st_mode)[1:]
    when = datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat()
    info = FileInfo(
        name=posixpath.basename(shown.rstrip("/")) or "/",
        path=shown,
        size=st.st_size,
        mode=mode,
        mod_time=when,
        modified_at=when,
        is_dir=stat.S_ISDIR(st.st_mode),
        owner=str(st.st_uid),
        group=str(st.st_gid),
        permissions=f"{stat.S_IMODE(st.st_mode) & 0o777:04o}",
    )
    return json.loads(info.to_json())


@dataclass
class Cmd:
    """One command of a session."""

    id: str
    command: str
    suppress_echo: bool
    exit_code: int | None = None


@dataclass
class Session:
    """One session: a shell in a process group of its own, fed commands on its stdin."""

    id: str
    pid: int
    stdin: int
    cmds: dict[str, Cmd] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class FakeSandbox:
    """Server-side state of one sandbox."""

    dto: dict[str, Any]
    root: Path
    vm: VM
    shell: str
    sessions: dict[str, Session] = field(default_factory=dict)
    paused: bool = False
    pending: bool = False

    @property
    def id(self) -> str:
        return str(self.dto["id"])

    def host(self, path: str) -> Path:
        """The host path behind a path inside the sandbox (relative ones: the daemon's cwd, the
        home), symlinks followed inside the sandbox; system directories are the host's own."""
        absolute = path if path.startswith("/") else posixpath.join(HOME, path)
        return host_path(self.root, resolve(self.root, absolute, follow_last=False))

    def writable(self, path: str) -> bool:
        return not any(
            path == p or path.startswith(p + "/")
            for p in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/proc")
        )


class FakeDaytona:
    """The fake control plane and toolbox. ``async with FakeDaytona() as fake: fake.api_url``."""

    def __init__(self, api_key: str = "fake-daytona-key") -> None:
        self.api_key = api_key
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.snapshots: dict[str, Path] = {}
        self.requests: list[tuple[str, str]] = []
        self.logs_ended_by_daemon = 0
        """Followed logs the daemon ended (exit code found), not the client."""
        self.created_bodies: list[dict[str, Any]] = []
        self._faults: list[dict[str, Any]] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-daytona-"))
        (self._tmp / "sandboxes").mkdir()
        self._etc = write_etc(self._tmp / "etc", USERS, "daytona")
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.base_url = ""
        self._signed: dict[str, tuple[str, int, float]] = {}

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
        r.add_get(t + "/process/session", self.list_sessions)
        r.add_get(t + "/process/session/{session}", self.get_session)
        r.add_delete(t + "/process/session/{session}", self.delete_session)
        r.add_post(t + "/process/session/{session}/exec", self.session_exec)
        r.add_get(t + "/process/session/{session}/command/{cmd}", self.get_command)
        r.add_get(t + "/process/session/{session}/command/{cmd}/logs", self.command_logs)
        r.add_post(t + "/process/session/{session}/command/{cmd}/input", self.send_input)
        r.add_get(t + "/files", self.list_files)
        r.add_get(t + "/files/info", self.get_file_info)
        r.add_post(t + "/files/bulk-upload", self.bulk_upload)
        r.add_post(t + "/files/bulk-download", self.bulk_download)
        r.add_post(t + "/files/folder", self.create_folder)
        r.add_delete(t + "/files", self.delete_file)
        r.add_post(t + "/files/permissions", self.set_permissions)
        r.add_get(t + "/work-dir", self.work_dir)
        r.add_get(t + "/user-home-dir", self.home_dir)
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

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        """``findOneByIdOrName``: a destroyed sandbox is not found."""
        ident = request.match_info[key]
        sb = self.sandboxes.get(ident)
        if sb is None:
            sb = next((s for s in self.sandboxes.values() if s.dto["name"] == ident), None)
        return None if sb is None or sb.dto["state"] == "destroyed" else sb

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
        if name and any(
            s.dto["name"] == name and s.dto["state"] != "destroyed" for s in self.sandboxes.values()
        ):
            return api_error(409, f"Sandbox with name {name} already exists")
        if body.network_allow_list:
            for cidr in body.network_allow_list.split(","):
                if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", cidr.strip()):
                    raise BadRequest(f"Invalid CIDR in networkAllowList: {cidr}")
        image, workdirs = None, []
        if body.build_info is not None:
            match = re.search(r"^FROM\s+(\S+)", body.build_info.dockerfile_content, re.M)
            if match is None:
                raise BadRequest("dockerfileContent must start with FROM")
            image = match.group(1)
            workdirs = re.findall(r"^WORKDIR\s+(\S+)", body.build_info.dockerfile_content, re.M)
        sid = str(uuid.uuid4())
        root = self._tmp / "sandboxes" / sid
        prepare_root(root)
        if body.snapshot:
            home = root / HOME.lstrip("/")
            shutil.rmtree(home)
            shutil.copytree(self.snapshots[body.snapshot], home, symlinks=True)
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
            assert body.build_info is not None
            digest = uuid.uuid5(uuid.NAMESPACE_URL, body.build_info.dockerfile_content).hex
            dto["buildInfo"] = {"dockerfileContent": body.build_info.dockerfile_content,
                                "createdAt": now, "updatedAt": now,
                                "snapshotRef": f"registry.local/daytona/{digest}:daytona"}  # fmt: skip
        if workdirs:  # the toolbox's work dir is the image's WORKDIR
            dto["_workDir"] = workdirs[-1]
            host_path(root, resolve(root, workdirs[-1])).mkdir(parents=True, exist_ok=True)
        vm = VM(root, self._etc, private_net=bool(body.network_block_all))
        await asyncio.to_thread(vm.boot)
        vm.attach_loop(asyncio.get_running_loop())
        shells = Path("/etc/shells").read_text() if Path("/etc/shells").exists() else ""  # noqa: ASYNC240
        shell = next(
            (s for s in ("/usr/bin/zsh", "/bin/zsh", "/usr/bin/bash", "/bin/bash") if s in shells),
            "/bin/sh",
        )
        self.sandboxes[sid] = FakeSandbox(dto=dto, root=root, vm=vm, shell=shell)
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
            if sb.dto["state"] != "destroyed"
            and all(sb.dto["labels"].get(k) == v for k, v in wanted.items())
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
        sb.dto.update(state="destroyed", desiredState="destroyed")
        sb.pending = False
        for session in sb.sessions.values():
            session.ended.set()
        sb.vm.halt(wait=False)  # on the loop: a thread reaps the init's parent
        shutil.rmtree(sb.root, ignore_errors=True)

    async def delete_sandbox(self, request: web.Request) -> web.Response:
        """``SandboxService.destroy``: a soft delete. The sandbox turns ``destroying`` (pending)
        and is gone a moment later; meanwhile another delete is a state change in progress."""
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        if sb.pending:
            return api_error(409, "Sandbox state change in progress")
        sb.pending = True
        sb.dto.update(state="destroying", desiredState="destroyed")
        asyncio.get_running_loop().call_later(DESTROY_DELAY, self._destroy, sb)
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
        shutil.copytree(sb.root / HOME.lstrip("/"), dest, symlinks=True)
        self.snapshots[body.name] = dest
        return _json(self._full(sb))

    async def pause_sandbox(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        sb.vm.signal(-1, signal.SIGSTOP)
        sb.paused = True
        sb.dto.update(state="paused", desiredState="paused")
        return _json(self._full(sb))

    async def start_sandbox(self, request: web.Request) -> web.Response:
        sb = self._lookup(request)
        if sb is None:
            return self._not_found(request)
        sb.vm.signal(-1, signal.SIGCONT)
        sb.paused = False
        sb.dto.update(state="started", desiredState="started")
        return _json(self._full(sb))

    # toolbox: the daemon

    def _toolbox_sandbox(self, request: web.Request) -> FakeSandbox | web.Response:
        sb = self.sandboxes.get(request.match_info["sid"])
        if sb is None or sb.dto["state"] in ("destroyed", "destroying"):
            return api_error(404, "sandbox not found")  # the proxy answers, not the daemon
        if sb.paused:
            return api_error(409, "sandbox is not started")
        return sb

    def _env(self, sb: FakeSandbox) -> dict[str, str]:
        """The daemon's environment (every session shell inherits it: ``os.Environ()``)."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": HOME,
            "USER": "daytona",
            "HOSTNAME": sb.id,
            "DAYTONA_SANDBOX_ID": sb.id,
            "DAYTONA_SANDBOX_USER": "daytona",
            **sb.dto["env"],
        }

    async def execute(self, request: web.Request) -> web.Response:
        """``ExecuteController.ExecuteCommand``: the command split on spaces outside quotes (no
        shell), in a process group of its own, combined output; past the timeout the group is
        terminated and the answer is 408."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        body: ExecuteRequest = parse(ExecuteRequest, await request.json())
        argv = _split_command(body.command)
        if not argv:
            raise BadRequest("empty command")
        read, write = os.pipe()
        null = os.open("/dev/null", os.O_RDONLY)
        cwd = body.cwd or HOME
        try:
            binary = argv[0] if "/" in argv[0] else shutil.which(argv[0], path="/usr/bin:/bin")
            pid = await sb.vm.spawn([binary or argv[0], *argv[1:]], self._env(sb), cwd, USER,
                                    [null, write, write])  # fmt: skip
        finally:
            os.close(write)
            os.close(null)
        output = bytearray()

        async def collect() -> None:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read, "rb", 0)
            )
            try:
                while chunk := await reader.read(65536):
                    output.extend(chunk)
            finally:
                transport.close()

        collector = self._spawn_task(collect())
        try:
            status = await asyncio.wait_for(sb.vm.wait(pid), body.timeout or None)
        except TimeoutError:
            await self._terminate(sb, pid)
            return daemon_error(
                request, 408, f"Command execution timed out after {body.timeout} seconds. The "
                "timeout can be increased by adjusting the timeout parameter in the request.",
                "REQUEST_TIMEOUT",
            )  # fmt: skip
        await asyncio.wait([collector], timeout=1)
        sb.vm.forget(pid)
        code = os.waitstatus_to_exitcode(status)
        result = output.decode("utf-8", errors="replace")
        return _json(ExecuteResponse(exit_code=code if code >= 0 else -1, result=result).to_json())

    async def _terminate(self, sb: FakeSandbox, pid: int) -> None:
        """``TerminateProcessTreeGracefully``: SIGTERM to the group, the leader waited for up to
        the grace period, then SIGKILL to the group."""
        sb.vm.signal(-pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(sb.vm.wait(pid)), TERMINATION_GRACE)
            return
        sb.vm.signal(-pid, signal.SIGKILL)

    def _session(self, request: web.Request, sb: FakeSandbox) -> Session | web.Response:
        name = request.match_info["session"]
        if name not in sb.sessions:
            return daemon_error(request, 404, "session not found", "NOT_FOUND")
        return sb.sessions[name]

    def _session_dir(self, sb: FakeSandbox, session: str) -> Path:
        return sb.host(f"{CONFIG_DIR}/sessions/{session}")

    async def create_session(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        body: CreateSessionRequest = parse(CreateSessionRequest, await request.json())
        if body.session_id in sb.sessions:
            return daemon_error(request, 409, "session already exists", "CONFLICT")
        read, write = os.pipe()
        null = os.open("/dev/null", os.O_WRONLY)
        try:
            pid = await sb.vm.spawn([sb.shell], self._env(sb), HOME, USER, [read, null, null])
        finally:
            os.close(read)
            os.close(null)
        session = Session(id=body.session_id, pid=pid, stdin=write)
        sb.sessions[body.session_id] = session
        directory = self._session_dir(sb, body.session_id)
        await asyncio.to_thread(_make_dirs, sb.root, directory)

        async def watch() -> None:
            await sb.vm.wait(pid)
            session.ended.set()

        self._spawn_task(watch())
        return web.Response(status=201)

    def _commands(self, sb: FakeSandbox, session: Session) -> list[CommandDto]:
        """``getSessionCommands``: an exit code is read from its file once written."""
        out = []
        for cmd in session.cmds.values():
            if cmd.exit_code is None:
                exit_file = self._session_dir(sb, session.id) / cmd.id / "exit_code"
                with contextlib.suppress(OSError, ValueError):
                    cmd.exit_code = int(exit_file.read_text().strip())
            out.append(CommandDto(id=cmd.id, command=cmd.command, exit_code=cmd.exit_code))
        return out

    async def list_sessions(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        dtos = [SessionDto(session_id=s.id, commands=self._commands(sb, s)).to_dict()
                for s in sb.sessions.values()]  # fmt: skip
        return _json(json.dumps(dtos, default=str))

    async def get_session(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        session = self._session(request, sb)
        if isinstance(session, web.Response):
            return session
        return _json(
            SessionDto(session_id=session.id, commands=self._commands(sb, session)).to_json()
        )

    async def delete_session(self, request: web.Request) -> web.Response:
        """``SessionService.Delete``: the shell's group terminated gracefully, its dir removed."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        session = self._session(request, sb)
        if isinstance(session, web.Response):
            return session
        await self._terminate(sb, session.pid)
        with contextlib.suppress(OSError):
            os.close(session.stdin)
        session.ended.set()
        await asyncio.to_thread(shutil.rmtree, self._session_dir(sb, session.id), True)
        sb.sessions.pop(session.id, None)
        return web.Response(status=204)

    async def session_exec(self, request: web.Request) -> web.Response:
        """``SessionService.Execute``: the command, wrapped, written to the session's shell."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        session = self._session(request, sb)
        if isinstance(session, web.Response):
            return session
        body: SessionExecuteRequest = parse(SessionExecuteRequest, await request.json())
        if not body.command.strip():
            raise BadRequest("command cannot be empty")
        run_async = bool(body.run_async or body.var_async)
        cmd = Cmd(id=str(uuid.uuid4()), command=body.command,
                  suppress_echo=bool(body.suppress_input_echo))  # fmt: skip
        session.cmds[cmd.id] = cmd
        inside = f"{CONFIG_DIR}/sessions/{session.id}/{cmd.id}"
        host = sb.host(inside)
        await asyncio.to_thread(_make_dirs, sb.root, host)
        (host / "output.log").touch()
        (host / "cmd.sh").write_text(body.command)
        for name in ("output.log", "cmd.sh"):
            os.chown(host / name, UID, GID)
        os.chmod(host / "cmd.sh", 0o600)
        stdin = 'while :; do sleep 3600; done > "$ip" &' if run_async else 'cat /dev/null > "$ip" &'
        script = WRAPPER.format(
            log=json.dumps(f"{inside}/output.log"), dir=json.dumps(inside),
            ip=json.dumps(f"{inside}/input.pipe"), stdin=stdin,
            cmd=json.dumps(f"{inside}/cmd.sh"), exit=json.dumps(f"{inside}/exit_code"),
        )  # fmt: skip
        try:
            await asyncio.to_thread(_write_all, session.stdin, (script + "\n").encode())
        except OSError as exc:
            return daemon_error(request, 400, f"failed to write command: {exc}", "BAD_REQUEST")
        if run_async:
            return _json(SessionExecuteResponse(cmd_id=cmd.id).to_json(), status=202)
        exit_file = host / "exit_code"
        while not (exit_file.exists() and exit_file.read_text().strip()):
            if session.ended.is_set():
                return daemon_error(request, 400, "session cancelled", "BAD_REQUEST")
            await asyncio.sleep(0.05)
        cmd.exit_code = int(exit_file.read_text().strip())
        log = (host / "output.log").read_bytes()
        out = b"".join(d for k, d in split_log(log) if k == "stdout")
        err = b"".join(d for k, d in split_log(log) if k == "stderr")
        resp = SessionExecuteResponse(
            cmd_id=cmd.id, exit_code=cmd.exit_code, output=log.decode("utf-8", "replace"),
            stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
        )  # fmt: skip
        return _json(resp.to_json())

    def _command(self, request: web.Request) -> tuple[FakeSandbox, Session, Cmd] | web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        session = self._session(request, sb)
        if isinstance(session, web.Response):
            return session
        cmd = session.cmds.get(request.match_info["cmd"])
        if cmd is None:
            return daemon_error(request, 404, "command not found", "NOT_FOUND")
        return sb, session, cmd

    async def get_command(self, request: web.Request) -> web.Response:
        found = self._command(request)
        if isinstance(found, web.Response):
            return found
        sb, session, cmd = found
        (dto,) = [c for c in self._commands(sb, session) if c.id == cmd.id]
        return _json(dto.to_json())

    async def command_logs(self, request: web.Request) -> web.StreamResponse:
        """``GetSessionCommandLogs``; followed, ``ReadLogWithExitCode``: the log file read 1 KiB
        at a time, 20 ms between empty reads, the exit code looked for after 50 of them."""
        found = self._command(request)
        if isinstance(found, web.Response):
            return found
        sb, session, cmd = found
        directory = self._session_dir(sb, session.id) / cmd.id
        if request.query.get("follow") != "true":
            log = (directory / "output.log").read_bytes()
            out = b"".join(d for k, d in split_log(log) if k == "stdout")
            err = b"".join(d for k, d in split_log(log) if k == "stderr")
            resp = SessionCommandLogsResponse(
                output=log.decode("utf-8", "replace"),
                stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
            )  # fmt: skip
            return _json(resp.to_json())
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            raise BadRequest("follow=true needs a WebSocket upgrade")
        await ws.prepare(request)

        async def read_client() -> None:  # ReadLog's reader: a client's close ends the stream
            async for _ in ws:
                pass

        reader = self._spawn_task(read_client())
        empty = 0
        try:
            with open(directory / "output.log", "rb") as log:  # noqa: ASYNC230 - test fake
                while not ws.closed and not reader.done():
                    if session.ended.is_set():
                        break
                    data = log.read(LOG_READ)
                    if data:
                        empty = 0
                        try:
                            await ws.send_bytes(data)
                        except ConnectionError:
                            return ws
                        continue
                    empty += 1
                    if empty >= LOG_EOF_CHECKS:
                        exit_file = directory / "exit_code"
                        if exit_file.exists() and exit_file.read_text().strip():
                            self.logs_ended_by_daemon += 1
                            break
                        empty = 0
                    await asyncio.sleep(LOG_POLL)
            await ws.close(code=1000)
        finally:
            reader.cancel()
        return ws

    async def send_input(self, request: web.Request) -> web.Response:
        """``SessionService.SendInput``: to the command's FIFO, a newline added when missing,
        echoed into the log as stdout unless suppressed."""
        found = self._command(request)
        if isinstance(found, web.Response):
            return found
        sb, session, cmd = found
        body: SessionSendInputRequest = parse(SessionSendInputRequest, await request.json())
        self._commands(sb, session)
        if cmd.exit_code is not None:
            return daemon_error(
                request, 410, f"command has already completed with exit code {cmd.exit_code}",
                "COMMAND_ALREADY_COMPLETED",
            )  # fmt: skip
        data = body.data if body.data.endswith("\n") else body.data + "\n"
        directory = self._session_dir(sb, session.id) / cmd.id
        try:
            await asyncio.to_thread(_write_fifo, directory, data.encode())
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                return daemon_error(
                    request, 410, "command has already completed", "COMMAND_ALREADY_COMPLETED"
                )
            return daemon_error(request, 500, f"failed to open input pipe: {exc}", "INTERNAL")
        if not cmd.suppress_echo:
            with open(directory / "output.log", "ab") as log:  # noqa: ASYNC230 - test fake
                log.write(STDOUT_PREFIX + data.encode())
        return web.Response(status=200)

    # toolbox: files

    def _stat_error(self, request: web.Request, path: str, exc: OSError) -> web.Response:
        if isinstance(exc, FileNotFoundError):
            message = f"stat {path}: no such file or directory"
            return daemon_error(request, 404, message, "FILE_NOT_FOUND")
        if isinstance(exc, PermissionError):
            message = f"stat {path}: permission denied"
            return daemon_error(request, 403, message, "FILE_ACCESS_DENIED")
        return daemon_error(request, 400, f"{path}: {exc.strerror}", "BAD_REQUEST")

    async def list_files(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        path = request.query.get("path") or "."
        host = sb.host(path)
        try:
            if not may(sb.root, host, os.R_OK | os.X_OK):
                raise PermissionError(13, "permission denied")
            names = sorted(os.listdir(host))
        except OSError as exc:
            return self._stat_error(request, f"open {path}", exc)
        shown = path if path.startswith("/") else posixpath.join(HOME, path)
        entries = []
        for name in names:
            with contextlib.suppress(OSError):  # an entry that cannot be stat'ed is left out
                entries.append(file_info(host / name, posixpath.join(shown, name)))
        return _json(entries)

    async def get_file_info(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        path = request.query.get("path")
        if not path:
            raise BadRequest("path is required")
        host = sb.host(path)
        try:
            if not reachable(sb.root, host):
                raise PermissionError(13, "permission denied")
            return _json(file_info(host, path))
        except OSError as exc:
            return self._stat_error(request, path, exc)

    async def bulk_upload(self, request: web.Request) -> web.Response:
        """``UploadFiles``: each file written to a temp file beside its target, set 0644 and
        renamed over it (a replaced file's own mode is never consulted, nor kept)."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        reader = await request.multipart()
        dests: dict[str, str] = {}
        errors: list[str] = []
        files: list[dict[str, Any]] = []
        while (part := await reader.next()) is not None:
            name = part.name or ""  # type: ignore[union-attr]
            match = re.fullmatch(r"files\[(\d+)\]\.(path|file)", name)
            if match is None:
                continue
            index, what = match.groups()
            if what == "path":
                dests[index] = (await part.text()).strip()  # type: ignore[union-attr]
                continue
            dest = dests.get(index)
            if not dest:
                errors.append(f"file[{index}]: missing .path metadata")
                continue
            host = sb.host(dest)
            parent = host.parent
            try:
                if not sb.writable(posixpath.normpath(dest)):
                    raise PermissionError(30, "read-only file system")
                _make_dirs(sb.root, parent)
                if not may(sb.root, parent, os.W_OK | os.X_OK):
                    raise PermissionError(13, "permission denied")
                fd, tmp = tempfile.mkstemp(prefix=".daytona-upload-", dir=parent)
                size = 0
                with os.fdopen(fd, "wb") as handle:
                    while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                        handle.write(chunk)
                        size += len(chunk)
                os.chown(tmp, UID, GID)
                os.chmod(tmp, 0o644)
                if host.is_dir() and not host.is_symlink():
                    os.unlink(tmp)
                    raise IsADirectoryError(21, f"open {dest}: is a directory")
                os.replace(tmp, host.resolve())
            except OSError as exc:
                await part.release()  # type: ignore[union-attr]
                errors.append(f"{dest}: {exc.strerror or exc}")
                continue
            files.append({"path": dest, "bytes": size})
        if errors:
            return _json({"errors": errors, "files": files}, status=400)
        return _json({"files": files})

    async def bulk_download(self, request: web.Request) -> web.StreamResponse:
        """``DownloadFiles``: a multipart part per path, a JSON error part for one that fails."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        body: FilesDownloadRequest = parse(FilesDownloadRequest, await request.json())
        writer = web.StreamResponse()
        boundary = "DAYTONA-FILE-BOUNDARY"
        writer.headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        await writer.prepare(request)
        for path in body.paths:
            host = sb.host(path)
            error: tuple[int, str, str] | None = None
            if not path:
                error = (400, "INVALID_FILE_PATH", "invalid file path: path is empty")
            elif not may(sb.root, host.parent, os.X_OK) and host.parent.exists():
                error = (403, "FILE_ACCESS_DENIED", f"permission denied: {path}")
            elif not host.exists():
                error = (404, "FILE_NOT_FOUND", f"file not found: {path}")
            elif host.is_dir():
                message = f"invalid file path: path points to a directory: {path}"
                error = (400, "INVALID_FILE_PATH", message)
            elif not may(sb.root, host, os.R_OK):
                error = (403, "FILE_ACCESS_DENIED", f"permission denied: {path}")
            names = f"filename=\"{_to_latin1(path)}\"; filename*=utf-8''{_rfc5987(path)}"
            if error is not None:
                payload = json.dumps({"statusCode": error[0], "code": error[1],
                                      "message": error[2], "timestamp": _now(),
                                      "path": path, "method": "POST"}).encode()  # fmt: skip
                head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"error\"; {names}\r\n"
                        "Content-Type: application/json; charset=utf-8\r\n\r\n")  # fmt: skip
                await writer.write(head.encode("latin-1") + payload + b"\r\n")
                continue
            head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; {names}\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n")  # fmt: skip
            await writer.write(head.encode("latin-1"))
            with open(host, "rb") as handle:  # noqa: ASYNC230 - local disk, test fake
                while chunk := handle.read(1 << 20):
                    await writer.write(chunk)
            await writer.write(b"\r\n")
        await writer.write(f"--{boundary}--\r\n".encode())
        await writer.write_eof()
        return writer

    async def create_folder(self, request: web.Request) -> web.Response:
        """``CreateFolder``: ``os.MkdirAll`` with the mode asked for."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        path, mode = request.query.get("path"), request.query.get("mode") or "755"
        if not path:
            raise BadRequest("path is required")
        if not re.fullmatch(r"[0-7]{1,4}", mode):
            raise BadRequest("invalid mode format")
        host = sb.host(path)
        try:
            if not sb.writable(posixpath.normpath(path)):
                raise PermissionError(30, f"mkdir {path}: read-only file system")
            _make_dirs(sb.root, host, int(mode, 8))
        except OSError as exc:
            return daemon_error(request, 400, f"mkdir {path}: {exc.strerror}", "BAD_REQUEST")
        return web.Response(status=201)

    async def set_permissions(self, request: web.Request) -> web.Response:
        """``SetFilePermissions``; owner and group changes are not modelled."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        path, mode = request.query.get("path"), request.query.get("mode")
        if not path:
            raise BadRequest("path is required")
        if request.query.get("owner") or request.query.get("group"):
            raise BadRequest("the fake does not model owner or group changes")
        host = sb.host(path)
        if not host.exists():
            return daemon_error(request, 404, f"file not found: {path}", "FILE_NOT_FOUND")
        if os.stat(host).st_uid != UID:
            return daemon_error(request, 403, f"permission denied: {path}", "FILE_ACCESS_DENIED")
        if mode:
            if not re.fullmatch(r"[0-7]{1,4}", mode):
                raise BadRequest("invalid mode format")
            host.chmod(int(mode, 8))
        return web.Response(status=200)

    async def delete_file(self, request: web.Request) -> web.Response:
        """``DeleteFile``: a directory needs ``recursive``."""
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        path = request.query.get("path")
        if not path:
            raise BadRequest("path is required")
        host = sb.host(path)
        try:
            info = os.stat(host)
        except OSError as exc:
            return self._stat_error(request, path, exc)
        if stat.S_ISDIR(info.st_mode) and request.query.get("recursive") != "true":
            message = "cannot delete directory without recursive flag"
            return daemon_error(request, 400, message, "BAD_REQUEST")
        if not sb.writable(posixpath.normpath(path)) or not may(
            sb.root, host.parent, os.W_OK | os.X_OK
        ):
            message = f"remove {path}: permission denied"
            return daemon_error(request, 400, message, "BAD_REQUEST")
        if stat.S_ISDIR(info.st_mode) and not host.is_symlink():
            shutil.rmtree(host)
        else:
            host.unlink()
        return web.Response(status=204)

    async def work_dir(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        return _json(WorkDirResponse(dir=sb.dto.get("_workDir", HOME)).to_json())

    async def home_dir(self, request: web.Request) -> web.Response:
        sb = self._toolbox_sandbox(request)
        if isinstance(sb, web.Response):
            return sb
        return _json(UserHomeDirResponse(dir=HOME).to_json())


def _make_dirs(root: Path, path: Path, mode: int = 0o755) -> None:
    """``os.MkdirAll`` as the daemon's user: new directories are its own."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        if not may(root, directory.parent, os.W_OK | os.X_OK):
            raise PermissionError(13, f"mkdir {directory}: permission denied")
        try:
            directory.mkdir(mode)
        except FileExistsError:  # made meanwhile by a concurrent request
            continue
        os.chown(directory, UID, GID)
    if not path.is_dir():
        raise NotADirectoryError(20, f"not a directory: {path}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_fifo(directory: Path, data: bytes) -> None:
    """Open the command's input FIFO for writing and write ``data``. The daemon polls its
    non-blocking open every 25 ms while the FIFO is missing (the command's script has not made it
    yet) or has no reader (``openCommandInput`` in ``input.go``: "the async receipt may precede
    FIFO creation or its reader opening"); the fake polls too, up to 30 s, so that no thread of
    the fake can hang for ever."""
    for _ in range(3000):
        try:
            fd = os.open(directory / "input.pipe", os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.ENOENT):  # no reader, or no FIFO, yet
                raise
            if (directory / "exit_code").exists():  # the daemon's 410, checked on each round
                raise OSError(errno.EPIPE, "the command has completed") from None
            time.sleep(0.01)
    else:
        raise OSError(errno.ENXIO, "no reader on the input pipe")
    try:
        os.set_blocking(fd, True)
        _write_all(fd, data)
    finally:
        os.close(fd)


def _to_latin1(path: str) -> str:
    """``toLatin1``: backslashes and quotes escaped, CR/LF/NUL dropped, control characters and
    characters past Latin-1 replaced by ``_`` (``pkg/toolbox/fs/download_files.go``)."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r", "").replace("\n", "").replace("\x00", "")
    return "".join("_" if ord(c) > 0xFF or ord(c) < 0x20 or c == "\x7f" else c for c in escaped)


def _rfc5987(path: str) -> str:
    """``encodeRFC5987``: every byte outside RFC 5987's attr-chars percent-encoded."""
    safe = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&+-.^_`|~")
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in path.encode())


def _split_command(command: str) -> list[str]:
    """The daemon's ``parseCommand``: spaces split outside quotes; no escapes, no shell."""
    args: list[str] = []
    current, quote = "", ""
    for ch in command:
        if ch in "\"'":
            if not quote:
                quote = ch
            elif quote == ch:
                quote = ""
            else:
                current += ch
        elif ch == " " and not quote:
            if current:
                args.append(current)
            current = ""
        else:
            current += ch
    if current:
        args.append(current)
    return args
