"""``DaytonaBackend``: the agent-sandbox contract on Daytona's official async SDK.

How the contract maps (details and limits in ``docs/providers/daytona.md``):

* create: ``CreateSandboxFromImageParams`` (``spec.image``, with ``Resources`` rounded up to whole
  cores and GiB) or ``CreateSandboxFromSnapshotParams`` (``spec.snapshot`` or Daytona's default);
  ``env_vars``, ``labels``; ``ttl_seconds`` -> ``ttl_minutes`` (Daytona's wall-clock lifetime);
  ``idle_timeout_seconds`` -> ``auto_stop_interval`` with ``auto_delete_interval=0`` (a stopped
  sandbox is deleted); network ``none`` -> ``network_block_all``, ``allowlist`` -> CIDRs in
  ``network_allow_list`` and host names in ``domain_allow_list``. Every create carries a unique
  name, so a retried create finds the first attempt's sandbox instead of making a second one.
* exec: one Daytona *session* per command (``execute_session_command(run_async=True)``), its log
  stream read as bytes with stdout and stderr kept apart, the exit code from
  ``get_session_command``; the session is deleted afterwards, which on a timeout kills the
  command. Per-command cwd, env and stdin are applied by a small shell prologue (the session API
  has none of them); stdin is uploaded as a file first, so it is binary-safe and ends with EOF.
* files through the toolbox file API (multipart upload/download), never through argv.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import math
import re
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr

from agent_sandbox import file_access
from agent_sandbox import labels as _labels
from agent_sandbox.backend import BaseBackend, ProviderOptions, argv_of
from agent_sandbox.errors import (
    AuthenticationError,
    CommandTimeout,
    ConfigError,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    OperationTimeout,
    PermissionDenied,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
)
from agent_sandbox.labels import expires_at
from agent_sandbox.models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
)

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox

NAME = "daytona"
WORKDIR_LABEL = _labels.WORKDIR
LANGUAGE_LABEL = "code-toolbox-language"  # the SDK adds it to every sandbox; not ours to show
EXIT_STATUS_GRACE = 30.0
"""Seconds to wait, after a command's output ends, for the daemon to record its exit status."""
STDOUT_PREFIX = b"\x01\x01\x01"
STDERR_PREFIX = b"\x02\x02\x02"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STATES: dict[str, SandboxState] = {
    "started": "running",
    "paused": "paused",
    "pausing": "paused",
    "stopped": "stopped",
    "stopping": "stopped",
    "archived": "stopped",
    "archiving": "stopped",
}


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
    create_attempts: int = Field(default=3, ge=1)
    """Tries of a create that failed transiently (network, 5xx, rate limit)."""
    preview_expiry_seconds: int = Field(default=3600, ge=1, le=86400)
    """Lifetime of the signed URL ``expose_port`` returns."""
    timeout_backstop: bool = True
    """Also run a command that has a timeout under GNU ``timeout -s KILL`` (when the image has
    it), so its whole process group dies even where deleting the session does not kill it.
    Costs one extra process per command with a timeout."""

    # Credentials, addresses, public links and the timeout backstop stay out of project files:
    # only code, the environment or the user's config set them.
    project_settable: ClassVar[frozenset[str]] = frozenset(
        {"target", "create_timeout", "create_attempts"}
    )


class _Demux:
    """Splits Daytona's log stream (chunks tagged by 3-byte markers) into stdout/stderr bytes."""

    def __init__(self) -> None:
        self._buf = b""
        self._kind: Literal["stdout", "stderr"] | None = None

    def feed(self, data: bytes, final: bool = False) -> list[tuple[str, bytes]]:
        buf = self._buf + data
        out: list[tuple[str, bytes]] = []
        while True:
            found = [(i, k) for k, m in (("stdout", STDOUT_PREFIX), ("stderr", STDERR_PREFIX))
                     if (i := buf.find(m)) != -1]  # fmt: skip
            if not found:
                break
            index, kind = min(found)
            if index and self._kind is not None:
                out.append((self._kind, buf[:index]))
            self._kind = "stdout" if kind == "stdout" else "stderr"
            buf = buf[index + 3 :]
        # Hold back a tail that may be the start of a marker split across frames.
        keep = (
            0 if final else next((n for n in (2, 1) if buf[-n:] in (b"\x01" * n, b"\x02" * n)), 0)
        )
        ready, self._buf = (buf[: len(buf) - keep], buf[len(buf) - keep :]) if keep else (buf, b"")
        if ready and self._kind is not None:
            out.append((self._kind, ready))
        return out


def _minutes(seconds: float) -> int:
    return max(1, math.ceil(seconds / 60))


def _gib(mib: int) -> int:
    return max(1, math.ceil(mib / 1024))


def _split_allowlist(allow: tuple[str, ...]) -> tuple[list[str], list[str]]:
    cidrs, domains = [], []
    for entry in allow:
        try:
            cidrs.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            domains.append(entry)
    return cidrs, domains


def _parse_time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class DaytonaBackend(BaseBackend):
    """Sandboxes on Daytona (https://daytona.io), through the official async SDK."""

    name = NAME
    Options = DaytonaOptions
    capabilities = Capabilities(
        network_none=True,
        network_allowlist=True,
        expose_port=True,
        snapshot=True,
        pause=True,
        exec_user=False,
        stdin=True,
        resources=True,
        gpu=False,
        persistent=True,
        isolated=True,
        signals=False,  # the session API reports only the shell's status: 128+N, not "signal N"
    )

    def __init__(self, options: ProviderOptions | None = None) -> None:
        super().__init__(options)
        self._client: AsyncDaytona | None = None
        self._cache: dict[str, AsyncSandbox] = {}
        self._workdirs: dict[str, str] = {}

    @property
    def opts(self) -> DaytonaOptions:
        """The validated options."""
        assert isinstance(self.options, DaytonaOptions)
        return self.options

    # -- plumbing ---------------------------------------------------------------------------

    def _sdk(self) -> AsyncDaytona:
        if self._client is None:
            try:
                from daytona import AsyncDaytona, DaytonaConfig
            except ImportError as exc:  # pragma: no cover - the extra pins it
                from agent_sandbox.errors import ProviderNotInstalled

                raise ProviderNotInstalled(
                    f'the daytona SDK is missing ({exc}); run: pip install "agent-sandbox[daytona]"',
                    provider=NAME,
                ) from exc
            o = self.opts
            config = DaytonaConfig(
                api_key=o.api_key.get_secret_value() if o.api_key else None,
                api_url=o.api_url,
                target=o.target,
                jwt_token=o.jwt_token.get_secret_value() if o.jwt_token else None,
                organization_id=o.organization_id,
            )
            try:
                self._client = AsyncDaytona(config)
            except Exception as exc:
                raise self._translate(exc, "connect_client") from exc
        return self._client

    def _translate(
        self, exc: BaseException, op: str, sandbox_id: str | None = None
    ) -> SandboxError:
        """A typed agent-sandbox error for any exception the SDK (or its transport) raised."""
        if isinstance(exc, SandboxError):
            return exc
        import aiohttp
        import daytona as d

        where: dict[str, Any] = {"provider": NAME, "op": op, "sandbox_id": sandbox_id}
        text = str(exc) or type(exc).__name__
        lowered = text.lower()
        if isinstance(exc, (d.DaytonaConnectionTimeoutError, asyncio.TimeoutError)):
            return OperationTimeout(f"daytona {op} timed out: {text}", **where)
        if isinstance(exc, (d.DaytonaConnectionError, aiohttp.ClientError, ConnectionError)):
            return ProviderUnavailable(f"cannot reach daytona: {text}", **where)
        if not isinstance(exc, d.DaytonaError):
            return ProviderError(f"daytona {op} failed: {text}", **where)
        status = exc.status_code
        if isinstance(exc, d.DaytonaFileNotFoundError) or (
            op in ("read_file", "write_file") and status == 404 and "sandbox" not in lowered
        ):
            return FileNotFound(text, **where)
        if isinstance(exc, d.DaytonaNotFoundError):
            return SandboxNotFound(f"daytona sandbox not found: {sandbox_id or text}", **where)
        if isinstance(exc, d.DaytonaFileAccessDeniedError) or "permission denied" in lowered:
            return PermissionDenied(text, **where)
        if "is a directory" in lowered or "path is a directory" in lowered:
            return IsADirectory(text, **where)
        if isinstance(exc, d.DaytonaInvalidFilePathError):
            return InvalidPath(text, **where)
        if isinstance(exc, d.DaytonaAuthenticationError):
            return AuthenticationError(f"daytona rejected the credentials: {text}", **where)
        if isinstance(exc, d.DaytonaRateLimitError):
            return RateLimited(f"daytona rate limit: {text}", **where)
        if isinstance(exc, d.DaytonaForbiddenError) or status == 403:
            if "quota" in lowered or "limit" in lowered:
                return QuotaExceeded(f"daytona quota: {text}", **where)
            return AuthenticationError(f"daytona refused the request: {text}", **where)
        if isinstance(exc, d.DaytonaConflictError):
            return SandboxConflict(text, **where)
        if isinstance(exc, d.DaytonaTimeoutError):
            return OperationTimeout(f"daytona {op} timed out: {text}", **where)
        if status is not None and status >= 500:
            return ProviderUnavailable(f"daytona answered {status}: {text}", **where)
        if isinstance(exc, d.DaytonaBadRequestError) or status in (400, 422):
            return ConfigError(f"daytona rejected the request: {text}", **where)
        return ProviderError(f"daytona {op} failed: {text}", **where)

    async def _sandbox(self, sandbox_id: str, op: str) -> AsyncSandbox:
        cached = self._cache.get(sandbox_id)
        if cached is not None:
            return cached
        try:
            sb = await self._sdk().get(sandbox_id)
        except Exception as exc:
            raise self._translate(exc, op, sandbox_id) from exc
        if str(getattr(sb.state, "value", sb.state)) in ("destroyed", "destroying"):
            raise SandboxNotFound(
                f"daytona sandbox {sandbox_id} is destroyed",
                provider=NAME,
                op=op,
                sandbox_id=sandbox_id,
            )
        self._cache[sandbox_id] = sb
        return sb

    def _info(self, sb: Any, workdir: str | None = None) -> SandboxInfo:
        labels = {k: v for k, v in (sb.labels or {}).items() if k != LANGUAGE_LABEL}
        state = str(getattr(sb.state, "value", sb.state) or "unknown")
        build = getattr(sb, "build_info", None)
        dockerfile = getattr(build, "dockerfile_content", None) or ""
        image = next(iter(re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)), None)
        workdir = workdir or labels.get(WORKDIR_LABEL) or self._workdirs.get(sb.id) or "/"
        metadata = {"target": str(sb.target), "state": state, "name": str(sb.name)}
        if sb.snapshot:
            metadata["snapshot"] = str(sb.snapshot)
        return SandboxInfo(
            id=sb.id,
            provider=NAME,
            state=_STATES.get(state, "unknown"),
            labels=labels,
            created_at=_parse_time(sb.created_at),
            # The expiry we promised (our label, to the second) rather than Daytona's, which is
            # rounded up to whole minutes: sweep() honours the TTL as asked.
            expires_at=expires_at(labels) or _parse_time(getattr(sb, "auto_destroy_at", None)),
            image=image or sb.snapshot,
            workdir=workdir,
            metadata=metadata,
        )

    async def _workdir(self, sb: AsyncSandbox) -> str:
        known = (sb.labels or {}).get(WORKDIR_LABEL) or self._workdirs.get(sb.id)
        if known:
            return known
        try:
            found = await sb.get_work_dir()
        except Exception as exc:
            raise self._translate(exc, "connect", sb.id) from exc
        self._workdirs[sb.id] = found
        return found

    # -- lifecycle --------------------------------------------------------------------------

    def _params(self, spec: SandboxSpec, name: str) -> Any:
        from daytona import CreateSandboxFromImageParams, CreateSandboxFromSnapshotParams, Resources

        labels = dict(spec.labels)
        if spec.workdir:
            labels[WORKDIR_LABEL] = spec.workdir
        common: dict[str, Any] = {
            "name": name,
            "env_vars": dict(spec.env),
            "labels": labels,
            "public": self.opts.public,
            "ttl_minutes": _minutes(spec.ttl_seconds),
            # No idle timeout asked for: never stop on idleness, the TTL ends the sandbox.
            "auto_stop_interval": _minutes(spec.idle_timeout_seconds)
            if spec.idle_timeout_seconds
            else 0,
            "auto_delete_interval": 0,  # a sandbox that stops is deleted: nothing lingers
        }
        if spec.network.mode == "none":
            common["network_block_all"] = True
        elif spec.network.mode == "allowlist":
            cidrs, domains = _split_allowlist(spec.network.allow)
            if cidrs:
                common["network_allow_list"] = ",".join(cidrs)
            if domains:
                common["domain_allow_list"] = ",".join(domains)
        sized = any(v is not None for v in (spec.cpus, spec.memory_mib, spec.disk_mib))
        if spec.snapshot is not None or spec.image is None:
            if sized:
                raise self._unsupported(
                    "cpus / memory_mib / disk_mib without an image (Daytona sizes sandboxes made "
                    "from a snapshot by the snapshot; give SandboxSpec.image)"
                )
            return CreateSandboxFromSnapshotParams(snapshot=spec.snapshot, **common)
        resources = None
        if sized:
            resources = Resources(
                cpu=math.ceil(spec.cpus) if spec.cpus is not None else None,
                memory=_gib(spec.memory_mib) if spec.memory_mib is not None else None,
                disk=_gib(spec.disk_mib) if spec.disk_mib is not None else None,
            )
        return CreateSandboxFromImageParams(image=spec.image, resources=resources, **common)

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox, retrying transient failures without leaving a duplicate behind."""
        self.check_spec(spec)
        client = self._sdk()
        self._params(spec, "check")  # raise Unsupported before anything is sent
        sb: AsyncSandbox | None = None
        for attempt in range(1, self.opts.create_attempts + 1):
            # A new name per attempt: Daytona may hold a deleted sandbox's name for a while.
            name = f"agent-sandbox-{uuid.uuid4().hex[:20]}"
            try:
                sb = await client.create(self._params(spec, name), timeout=self.opts.create_timeout)
                break
            except Exception as exc:
                err = self._translate(exc, "create")
                # Did the failed attempt create it anyway (lost reply, timeout while starting)?
                sb = await self._find_by_name(name)
                if sb is not None and str(getattr(sb.state, "value", sb.state)) == "started":
                    break
                if sb is not None:  # half-made: never leave it behind
                    await self._delete_quietly(sb)
                    sb = None
                if not err.retryable or attempt == self.opts.create_attempts:
                    raise err from exc
                await asyncio.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
        assert sb is not None
        self._cache[sb.id] = sb
        try:
            if spec.workdir:
                await sb.fs.create_folder(spec.workdir, "755")
            workdir = await self._workdir(sb)
        except Exception as exc:
            await self._delete_quietly(sb)
            raise self._translate(exc, "create", sb.id) from exc
        return self._info(sb, workdir)

    async def _find_by_name(self, name: str) -> AsyncSandbox | None:
        try:
            return await self._sdk().get(name)
        except Exception:
            return None

    async def _delete_quietly(self, sb: AsyncSandbox) -> None:
        self._cache.pop(sb.id, None)
        with contextlib.suppress(Exception):  # best effort; the TTL is the backstop
            await sb.delete()

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe an existing sandbox (fresh from the API). Raises ``SandboxNotFound``."""
        self._cache.pop(sandbox_id, None)
        sb = await self._sandbox(sandbox_id, "connect")
        return self._info(sb, await self._workdir(sb))

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Sandboxes carrying all of ``labels`` (filtered by Daytona)."""
        from daytona import ListSandboxesQuery

        query = ListSandboxesQuery(labels=dict(labels)) if labels else None
        found = []
        try:
            async for sb in self._sdk().list(query):
                state = str(getattr(sb.state, "value", sb.state))
                if state not in ("destroyed", "destroying"):
                    found.append(self._info(sb))
        except Exception as exc:
            raise self._translate(exc, "list") from exc
        return found

    async def destroy(self, sandbox_id: str) -> None:
        """Delete the sandbox (Daytona's delete does not wait for a graceful stop)."""
        try:
            sb = self._cache.pop(sandbox_id, None) or await self._sdk().get(sandbox_id)
            await sb.delete()
        except Exception as exc:
            err = self._translate(exc, "destroy", sandbox_id)
            if isinstance(err, SandboxNotFound):
                return
            raise err from exc
        finally:
            self._workdirs.pop(sandbox_id, None)

    async def aclose(self) -> None:
        """Close the SDK's HTTP session."""
        client, self._client = self._client, None
        self._cache.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()  # type: ignore[no-untyped-call]

    # -- exec -------------------------------------------------------------------------------

    def _command_line(
        self, argv: builtins.list[str], options: ExecOptions, stdin_path: str | None
    ) -> str:
        # A brace group, not a subshell and no ``exec``: no extra fork, and the session's own
        # shell (which records the exit status) is never replaced. The session is used once.
        parts = []
        if stdin_path is not None:
            parts.append(f"rm -f -- {shlex.quote(stdin_path)}")  # already open as stdin
        if options.cwd:
            parts.append(f"cd -- {shlex.quote(options.cwd)}")
        for key, value in options.env.items():
            if not _ENV_KEY.fullmatch(key):
                raise ConfigError(f"invalid environment variable name: {key!r}", provider=NAME)
            parts.append(f"export {key}={shlex.quote(value)}")
        line = shlex.join(argv)
        if options.timeout and self.opts.timeout_backstop:
            # Backstop inside the sandbox: GNU timeout kills the command's whole process group
            # a second after our client-side deadline, whatever the daemon's session deletion
            # does to grandchildren (older daemons kill only the session's shell).
            line = (
                f"if command -v timeout >/dev/null 2>&1; then timeout -s KILL "
                f"{math.ceil(options.timeout) + 1} {line}; else {line}; fi"
            )
        parts.append(line)
        source = shlex.quote(stdin_path) if stdin_path is not None else "/dev/null"
        return "{ " + " && ".join(parts) + f"; }} < {source}"

    async def exec_stream(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> AsyncIterator[ExecEvent]:
        """Run ``command`` in a fresh Daytona session, streaming stdout and stderr apart."""
        from daytona import SessionExecuteRequest

        if options.user is not None:
            raise self._unsupported("running a command as another user")
        argv = argv_of(command)
        stdin_path = None
        if options.stdin is not None:
            stdin_path = f"/tmp/.agent-sandbox-stdin-{uuid.uuid4().hex}"
        line = self._command_line(argv, options, stdin_path)  # validates before any call
        sb = await self._sandbox(sandbox_id, "exec")
        session = f"agent-sandbox-{uuid.uuid4().hex}"
        deadline = time.monotonic() + options.timeout if options.timeout else None
        created = started = False

        async def start() -> str:
            nonlocal created, started
            if stdin_path is not None:
                await sb.fs.upload_file(options.stdin or b"", stdin_path)
            await sb.process.create_session(session)
            created = True
            request = SessionExecuteRequest(command=line, run_async=True)
            response = await sb.process.execute_session_command(session, request)
            started = True
            return str(response.cmd_id)

        try:
            try:
                # The deadline covers the set-up calls too, not only the command.
                cmd_id = await asyncio.wait_for(
                    start(), None if deadline is None else max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                raise self._timeout(options, sandbox_id) from None
            except SandboxError:
                raise
            except Exception as exc:
                raise self._translate(exc, "exec", sandbox_id) from exc
            async for event in self._follow(sb, session, cmd_id, deadline, options):
                yield event
        finally:
            if created:
                with contextlib.suppress(Exception):
                    await sb.process.delete_session(session)  # kills what still runs
            if stdin_path is not None and not started:  # the command never consumed it
                with contextlib.suppress(Exception):
                    await sb.fs.delete_file(stdin_path)

    async def _follow(
        self,
        sb: AsyncSandbox,
        session: str,
        cmd_id: str,
        deadline: float | None,
        options: ExecOptions,
    ) -> AsyncIterator[ExecEvent]:
        import aiohttp
        from daytona.common.pty import WS_KEEPALIVE_INTERVAL_SECONDS

        # The SDK's get_session_command_logs_async decodes output to str (lossy for binary
        # data), so read the same WebSocket it would, as bytes, through the SDK's own session.
        api = sb.process._api_client
        _, url, headers, *_ = api._get_session_command_logs_serialize(
            session_id=session,
            command_id=cmd_id,
            follow=True,
            _request_auth=None,
            _content_type=None,
            _headers=None,
            _host_index=None,
        )
        url = re.sub(r"^http", "ws", url)
        demux = _Demux()
        try:
            # Keepalive pings as the SDK sends them: proxies drop silent WebSockets.
            ws = await api.api_client.http_session.ws_connect(
                url, headers=headers, heartbeat=WS_KEEPALIVE_INTERVAL_SECONDS
            )
        except Exception as exc:
            raise self._translate(exc, "exec", sb.id) from exc
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._timeout(options, sb.id)
                try:
                    msg = await asyncio.wait_for(ws.receive(), remaining)
                except TimeoutError:
                    raise self._timeout(options, sb.id) from None
                if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                    for kind, chunk in demux.feed(data):
                        yield ExecEvent(kind="stdout" if kind == "stdout" else "stderr", data=chunk)
                    continue
                if msg.type == aiohttp.WSMsgType.ERROR or (
                    msg.type == aiohttp.WSMsgType.CLOSE and msg.data not in (None, 1000)
                ):
                    raise ProviderUnavailable(
                        f"daytona log stream failed: {msg.extra or ws.exception() or msg.data}",
                        provider=NAME,
                        op="exec",
                        sandbox_id=sb.id,
                    )
                break
        finally:
            await ws.close()
        for kind, chunk in demux.feed(b"", final=True):
            yield ExecEvent(kind="stdout" if kind == "stdout" else "stderr", data=chunk)
        yield ExecEvent(
            kind="exit", exit_code=await self._exit_code(sb, session, cmd_id, deadline, options)
        )

    async def _exit_code(
        self,
        sb: AsyncSandbox,
        session: str,
        cmd_id: str,
        deadline: float | None,
        options: ExecOptions,
    ) -> int:
        delay = 0.01
        give_up = time.monotonic() + EXIT_STATUS_GRACE
        while True:
            try:
                cmd = await sb.process.get_session_command(session, cmd_id)
            except Exception as exc:
                raise self._translate(exc, "exec", sb.id) from exc
            if cmd.exit_code is not None:
                return int(cmd.exit_code)
            # The stream ended just before the daemon recorded the status.
            if deadline is not None and time.monotonic() + delay > deadline:
                raise self._timeout(options, sb.id)
            if time.monotonic() > give_up:
                raise ProviderError(
                    "daytona ended the command's log stream but never reported its exit status",
                    provider=NAME,
                    op="exec",
                    sandbox_id=sb.id,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _timeout(self, options: ExecOptions, sandbox_id: str) -> CommandTimeout:
        return CommandTimeout(
            f"command timed out after {options.timeout} s (its session was killed)",
            timeout=options.timeout,
            provider=NAME,
            op="exec",
            sandbox_id=sandbox_id,
        )

    # -- files ------------------------------------------------------------------------------

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Download one regular file through the toolbox file API, streamed.

        The toolbox reads whatever its own user may, and would block on a FIFO: a command of
        the sandbox's user checks first that this user may read it as a regular file of at most
        ``max_bytes``; the download stops past ``max_bytes`` anyway.
        """
        if await file_access.check_read(self, sandbox_id, path, max_bytes) == 0:
            return b""  # the SDK's streaming download fails on an empty file
        sb = await self._sandbox(sandbox_id, "read_file")
        where: dict[str, Any] = {"provider": NAME, "op": "read_file", "sandbox_id": sandbox_id}
        if not path.isascii():
            # The SDK's streaming download cannot take a part whose name comes RFC 5987-encoded
            # (as the toolbox sends non-ASCII names): such a file comes whole, bounded by the
            # check above only.
            try:
                data = await sb.fs.download_file(path)
            except Exception as exc:
                raise self._translate(exc, "read_file", sandbox_id) from exc
            content = data if isinstance(data, bytes) else bytes(data or b"")
            if len(content) > max_bytes:
                raise FileTooLarge(f"read_file {path}: larger than max_bytes={max_bytes}", **where)
            return content
        chunks: builtins.list[bytes] = []
        size = 0
        try:
            async for chunk in await sb.fs.download_file_stream(path):
                size += len(chunk)
                if size > max_bytes:  # it grew after the check
                    raise FileTooLarge(
                        f"read_file {path}: larger than max_bytes={max_bytes}", **where
                    )
                chunks.append(chunk)
        except SandboxError:
            raise
        except Exception as exc:
            raise self._translate(exc, "read_file", sandbox_id) from exc
        return b"".join(chunks)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Upload one file (multipart, streamed by the SDK); Daytona creates missing parents.

        The toolbox replaces a file whatever its mode and resets the mode to 0644: a command of
        the sandbox's user checks first that this user may replace (or create) it, and a
        replaced file gets its mode back.
        """
        mode = await file_access.check_write(self, sandbox_id, path)
        sb = await self._sandbox(sandbox_id, "write_file")
        try:
            await sb.fs.upload_file(bytes(data), path)
            if mode is not None and mode != 0o644:
                await sb.fs.set_file_permissions(path, mode=f"{mode:o}")
        except Exception as exc:
            raise self._translate(exc, "write_file", sandbox_id) from exc

    # -- optional capabilities --------------------------------------------------------------

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """A signed preview URL for ``port``: it carries its own token, so it opens in a browser
        without headers; it expires after ``preview_expiry_seconds``. With ``public=True`` the
        plain preview link (no token needed) is returned instead."""
        if not 1 <= port <= 65535:
            raise InvalidPath(f"invalid port {port}", provider=NAME, op="expose_port")
        sb = await self._sandbox(sandbox_id, "expose_port")
        try:
            if self.opts.public:
                return str((await sb.get_preview_link(port)).url)
            signed = await sb.create_signed_preview_url(
                port, expires_in_seconds=self.opts.preview_expiry_seconds
            )
        except Exception as exc:
            raise self._translate(exc, "expose_port", sandbox_id) from exc
        return str(signed.url)

    async def snapshot(self, sandbox_id: str) -> str:
        """Save the sandbox's filesystem as a Daytona snapshot; returns its name."""
        sb = await self._sandbox(sandbox_id, "snapshot")
        name = f"agent-sandbox-{uuid.uuid4().hex[:20]}"
        try:
            await sb.create_snapshot(name)
        except Exception as exc:
            raise self._translate(exc, "snapshot", sandbox_id) from exc
        return name

    async def pause(self, sandbox_id: str) -> None:
        """Pause the sandbox (Daytona keeps its memory; only some sandbox classes can)."""
        sb = await self._sandbox(sandbox_id, "pause")
        try:
            await sb.pause()
        except Exception as exc:
            err = self._translate(exc, "pause", sandbox_id)
            if isinstance(err, ConfigError) and "support" in str(err).lower():
                # Only some Daytona sandbox classes can pause; the API says so with a 400.
                raise self._unsupported(f"pause for this sandbox class ({err})") from exc
            raise err from exc

    async def resume(self, sandbox_id: str) -> None:
        """Start a paused sandbox again."""
        sb = await self._sandbox(sandbox_id, "resume")
        try:
            await sb.start()
        except Exception as exc:
            raise self._translate(exc, "resume", sandbox_id) from exc
