"""``E2BBackend``: the agent-sandbox contract on E2B's official ``e2b`` SDK (async flavour).

How the contract maps (details and limits in ``docs/providers/e2b.md``):

* create: ``AsyncSandbox.create(template=spec.snapshot or spec.image or options.template,
  timeout=ttl_seconds (E2B's native lifetime), metadata=labels, envs=env)``; network ``none`` ->
  ``allow_internet_access=False``, ``allowlist`` -> ``network={"allow_out": [...],
  "deny_out": ["0.0.0.0/0"]}``. CPU, memory and disk come from the template: asking for them is
  ``Unsupported``. Every create carries an idempotency key (reused by every retry, so a retried
  create returns the first attempt's sandbox) and the same key as a metadata label, so a create
  that finally fails removes whatever it made.
* exec: envd's process service through the SDK's generated connect-rpc ``ProcessClient`` (the
  client ``commands.run`` itself uses), because ``commands.run`` decodes output as UTF-8 and would
  corrupt binary output. The command runs as ``bash -l -c 'exec <argv>'`` like ``commands.run``;
  the output stays bytes, stdout and stderr apart; stdin goes through ``SendInput`` and
  ``CloseStdin``. envd signals only a command's own process, so every command carries a unique
  environment mark and a timeout (or an abandoned stream) kills every process bearing it.
  A command killed by a signal (envd: exit code -1, status ``signal: killed``) becomes
  ``128 + N`` with ``signal=N``.
* files: ``files.read`` / ``files.write`` (envd's ``/files``, streamed as octet-stream).
* ``pause`` / ``resume`` (``connect``), ``snapshot`` (``create_snapshot``; its id is a template for
  ``SandboxSpec.snapshot``) and ``expose_port`` (``get_host``) are E2B's native features.
* every ``e2b`` exception is translated into the agent-sandbox error hierarchy.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
import shlex
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

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
    Unsupported,
)
from agent_sandbox.models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    SandboxInfo,
    SandboxSpec,
)

if TYPE_CHECKING:
    from e2b import AsyncSandbox
    from e2b.envd.process.process_connect import ProcessClient

NAME = "e2b"
WORKDIR_LABEL = _labels.WORKDIR
USER_LABEL = _labels.USER
CREATE_KEY_LABEL = _labels.CREATE_KEY
_INTERNAL_LABELS = (WORKDIR_LABEL, USER_LABEL, CREATE_KEY_LABEL)
EXEC_MARK = "AGENT_SANDBOX_EXEC"
"""Environment variable marking every process of one command, so its whole tree can be killed."""
STDIN_CHUNK = 1 << 20
KILL_GRACE_SECONDS = 10.0
SERVER_DEADLINE_GRACE_SECONDS = 30.0
_KILL_TREE = (
    'for _ in 1 2 3; do kill -9 $(grep -lzx "$1" /proc/[0-9]*/environ 2>/dev/null'
    " | cut -d/ -f3) 2>/dev/null; done; true"
)

# Go's names of signals (envd reports ``ProcessState.String()``: "signal: killed").
_GO_SIGNALS = {
    "hangup": 1, "interrupt": 2, "quit": 3, "illegal instruction": 4,
    "trace/breakpoint trap": 5, "aborted": 6, "bus error": 7, "floating point exception": 8,
    "killed": 9, "user defined signal 1": 10, "segmentation fault": 11,
    "user defined signal 2": 12, "broken pipe": 13, "alarm clock": 14, "terminated": 15,
    "stack fault": 16, "child exited": 17, "continued": 18, "stopped (signal)": 19,
    "stopped": 20, "stopped (tty input)": 21, "stopped (tty output)": 22,
    "urgent I/O condition": 23, "CPU time limit exceeded": 24, "file size limit exceeded": 25,
    "virtual timer expired": 26, "profiling timer expired": 27, "window changed": 28,
    "I/O possible": 29, "power failure": 30, "bad system call": 31,
}  # fmt: skip


class E2BOptions(ProviderOptions):
    """Options of the E2B provider (``[e2b]`` in ``agent-sandbox.toml``, ``AGENT_SANDBOX_E2B_*``).

    Unset connection options fall back to the SDK's own environment variables
    (``E2B_API_KEY``, ``E2B_DOMAIN``, ...).
    """

    provider: Literal["e2b"] = "e2b"
    api_key: SecretStr | None = None
    """E2B API key; default ``E2B_API_KEY``."""
    domain: str | None = None
    """E2B domain (self-hosted or BYOC deployments); default ``E2B_DOMAIN`` or ``e2b.app``."""
    api_url: str | None = None
    """Control-plane URL override (tests, self-hosting); default ``E2B_API_URL``."""
    sandbox_url: str | None = None
    """Sandbox (envd) URL override (tests, self-hosting); default ``E2B_SANDBOX_URL``."""
    template: str = "base"
    """Template used when the spec names no image and no snapshot."""
    workdir: str = "/home/user"
    """Working directory of commands when the spec sets none (the template user's home)."""
    request_timeout: float = Field(default=60.0, gt=0)
    """Seconds for one API request."""
    sdk_retries: int = Field(default=3, ge=0)
    """The SDK's own retries of control-plane answers 429/502/503/504."""
    create_attempts: int = Field(default=3, ge=1)
    """Attempts at creating a sandbox when a failure is transient."""
    retry_backoff_seconds: float = Field(default=1.0, ge=0)
    """First wait between create attempts; doubles each time."""

    # Credentials and addresses stay out of project files (a cloned repository could send the
    # key elsewhere): only code, the environment or the user's config set them.
    project_settable: ClassVar[frozenset[str]] = frozenset(
        {"template", "workdir", "request_timeout", "sdk_retries", "create_attempts"}
        | {"retry_backoff_seconds"}
    )


@dataclass
class _Handle:
    sandbox: AsyncSandbox
    rpc: ProcessClient
    user: str | None


class E2BBackend(BaseBackend):
    """Sandboxes on E2B (https://e2b.dev) through the ``e2b`` SDK."""

    name = NAME
    Options = E2BOptions
    capabilities = Capabilities(
        network_none=True,
        network_allowlist=True,
        expose_port=True,
        snapshot=True,
        pause=True,
        exec_user=True,
        stdin=True,
        resources=False,
        gpu=False,
        persistent=True,
        isolated=True,
        signals=True,
    )

    def __init__(self, options: ProviderOptions | None = None) -> None:
        super().__init__(options)
        self.opts: E2BOptions = self.options  # type: ignore[assignment]
        self._handles: dict[str, _Handle] = {}

    # -- plumbing -------------------------------------------------------------------------------

    def _api(self) -> dict[str, Any]:
        """The SDK connection parameters (``ApiParams``) from our options."""
        o = self.opts
        params: dict[str, Any] = {
            "api_key": o.api_key.get_secret_value() if o.api_key else None,
            "domain": o.domain,
            "api_url": o.api_url,
            "sandbox_url": o.sandbox_url,
            "request_timeout": o.request_timeout,
            "retries": o.sdk_retries,
        }
        return {k: v for k, v in params.items() if v is not None}

    def _err(self, exc: BaseException, op: str, sandbox_id: str | None = None) -> SandboxError:
        return translate(exc, op=op, sandbox_id=sandbox_id)

    async def _handle(self, sandbox_id: str, op: str) -> _Handle:
        """The SDK sandbox object for an id: cached, or rebuilt with ``connect``."""
        handle = self._handles.get(sandbox_id)
        if handle is not None:
            return handle
        from e2b import AsyncSandbox
        from e2b.envd.client_async import create_rpc_client
        from e2b.envd.process.process_connect import ProcessClient

        try:
            info = await AsyncSandbox.get_info(sandbox_id, **self._api())
            if info.state.value == "paused":
                raise ProviderError(
                    f"sandbox {sandbox_id} is paused; resume it first",
                    provider=NAME,
                    op=op,
                    sandbox_id=sandbox_id,
                )
            # connect() only ever extends a running sandbox's lifetime: asking for what is left
            # keeps the TTL as it was.
            end = info.end_at if info.end_at.tzinfo else info.end_at.replace(tzinfo=timezone.utc)
            left = (end - datetime.now(timezone.utc)).total_seconds()
            sbx = await AsyncSandbox.connect(sandbox_id, timeout=max(1, int(left)), **self._api())
        except SandboxError:
            raise
        except Exception as exc:
            raise self._err(exc, op, sandbox_id) from exc
        rpc = create_rpc_client(ProcessClient, sbx.envd_api_url, sbx.connection_config)
        handle = _Handle(sbx, rpc, info.metadata.get(USER_LABEL))
        self._handles[sandbox_id] = handle
        return handle

    def _remember(self, sbx: AsyncSandbox, user: str | None) -> None:
        from e2b.envd.client_async import create_rpc_client
        from e2b.envd.process.process_connect import ProcessClient

        rpc = create_rpc_client(ProcessClient, sbx.envd_api_url, sbx.connection_config)
        self._handles[sbx.sandbox_id] = _Handle(sbx, rpc, user)

    def _info(self, sdk: Any, workdir: str | None = None) -> SandboxInfo:
        meta = dict(sdk.metadata or {})
        for key in _INTERNAL_LABELS:
            value = meta.pop(key, None)
            if key == WORKDIR_LABEL and value:
                workdir = value
        return SandboxInfo(
            id=sdk.sandbox_id,
            provider=NAME,
            state="paused" if sdk.state.value == "paused" else "running",
            labels=meta,
            created_at=sdk.started_at,
            expires_at=sdk.end_at,
            image=sdk.name or sdk.template_id,
            workdir=workdir or self.opts.workdir,
            metadata={
                "template_id": sdk.template_id,
                "envd_version": sdk.envd_version,
                "cpu_count": str(sdk.cpu_count),
                "memory_mb": str(sdk.memory_mb),
            },
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def check_spec(self, spec: SandboxSpec) -> None:
        """Refuse what E2B cannot honour: resources (template-defined), disk, idle timeout."""
        super().check_spec(spec)
        if spec.disk_mib is not None:
            raise self._unsupported("disk_mib (disk size comes from the E2B template)")
        if spec.idle_timeout_seconds is not None:
            raise self._unsupported(
                "idle_timeout_seconds (E2B has a lifetime, not an idle timeout)"
            )

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox; transient failures are retried with the same idempotency key."""
        from e2b import AsyncSandbox

        self.check_spec(spec)
        template = spec.snapshot or spec.image or self.opts.template
        key = str(uuid.uuid4())
        metadata = {**spec.labels, CREATE_KEY_LABEL: key}
        if spec.workdir:
            metadata[WORKDIR_LABEL] = spec.workdir
        if spec.user:
            metadata[USER_LABEL] = spec.user
        kwargs: dict[str, Any] = {
            "template": template,
            "timeout": max(1, math.ceil(spec.ttl_seconds)),
            "metadata": metadata,
            "envs": dict(spec.env),
            "idempotency_key": key,
            **self._api(),
        }
        if spec.network.mode == "none":
            kwargs["allow_internet_access"] = False
        elif spec.network.mode == "allowlist":
            kwargs["network"] = {"allow_out": list(spec.network.allow), "deny_out": ["0.0.0.0/0"]}
        attempts = self.opts.create_attempts
        sbx: AsyncSandbox | None = None
        try:
            for attempt in range(attempts):
                try:
                    sbx = await AsyncSandbox.create(**kwargs)
                    break
                except Exception as exc:
                    err = self._err(exc, "create")
                    if not err.retryable or attempt == attempts - 1:
                        raise err from exc
                await asyncio.sleep(self.opts.retry_backoff_seconds * 2**attempt)
            assert sbx is not None
            self._remember(sbx, spec.user)
            if spec.workdir:
                result = await self.exec(
                    sbx.sandbox_id, ["mkdir", "-p", "--", spec.workdir], ExecOptions()
                )
                if not result.ok:
                    raise ProviderError(
                        f"cannot create workdir {spec.workdir}: {result.stderr.strip()}",
                        provider=NAME,
                        op="create",
                        sandbox_id=sbx.sandbox_id,
                    )
        except BaseException:
            with anyio_shield():
                await self._remove_created(key, sbx)
            raise
        now = datetime.now(timezone.utc)
        labels = {k: v for k, v in metadata.items() if k not in _INTERNAL_LABELS}
        return SandboxInfo(
            id=sbx.sandbox_id,
            provider=NAME,
            state="running",
            labels=labels,
            created_at=now,
            expires_at=now + timedelta(seconds=kwargs["timeout"]),
            image=template,
            workdir=spec.workdir or self.opts.workdir,
            metadata={"template_id": template, "envd_version": str(sbx._envd_version)},
        )

    async def _remove_created(self, key: str, sbx: AsyncSandbox | None) -> None:
        """Kill what a failed create made: its sandbox, or any carrying its create key."""
        from e2b import AsyncSandbox, SandboxQuery

        ids = {sbx.sandbox_id} if sbx is not None else set()
        with contextlib.suppress(Exception):
            paginator = AsyncSandbox.list(
                query=SandboxQuery(metadata={CREATE_KEY_LABEL: key}), **self._api()
            )
            while paginator.has_next:
                ids.update(s.sandbox_id for s in await paginator.next_items())
        for sid in ids:
            self._handles.pop(sid, None)
            with contextlib.suppress(Exception):
                await AsyncSandbox.kill(sid, **self._api())

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a sandbox by id. Raises ``SandboxNotFound``."""
        from e2b import AsyncSandbox

        try:
            info = await AsyncSandbox.get_info(sandbox_id, **self._api())
        except Exception as exc:
            raise self._err(exc, "connect", sandbox_id) from exc
        return self._info(info)

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Running and paused sandboxes whose metadata holds all of ``labels``."""
        from e2b import AsyncSandbox, SandboxQuery

        query = SandboxQuery(metadata=dict(labels)) if labels else None
        found: builtins.list[SandboxInfo] = []
        try:
            paginator = AsyncSandbox.list(query=query, **self._api())
            while paginator.has_next:
                found.extend(self._info(s) for s in await paginator.next_items())
        except Exception as exc:
            raise self._err(exc, "list") from exc
        return found

    async def destroy(self, sandbox_id: str) -> None:
        """Kill a sandbox at once; one already gone is fine."""
        from e2b import AsyncSandbox

        self._handles.pop(sandbox_id, None)
        try:
            await AsyncSandbox.kill(sandbox_id, **self._api())
        except Exception as exc:
            err = self._err(exc, "destroy", sandbox_id)
            if not isinstance(err, SandboxNotFound):
                raise err from exc

    async def aclose(self) -> None:
        """Forget cached sandbox handles (the SDK's connection pools are process-wide)."""
        self._handles.clear()

    # -- exec -----------------------------------------------------------------------------------

    async def exec_stream(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> AsyncIterator[ExecEvent]:
        """Run ``command`` through envd, yielding its output as it comes, then its exit."""
        from connectrpc.errors import ConnectError
        from e2b.connection_config import KEEPALIVE_PING_HEADER, KEEPALIVE_PING_INTERVAL_SEC
        from e2b.envd.process import process_pb
        from e2b.envd.utils import authentication_header

        argv = argv_of(command)
        handle = await self._handle(sandbox_id, "exec")
        user = options.user or handle.user
        mark = uuid.uuid4().hex
        config = process_pb.ProcessConfig(
            cmd="/bin/bash",
            args=["-l", "-c", "exec " + shlex.join(argv)],
            envs={**options.env, EXEC_MARK: mark},
            cwd=options.cwd,
        )
        headers = {
            **authentication_header(handle.sandbox._envd_version, user),
            KEEPALIVE_PING_HEADER: str(KEEPALIVE_PING_INTERVAL_SEC),
        }
        server_deadline = (
            None
            if options.timeout is None
            else int((options.timeout + SERVER_DEADLINE_GRACE_SECONDS) * 1000)
        )
        stream = handle.rpc.start(
            process_pb.StartRequest(process=config, stdin=options.stdin is not None),
            headers=headers,
            timeout_ms=server_deadline,
        )
        loop = asyncio.get_running_loop()
        pid: int | None = None
        feeder: asyncio.Task[None] | None = None
        killer: asyncio.Task[None] | None = None
        watchdog: asyncio.TimerHandle | None = None
        timed_out = False
        finished = False

        def kill() -> asyncio.Task[None]:
            return loop.create_task(self._kill_tree(handle, pid, mark, user))

        def on_timeout() -> None:
            nonlocal timed_out, killer
            timed_out = True
            killer = kill()

        try:
            async for message in stream:
                event = message.event.event if message.event is not None else None
                if event is None:
                    continue
                field, value = event.field, cast(Any, event.value)
                if field == "data":
                    output = value.output
                    if output is not None and output.value and output.field in ("stdout", "stderr"):
                        yield ExecEvent(kind=output.field, data=bytes(output.value))
                elif field == "start":
                    pid = int(value.pid)
                    if options.timeout is not None:
                        watchdog = loop.call_later(options.timeout, on_timeout)
                    if options.stdin is not None:
                        feeder = loop.create_task(self._feed(handle, pid, options.stdin))
                elif field == "end":
                    finished = True
                    if watchdog is not None:
                        watchdog.cancel()
                    if timed_out:
                        break
                    exit_code, sig = _exit_status(value)
                    if feeder is not None:
                        await _settle(feeder)
                    yield ExecEvent(kind="exit", exit_code=exit_code, signal=sig)
                    return
            if not timed_out:
                raise ProviderError(
                    "envd ended the command stream without an exit status",
                    provider=NAME,
                    op="exec",
                    sandbox_id=sandbox_id,
                )
            raise _timeout(options, sandbox_id)
        except ConnectError as exc:
            if not timed_out:
                raise self._err(exc, "exec", sandbox_id) from exc
            raise _timeout(options, sandbox_id) from exc
        finally:
            if watchdog is not None:
                watchdog.cancel()
            with anyio_shield():
                if not finished and pid is not None and killer is None:
                    killer = kill()
                if feeder is not None and not feeder.done():
                    feeder.cancel()
                if killer is not None:
                    with contextlib.suppress(Exception, asyncio.TimeoutError):
                        await asyncio.wait_for(killer, KILL_GRACE_SECONDS)
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]

    async def _feed(self, handle: _Handle, pid: int, data: bytes) -> None:
        from e2b.envd.process import process_pb

        selector = process_pb.ProcessSelector(selector=_oneof("pid", pid))
        with contextlib.suppress(Exception):
            for start in range(0, len(data), STDIN_CHUNK):
                await handle.rpc.send_input(
                    process_pb.SendInputRequest(
                        process=selector,
                        input=process_pb.ProcessInput(
                            input=_oneof("stdin", data[start : start + STDIN_CHUNK])
                        ),
                    )
                )
        with contextlib.suppress(Exception):
            await handle.rpc.close_stdin(process_pb.CloseStdinRequest(process=selector))

    async def _kill_tree(
        self, handle: _Handle, pid: int | None, mark: str, user: str | None
    ) -> None:
        """Kill every process carrying the command's mark, and the command itself."""
        from e2b.envd.process import process_pb

        if pid is not None:
            with contextlib.suppress(Exception):
                await handle.rpc.send_signal(
                    process_pb.SendSignalRequest(
                        process=process_pb.ProcessSelector(selector=_oneof("pid", pid)),
                        signal=process_pb.Signal.SIGKILL,
                    )
                )
        killer = ExecOptions(user=user, timeout=KILL_GRACE_SECONDS, cwd="/")
        with contextlib.suppress(Exception):
            await self.exec(
                handle.sandbox.sandbox_id,
                ["sh", "-c", _KILL_TREE, "kill-tree", f"{EXEC_MARK}={mark}"],
                killer,
            )

    # -- files ----------------------------------------------------------------------------------

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Content of a regular file, through envd's ``/files``.

        envd reads as root whatever user it is told, so a command of the sandbox's user checks
        first that this user may read it, that it is a regular file (envd would block on a
        FIFO) and that it fits ``max_bytes``; the download stops past ``max_bytes`` anyway.
        """
        await file_access.check_read(self, sandbox_id, path, max_bytes)
        handle = await self._handle(sandbox_id, "read_file")
        where: dict[str, Any] = {"provider": NAME, "op": "read_file", "sandbox_id": sandbox_id}
        chunks: list[bytes] = []
        size = 0
        try:
            # streamed: one copy of the content in memory, not three (body, bytearray, bytes)
            stream = await handle.sandbox.files.read(path, format="stream", user=handle.user)
            async with stream:
                async for chunk in stream:
                    size += len(chunk)
                    if size > max_bytes:  # it grew after the check
                        raise FileTooLarge(
                            f"read_file {path}: larger than max_bytes={max_bytes}", **where
                        )
                    chunks.append(chunk)
        except SandboxError:
            raise
        except Exception as exc:
            raise self._err(exc, "read_file", sandbox_id) from exc
        return b"".join(chunks)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file (parents created by envd), streamed as octet-stream.

        envd writes as root, so a command of the sandbox's user checks first that this user may
        replace the file (or create it, its parent directories made as that user). envd
        truncates in place: a replaced file keeps its mode.
        """
        await file_access.check_write(self, sandbox_id, path)
        handle = await self._handle(sandbox_id, "write_file")
        try:
            await handle.sandbox.files.write(path, data, user=handle.user, use_octet_stream=True)
        except Exception as exc:
            raise self._err(exc, "write_file", sandbox_id) from exc

    # -- optional capabilities ------------------------------------------------------------------

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """E2B's public URL of ``port`` (every port is reachable; traffic may need a token)."""
        handle = await self._handle(sandbox_id, "expose_port")
        return "https://" + handle.sandbox.get_host(port)

    async def snapshot(self, sandbox_id: str) -> str:
        """E2B snapshot of the sandbox; use the id as ``SandboxSpec.snapshot``."""
        from e2b import AsyncSandbox

        try:
            info = await AsyncSandbox.create_snapshot(sandbox_id, **self._api())
        except Exception as exc:
            raise self._err(exc, "snapshot", sandbox_id) from exc
        return str(info.snapshot_id)

    async def pause(self, sandbox_id: str) -> None:
        """Pause (memory and filesystem kept). E2B does not kill a paused sandbox at its TTL."""
        from e2b import AsyncSandbox

        self._handles.pop(sandbox_id, None)
        try:
            await AsyncSandbox.pause(sandbox_id, **self._api())
        except Exception as exc:
            raise self._err(exc, "pause", sandbox_id) from exc

    async def resume(self, sandbox_id: str) -> None:
        """Resume a paused sandbox with what is left of its TTL (300 s if nothing is left)."""
        from e2b import AsyncSandbox

        self._handles.pop(sandbox_id, None)
        try:
            info = await AsyncSandbox.get_info(sandbox_id, **self._api())
            expiry = _labels.expires_at(dict(info.metadata or {}))
            left = (expiry - datetime.now(timezone.utc)).total_seconds() if expiry else 0
            sbx = await AsyncSandbox.connect(
                sandbox_id, timeout=int(left) if left >= 1 else 300, **self._api()
            )
        except Exception as exc:
            raise self._err(exc, "resume", sandbox_id) from exc
        self._remember(sbx, dict(info.metadata or {}).get(USER_LABEL))


def _oneof(field: str, value: Any) -> Any:
    """A protobuf oneof value (typed loosely: the generated stubs want literal field names)."""
    from protobuf import Oneof

    return Oneof(field, value)


def _timeout(options: ExecOptions, sandbox_id: str) -> CommandTimeout:
    return CommandTimeout(
        f"command timed out after {options.timeout} s (its process tree was killed)",
        timeout=options.timeout,
        provider=NAME,
        op="exec",
        sandbox_id=sandbox_id,
    )


def _exit_status(end: Any) -> tuple[int, int | None]:
    """(exit_code, signal) from envd's end event (Go's ``ProcessState``)."""
    if end.exited or end.exit_code != -1:
        return int(end.exit_code), None
    status = str(end.status)
    name = status.removeprefix("signal: ").removesuffix(" (core dumped)")
    sig = _GO_SIGNALS.get(name)
    if sig is None and name.startswith("signal "):
        with contextlib.suppress(ValueError):
            sig = int(name.removeprefix("signal "))
    if sig is None:
        return int(end.exit_code), None
    return 128 + sig, sig


async def _settle(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(task, KILL_GRACE_SECONDS)


@contextlib.contextmanager
def anyio_shield() -> Any:
    """Shield cleanup from cancellation (anyio scope; asyncio is the SDK's only loop)."""
    import anyio

    with anyio.CancelScope(shield=True) as scope:
        yield scope


def translate(exc: BaseException, *, op: str, sandbox_id: str | None = None) -> SandboxError:
    """The agent-sandbox error for an exception raised by the ``e2b`` SDK (or its transport)."""
    import httpx
    from connectrpc.errors import ConnectError
    from e2b import exceptions as e

    where: dict[str, Any] = {"provider": NAME, "op": op, "sandbox_id": sandbox_id}
    if isinstance(exc, SandboxError):
        return exc
    if isinstance(exc, ConnectError):
        from e2b.envd.rpc import handle_rpc_exception

        mapped = handle_rpc_exception(exc)
        if mapped is exc or not isinstance(mapped, Exception):
            return ProviderUnavailable(f"{op}: {exc}", **where)
        return translate(mapped, op=op, sandbox_id=sandbox_id)
    message = str(exc) or type(exc).__name__
    lower = message.lower()
    if isinstance(exc, e.AuthenticationException):
        if any(s in lower for s in ("unknown user", "invalid username", "looking up user")):
            return ConfigError(f"no such user in the sandbox: {message}", **where)
        return AuthenticationError(f"E2B rejected the credentials: {message}", **where)
    if isinstance(exc, e.RateLimitException):
        return RateLimited(f"E2B rate limit: {message}", **where)
    if isinstance(exc, e.ServiceBusyException):
        return ProviderUnavailable(f"E2B is busy: {message}", **where)
    if isinstance(exc, e.FileNotFoundException):
        return FileNotFound(message, **where)
    if isinstance(exc, (e.SandboxNotFoundException, e.SandboxNotRunningException)):
        return SandboxNotFound(f"sandbox {sandbox_id} not found: {message}", **where)
    if isinstance(exc, e.SandboxUnreachableException):
        return ProviderUnavailable(f"sandbox unreachable: {message}", **where)
    if isinstance(exc, e.TimeoutException):
        return OperationTimeout(f"E2B request timed out: {message}", **where)
    if isinstance(exc, e.NotEnoughSpaceException):
        return QuotaExceeded(f"sandbox disk full: {message}", **where)
    if isinstance(exc, e.NotFoundException):
        if op in ("read_file", "write_file"):
            return FileNotFound(message, **where)
        return SandboxNotFound(message, **where)
    if isinstance(exc, e.InvalidArgumentException):
        if "is a directory" in lower:
            return IsADirectory(message, **where)
        if "does not exist" in lower:
            return FileNotFound(message, **where)
        return ConfigError(f"E2B refused the request: {message}", **where)
    if isinstance(exc, e.TemplateException):
        return ConfigError(message, **where)
    if isinstance(exc, e.SandboxException):
        status = exc.status_code
        if "read-only file system" in lower or "permission denied" in lower:
            return PermissionDenied(message, **where)
        if "is a directory" in lower:
            return IsADirectory(message, **where)
        if status == 401:
            return AuthenticationError(message, **where)
        if status == 403:
            return (
                QuotaExceeded(message, **where)
                if "limit" in lower
                else AuthenticationError(message, **where)
            )
        if status == 404:
            if op == "create":
                return ConfigError(f"E2B template not found: {message}", **where)
            return SandboxNotFound(message, **where)
        if status == 409:
            return SandboxConflict(message, **where)
        if status == 429:
            return RateLimited(message, **where)
        if status in (400, 422):
            return ConfigError(f"E2B refused the request: {message}", **where)
        if status is not None and status >= 500:
            return ProviderUnavailable(f"E2B server error: {message}", **where)
        return ProviderError(message, **where)
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return OperationTimeout(f"E2B request timed out: {message}", **where)
    if isinstance(exc, (httpx.TransportError, ConnectionError, OSError)):
        return ProviderUnavailable(f"cannot reach E2B: {message}", **where)
    if isinstance(exc, NotImplementedError):
        return Unsupported(message, **where)
    return ProviderError(f"{type(exc).__name__}: {message}", **where)
