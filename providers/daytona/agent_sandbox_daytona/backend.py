"""``DaytonaBackend``: the agent-sandbox contract on Daytona's official async SDK.

Lifecycle through ``AsyncDaytona``; processes as session commands under a wrapper that keeps
output byte-exact and ends the stream as soon as the command does (``_process``); files through
the toolbox's file endpoints (list, info, folder, delete, streamed upload and download), never an
exec per file. The vendor behaviours relied on are listed in ``docs/providers/daytona.md``. The
SDK is imported in a worker thread on first use, never on the event loop.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import functools
import importlib
import math
import posixpath
import re
import shlex
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal

import anyio
from pydantic import Field, SecretStr

from agent_sandbox import errors as err
from agent_sandbox import file_access, models, tree
from agent_sandbox import labels as _labels
from agent_sandbox._imports import import_in_thread
from agent_sandbox.backend import BaseBackend, ProviderOptions
from agent_sandbox.models import FileInfo, SandboxInfo, SandboxSpec, StartOptions
from agent_sandbox.process import ProcessHandle
from agent_sandbox.retry import retry

from ._process import UNTRAP, WRAPPER, SessionProcess

NAME = "daytona"
LANGUAGE_LABEL = "code-toolbox-language"  # the SDK adds it to every sandbox; not ours to show
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GONE = ("destroyed", "destroying")
_STATES: dict[str, models.SandboxState] = {
    "started": "running", "paused": "paused", "pausing": "paused", "stopped": "stopped",
    "stopping": "stopped", "archived": "stopped", "archiving": "stopped",
}  # fmt: skip


async def sdk() -> Any:
    """The ``daytona`` module, imported (about a second) in a worker thread the first time."""
    return await import_in_thread("daytona")


class DaytonaOptions(ProviderOptions):
    """Options of the Daytona provider. Credentials default to the SDK's environment variables
    (``DAYTONA_API_KEY``, or ``DAYTONA_JWT_TOKEN`` + ``DAYTONA_ORGANIZATION_ID``;
    ``DAYTONA_API_URL``; ``DAYTONA_TARGET``)."""

    provider: Literal["daytona"] = "daytona"
    api_key: SecretStr | None = None
    api_url: str | None = None
    target: str | None = None
    """Region; the organisation's default when unset."""
    jwt_token: SecretStr | None = None
    organization_id: str | None = None
    public: bool = False
    """Make preview links (``expose_port``) reachable without a token."""
    create_timeout: float = Field(default=120.0, gt=0)
    """Seconds Daytona may take to create and start a sandbox (image builds can be slow)."""
    api_attempts: int = Field(default=3, ge=1)
    """Attempts at a call that failed transiently (network, 5xx, rate limit)."""
    preview_expiry_seconds: int = Field(default=3600, ge=1, le=86400)
    """Lifetime of the signed URL ``expose_port`` returns."""

    # Credentials, addresses and public links only from code, the environment or user config.
    project_settable: ClassVar[frozenset[str]] = frozenset(
        {"target", "create_timeout", "api_attempts"}
    )


def _table(exc: Exception, lower: str) -> err.SandboxError | None:
    """Daytona's own error rows (the shared HTTP-status rows come after them)."""
    import aiohttp
    import daytona as d

    rows = [
        (isinstance(exc, d.DaytonaAuthenticationError), err.AuthenticationError),
        ("sandbox with id or name" in lower or "sandbox not found" in lower, err.SandboxNotFound),
        ("session not found" in lower or "command not found" in lower, err.ProcessNotFound),
        ("points to a directory" in lower or "is a directory" in lower, err.IsADirectory),
        (isinstance(exc, d.DaytonaFileAccessDeniedError) or "permission denied" in lower, err.PermissionDenied),
        ("read-only file system" in lower, err.PermissionDenied),
        (isinstance(exc, d.DaytonaFileNotFoundError), err.FileNotFound),
        (isinstance(exc, d.DaytonaInvalidFilePathError), err.InvalidPath),
        (isinstance(exc, d.DaytonaTimeoutError), err.OperationTimeout),
        (isinstance(exc, (d.DaytonaConnectionError, aiohttp.ClientError)), err.ProviderUnavailable),
        ("command has already completed" in lower, err.StdinClosed),
    ]  # fmt: skip
    return next((error(f"Daytona: {exc}") for hit, error in rows if hit), None)


class DaytonaBackend(BaseBackend):
    """Sandboxes on Daytona (https://daytona.io), through the official async SDK."""

    name = NAME
    Options = DaytonaOptions
    capabilities = models.Capabilities(
        network_none=True, network_allowlist=True, expose_port=True, snapshot=True, pause=True,
        resources=True, stdin_streaming=True, reattach=True,
    )  # fmt: skip

    def __init__(self, options: ProviderOptions | None = None) -> None:
        super().__init__(options)
        self.opts: DaytonaOptions = self.options  # type: ignore[assignment]
        self._client: Any = None
        self._cache: dict[str, Any] = {}

    # -- plumbing -------------------------------------------------------------------------------

    async def _sdk(self) -> Any:
        if self._client is None:
            d = await sdk()
            o = self.opts
            config = d.DaytonaConfig(api_key=_secret(o.api_key), api_url=o.api_url, target=o.target,
                                     jwt_token=_secret(o.jwt_token), organization_id=o.organization_id)  # fmt: skip
            with err.translating(NAME, "connect", table=_table):
                self._client = d.AsyncDaytona(config)
        return self._client

    async def _call(self, op: str, sid: str | None, call: Any) -> Any:
        """A call to Daytona: typed errors, transient failures retried."""

        async def once() -> Any:
            with err.translating(NAME, op, sid, table=_table):
                return await call()

        return await retry(once, attempts=self.opts.api_attempts)

    async def _sandbox(self, sandbox_id: str, op: str) -> Any:
        if sandbox_id not in self._cache:
            client = await self._sdk()
            sb = await self._call(op, sandbox_id, lambda: client.get(sandbox_id))
            if _state(sb) in _GONE:
                raise err.SandboxNotFound(f"sandbox {sandbox_id} is destroyed", provider=NAME)
            self._cache[sandbox_id] = sb
        return self._cache[sandbox_id]

    async def _work_dir(self, sb: Any) -> str | None:
        """The image's working directory, as the toolbox reports it (unless the sandbox was
        created with a workdir of ours, or is not running to ask)."""
        if (sb.labels or {}).get(_labels.WORKDIR) or _state(sb) != "started":
            return None
        with contextlib.suppress(err.SandboxError):
            return str(await self._call("connect", sb.id, sb.get_work_dir))
        return None

    def _describe(self, sb: Any, workdir: str | None = None) -> SandboxInfo:
        labels = _labels.public(sb.labels or {}, LANGUAGE_LABEL)
        state = str(getattr(sb.state, "value", sb.state) or "unknown")
        dockerfile = getattr(getattr(sb, "build_info", None), "dockerfile_content", None) or ""
        image = next(iter(re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)), None)
        created = (
            datetime.fromisoformat(sb.created_at.replace("Z", "+00:00")) if sb.created_at else None
        )
        return SandboxInfo(
            id=sb.id, provider=NAME, state=_STATES.get(state, "unknown"), labels=labels,
            created_at=created, expires_at=_labels.expires_at(labels), image=image or sb.snapshot,
            workdir=(sb.labels or {}).get(_labels.WORKDIR) or workdir or "/home/daytona",
            metadata={"target": str(sb.target), "state": state, "name": str(sb.name)},
        )  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------------

    def _params(self, spec: SandboxSpec, name: str) -> Any:
        d = importlib.import_module("daytona")
        common: dict[str, Any] = {
            "name": name, "env_vars": dict(spec.env), "public": self.opts.public,
            "labels": {**spec.labels, **({_labels.WORKDIR: spec.workdir} if spec.workdir else {})},
            "ttl_minutes": _minutes(spec.ttl_seconds),  # Daytona's wall-clock lifetime
            # no idle timeout asked for: never stop on idleness, the TTL ends the sandbox
            "auto_stop_interval": _minutes(spec.idle_timeout_seconds) if spec.idle_timeout_seconds else 0,
            "auto_delete_interval": 0,  # a sandbox that stops is deleted: nothing lingers
        }  # fmt: skip
        if spec.network.mode == "none":
            common["network_block_all"] = True
        elif spec.network.mode == "allowlist":
            cidrs, domains = spec.network.split()
            common |= {"network_allow_list": ",".join(cidrs)} if cidrs else {}
            common |= {"domain_allow_list": ",".join(domains)} if domains else {}
        sized = any(v is not None for v in (spec.cpus, spec.memory_mib, spec.disk_mib))
        if spec.snapshot is not None or spec.image is None:
            if sized:
                raise self._unsupported("cpus / memory_mib / disk_mib without an image (Daytona "
                                        "sizes a snapshot's sandboxes; give SandboxSpec.image)")  # fmt: skip
            return d.CreateSandboxFromSnapshotParams(snapshot=spec.snapshot, **common)
        cpu = None if spec.cpus is None else math.ceil(spec.cpus)
        resources = (
            d.Resources(cpu=cpu, memory=_gib(spec.memory_mib), disk=_gib(spec.disk_mib))
            if sized
            else None
        )
        return d.CreateSandboxFromImageParams(image=spec.image, resources=resources, **common)

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox; a transient failure is retried, and the sandbox a failed attempt
        made anyway (found by its name) is kept if started, deleted otherwise."""
        self.check_spec(spec)
        client = await self._sdk()
        self._params(spec, "check")  # Unsupported before anything is sent

        async def attempt() -> Any:
            name = f"agent-sandbox-{uuid.uuid4().hex[:20]}"  # a new one: Daytona holds old names
            try:
                with err.translating(NAME, "create", table=_table):
                    return await client.create(
                        self._params(spec, name), timeout=self.opts.create_timeout
                    )
            except err.SandboxError:
                with contextlib.suppress(Exception):
                    made = await client.get(name)
                    if _state(made) == "started":
                        return made
                    await made.delete()  # half-made: never left behind
                raise

        sb = await retry(attempt, attempts=self.opts.api_attempts)
        self._cache[sb.id] = sb
        try:
            if spec.workdir:
                await self._call("create", sb.id, lambda: sb.fs.create_folder(spec.workdir, "755"))
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sb.delete()
            raise
        return self._describe(sb, await self._work_dir(sb))

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe an existing sandbox (fresh from the API). Raises ``SandboxNotFound``."""
        self._cache.pop(sandbox_id, None)
        sb = await self._sandbox(sandbox_id, "connect")
        return self._describe(sb, await self._work_dir(sb))

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Sandboxes carrying all of ``labels`` (filtered by Daytona)."""
        d, client = await sdk(), await self._sdk()

        async def gather() -> builtins.list[Any]:
            query = d.ListSandboxesQuery(labels=dict(labels)) if labels else None
            return [sb async for sb in client.list(query)]

        found = await self._call("list", None, gather)
        return [self._describe(sb) for sb in found if _state(sb) not in _GONE]

    async def destroy(self, sandbox_id: str) -> None:
        """Delete the sandbox (Daytona's delete is a soft delete: no graceful stop to wait for).
        One already gone, or already being deleted (409 meanwhile), is fine."""
        self._cache.pop(sandbox_id, None)
        try:
            sb = await self._sandbox(sandbox_id, "destroy")
            self._cache.pop(sandbox_id, None)
            await self._call("destroy", sandbox_id, sb.delete)
        except err.SandboxNotFound:
            return
        except err.SandboxConflict:
            with contextlib.suppress(err.SandboxNotFound):
                sb = await (await self._sdk()).get(sandbox_id)
                if _state(sb) not in _GONE and sb.desired_state != "destroyed":
                    raise

    async def aclose(self) -> None:
        """Close the SDK's HTTP session."""
        client, self._client = self._client, None
        self._cache.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    # -- processes ------------------------------------------------------------------------------

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Start ``argv`` as a session command of a session of its own (named by its ref)."""
        bad = [name for name in options.env if not _ENV_NAME.fullmatch(name)]
        if bad:  # the wrapper exports them: a shell takes identifiers only
            raise err.ConfigError(f"invalid environment variable name for Daytona: {bad[0]!r}",
                                  provider=NAME, op="exec", sandbox_id=sandbox_id)  # fmt: skip
        d = await sdk()
        sb = await self._sandbox(sandbox_id, "exec")
        ref = tree.new_ref()
        session = ref if options.detached else "asbx" + ref[3:]
        streamed = options.stdin is not None or options.stdin_open
        env = [f"{k}={v}" for k, v in options.env.items()]
        line = UNTRAP + shlex.join(["sh", "-c", WRAPPER, "asb", ref, "1" if streamed else "0",
                                    options.cwd or "", str(len(env)), *env, *argv])  # fmt: skip
        request = d.SessionExecuteRequest(command=line, run_async=True, suppress_input_echo=True)

        async def create_session() -> None:
            try:
                await sb.process.create_session(session)
            except Exception as exc:  # a name of our own: an attempt whose reply was lost made it
                if "session already exists" not in str(exc).lower():
                    raise

        async def delete_session() -> None:  # and with it whatever still runs in it
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sb.process.delete_session(session)

        await self._call("exec", sandbox_id, create_session)
        proc: SessionProcess | None = None
        try:
            with err.translating(NAME, "exec", sandbox_id, table=_table):  # once: it runs it
                cmd_id = (await sb.process.execute_session_command(session, request)).cmd_id
            # An exec's session goes when it is closed; a started process's stays, to attach.
            on_close = None if options.detached else delete_session
            proc = self._handle(sandbox_id, ref, session, cmd_id, on_close)
            await proc.begin(options.stdin, options.stdin_open)
        except BaseException:
            if proc is not None:
                await proc.close()
            if options.detached or proc is None:
                await delete_session()
            raise
        return proc

    def _handle(
        self, sid: str, ref: str, session: str, cmd_id: str, on_close: Any
    ) -> SessionProcess:
        sb = self._cache[sid]

        async def kill() -> None:
            """The command's tree: everything carrying its mark and their descendants; as root
            through ``sudo -n`` where the image grants it (Daytona's does), so children that
            ``sudo`` die too, else as the sandbox's user."""
            script = base64.b64encode(tree.KILL.encode()).decode()
            run = f'sh -c "$k" kill {ref} -'
            command = f"sh -c 'k=$(echo {script} | base64 -d); sudo -n {run} 2>/dev/null || {run}'"
            await self._call("exec", sid, lambda: sb.process.exec(command, timeout=60))

        translate = functools.partial(
            err.translate, provider=NAME, op="exec", sandbox_id=sid, table=_table
        )
        return SessionProcess(ref, sb.process, session, cmd_id, kill, translate, on_close)

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """Follow a process by ref: Daytona replays its output from the start, then streams it."""
        if not tree.REF.fullmatch(ref):
            raise err.ProcessNotFound(f"no process {ref!r}", provider=NAME, sandbox_id=sandbox_id)
        sb = await self._sandbox(sandbox_id, "attach")
        found = await self._call("attach", sandbox_id, lambda: sb.process.get_session(ref))
        proc = self._handle(sandbox_id, ref, ref, found.commands[0].id, None)
        await proc.begin(None, True)
        return proc

    async def processes(self, sandbox_id: str) -> builtins.list[models.ProcessInfo]:
        """Processes started with ``Sandbox.start``: their sessions, as the daemon lists them."""
        sb = await self._sandbox(sandbox_id, "processes")
        found = []
        for session in await self._call("processes", sandbox_id, sb.process.list_sessions):
            if tree.REF.fullmatch(session.session_id) and session.commands:
                cmd = session.commands[0]
                argv = shlex.split(cmd.command.removeprefix(UNTRAP))
                command = (
                    tuple(argv[8 + int(argv[7]) :]) if len(argv) > 7 and argv[7].isdigit() else ()
                )
                found.append(models.ProcessInfo(ref=session.session_id, command=command,
                                                running=cmd.exit_code is None, exit_code=cmd.exit_code))  # fmt: skip
        return found

    # -- files ----------------------------------------------------------------------------------

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = models.DEFAULT_READ_LIMIT
    ) -> bytes:
        """One regular file, streamed from the toolbox. The daemon reads as the sandbox's user
        (it runs as that user); its file info, first, refuses what is not a regular file (the
        download would block on a FIFO) or too large."""
        info = await self.stat(sandbox_id, path)
        sb = self._cache[sandbox_id]
        with err.translating(NAME, "read_file", sandbox_id, table=_table):
            if info.type == "dir":
                raise err.IsADirectory(f"invalid file path: path points to a directory: {path}")
            if info.type != "file":
                raise err.InvalidPath(f"read_file {path}: not a regular file (a FIFO or device)")
            if info.size > max_bytes:
                raise err.FileTooLarge(f"read_file {path}: larger than max_bytes={max_bytes}")
            if info.size == 0:
                return b""  # the SDK's streamed download refuses a part without data
            stream = await sb.fs.download_file_stream(path)
            return await file_access.read_stream(stream, path, max_bytes)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Upload one file, streamed; the toolbox creates missing parents.

        The toolbox replaces a file by renaming a new one over it (0644, whatever the old mode):
        a command of the sandbox's user checks first that this user may replace (or create) it,
        and a replaced file gets its mode back.
        """
        mode = await file_access.check_write(self, sandbox_id, path)
        sb = await self._sandbox(sandbox_id, "write_file")
        with err.translating(NAME, "write_file", sandbox_id, table=_table):
            await sb.fs.upload_file_stream(file_access.chunks_of(data), path)
            if mode is not None and mode != 0o644:
                await sb.fs.set_file_permissions(path, mode=f"{mode:o}")

    def _file_info(self, path: str, raw: Any) -> FileInfo:
        kind: models.FileType = (
            "dir" if raw.is_dir else "file" if raw.mode.startswith("-") else "other"
        )
        when = datetime.fromisoformat((raw.modified_at or raw.mod_time).replace("Z", "+00:00"))
        return FileInfo(path=path, name=posixpath.basename(path.rstrip("/")) or "/", type=kind,
                        size=raw.size, mode=int(raw.permissions, 8), mtime=when.timestamp())  # fmt: skip

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """The toolbox's file info (it follows a final symlink). Raises ``FileNotFound``."""
        sb = await self._sandbox(sandbox_id, "stat")
        with err.translating(NAME, "stat", sandbox_id, table=_table):
            return self._file_info(path, await sb.fs.get_file_info(path))

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """The toolbox's listing, sorted by name (symlinks followed; a dangling one is left out).
        Raises ``FileNotFound``, ``InvalidPath`` for a file."""
        info = await self.stat(sandbox_id, path)
        if info.type != "dir":
            raise err.InvalidPath(f"not a directory: {path}", provider=NAME, sandbox_id=sandbox_id)
        sb = self._cache[sandbox_id]
        with err.translating(NAME, "list_dir", sandbox_id, table=_table):
            found = await sb.fs.list_files(path)
        entries = [self._file_info(posixpath.join(path, f.name), f) for f in found]
        return sorted(entries, key=lambda e: e.name)

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """The toolbox's delete (a directory only with ``recursive``). Raises ``FileNotFound``."""
        sb = await self._sandbox(sandbox_id, "remove")
        with err.translating(NAME, "remove", sandbox_id, table=_table):
            await sb.fs.delete_file(path, recursive=recursive)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """The toolbox's ``MkdirAll`` (0755); an existing directory is fine."""
        sb = await self._sandbox(sandbox_id, "mkdir")
        with err.translating(NAME, "mkdir", sandbox_id, table=_table):
            await sb.fs.create_folder(path, "755")

    # -- optional capabilities ------------------------------------------------------------------

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """A signed preview URL for ``port`` (it carries its own token, expiring after
        ``preview_expiry_seconds``); with ``public=True``, the plain preview link."""
        if not 1 <= port <= 65535:
            raise err.InvalidPath(f"invalid port {port}", provider=NAME, op="expose_port")
        sb = await self._sandbox(sandbox_id, "expose_port")
        if self.opts.public:
            return str(
                (await self._call("expose_port", sandbox_id, lambda: sb.get_preview_link(port))).url
            )
        expiry = self.opts.preview_expiry_seconds
        signed = lambda: sb.create_signed_preview_url(port, expires_in_seconds=expiry)  # noqa: E731
        return str((await self._call("expose_port", sandbox_id, signed)).url)

    async def snapshot(self, sandbox_id: str) -> str:
        """Save the sandbox's filesystem as a Daytona snapshot; returns its name."""
        sb = await self._sandbox(sandbox_id, "snapshot")
        name = f"agent-sandbox-{uuid.uuid4().hex[:20]}"
        await self._call("snapshot", sandbox_id, lambda: sb.create_snapshot(name))
        return name

    async def pause(self, sandbox_id: str) -> None:
        """Pause the sandbox (Daytona keeps its memory; only some sandbox classes can)."""
        sb = await self._sandbox(sandbox_id, "pause")
        try:
            await self._call("pause", sandbox_id, sb.pause)
        except err.ConfigError as exc:
            if "support" not in str(exc).lower():
                raise
            raise self._unsupported(f"pause for this sandbox class ({exc})") from exc

    async def resume(self, sandbox_id: str) -> None:
        """Start a paused sandbox again."""
        sb = await self._sandbox(sandbox_id, "resume")
        await self._call("resume", sandbox_id, sb.start)


def _state(sb: Any) -> str:
    return str(getattr(sb.state, "value", sb.state))


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def _minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))


def _gib(mib: int | None) -> int | None:
    return None if mib is None else max(1, math.ceil(mib / 1024))
