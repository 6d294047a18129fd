"""``E2BBackend``: the agent-sandbox contract on E2B's official ``e2b`` SDK (async flavour).

Lifecycle through ``AsyncSandbox``; processes through envd's process service (the SDK's
generated ``ProcessClient``, the client its ``commands`` module uses) under a supervisor that
kills whole trees and keeps a record of background processes; files through envd's ``/files``,
streamed. The vendor behaviours relied on are listed in ``docs/providers/e2b.md``. The SDK is
imported in a worker thread on first use, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import functools
import inspect
import math
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Literal

import anyio
from pydantic import Field, SecretStr

from agent_sandbox import errors as err
from agent_sandbox import file_access, models, tree
from agent_sandbox import labels as _labels
from agent_sandbox._imports import import_in_thread
from agent_sandbox._tasks import spawn
from agent_sandbox.backend import BaseBackend, ProviderOptions
from agent_sandbox.models import ExecOptions, SandboxInfo, SandboxSpec
from agent_sandbox.process import CompletedHandle, ProcessHandle, from_shell
from agent_sandbox.retry import retry

from ._process import EnvdProcess, pb, selector, wrapper_args

NAME = "e2b"
TRANSFER_RATE = 1 << 20
"""Bytes per second a file transfer's deadline allows for, on top of ``request_timeout``."""
_SDK = ("e2b", "e2b.envd.client_async", "e2b.envd.process.process_connect", "e2b.envd.rpc")
# $1: a workdir to create ("" for none). Prints the directory commands start in.
_WORKDIR = 'if [ -n "$1" ]; then mkdir -p -- "$1" && cd -- "$1" || exit 1; fi; pwd'


async def sdk() -> Any:
    """The ``e2b`` module, imported (about 0.3 s) in a worker thread the first time."""
    return await import_in_thread(*_SDK)


class E2BOptions(ProviderOptions):
    """Options of the E2B provider (``[e2b]`` in ``agent-sandbox.toml``, ``AGENT_SANDBOX_E2B_*``).
    Unset connection options fall back to the SDK's variables (``E2B_API_KEY``, ...)."""

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
    request_timeout: float = Field(default=60.0, gt=0)
    """Seconds for one API request (a file transfer gets one more per MiB)."""
    api_attempts: int = Field(default=3, ge=1)
    """Attempts at a control-plane call that failed transiently (creates are idempotent)."""
    retry_backoff_seconds: float = Field(default=1.0, ge=0)
    """First wait between attempts; doubles each time."""

    # Credentials and addresses only from code, the environment or the user's own config.
    project_settable: ClassVar[frozenset[str]] = frozenset(
        {"template", "request_timeout", "api_attempts", "retry_backoff_seconds"}
    )


def _table(exc: Exception, lower: str) -> err.SandboxError | None:
    """E2B's own error rows (the shared HTTP-status rows come after them)."""
    import json

    import httpx
    from connectrpc.errors import ConnectError
    from e2b import exceptions as e
    from e2b.envd.rpc import handle_rpc_exception

    if isinstance(exc, ConnectError):  # envd's: mapped by the SDK first
        mapped = handle_rpc_exception(exc)
        if isinstance(mapped, asyncio.CancelledError):
            raise mapped
        return None if mapped is exc else err.translate(mapped, provider=NAME, op="", table=_table)
    rows = [
        (isinstance(exc, e.AuthenticationException) and "username" in lower, err.ConfigError),  # no such user
        (isinstance(exc, e.AuthenticationException), err.AuthenticationError),
        ("maximum number of concurrent" in lower, err.QuotaExceeded),  # a quota: no retry
        (isinstance(exc, e.RateLimitException), err.RateLimited),
        (isinstance(exc, (e.SandboxNotFoundException, e.SandboxNotRunningException)), err.SandboxNotFound),
        (isinstance(exc, e.SandboxUnreachableException), err.ProviderUnavailable),
        (isinstance(exc, e.FileNotFoundException), err.FileNotFound),
        (isinstance(exc, (e.TimeoutException, httpx.TimeoutException)), err.OperationTimeout),
        (isinstance(exc, e.NotEnoughSpaceException), err.QuotaExceeded),
        ("is a directory" in lower, err.IsADirectory),
        ("read-only file system" in lower or "permission denied" in lower, err.PermissionDenied),
        (isinstance(exc, e.InvalidArgumentException) and "does not exist" in lower, err.FileNotFound),
        (isinstance(exc, (e.InvalidArgumentException, e.TemplateException)), err.ConfigError),
        (isinstance(exc, e.NotFoundException) and "process with" in lower, err.ProcessNotFound),
        (getattr(exc, "status_code", None) == 404 and "template" in lower, err.ConfigError),
        # a gateway's error page where the API's JSON was expected: the API was not reached
        (isinstance(exc, (json.JSONDecodeError, httpx.TransportError)), err.ProviderUnavailable),
    ]  # fmt: skip
    return next((error(f"E2B: {exc}") for hit, error in rows if hit), None)


class E2BBackend(BaseBackend):
    """Sandboxes on E2B (https://e2b.dev) through the ``e2b`` SDK."""

    name = NAME
    Options = E2BOptions
    capabilities = models.Capabilities(
        network_none=True, network_allowlist=True, expose_port=True, snapshot=True, pause=True,
        exec_user=True, stdin_streaming=True, reattach=True,
    )  # fmt: skip

    def __init__(self, options: ProviderOptions | None = None) -> None:
        super().__init__(options)
        self.opts: E2BOptions = self.options  # type: ignore[assignment]
        self._sandboxes: dict[str, Any] = {}
        self._users: dict[str, str | None] = {}
        self._workdirs: dict[str, str] = {}
        self._rpcs: dict[str, Any] = {}

    async def _call(self, op: str, sid: str | None, method: str, *args: Any, **kwargs: Any) -> Any:
        """``AsyncSandbox.<method>``: typed errors, transient failures retried. The SDK's own
        retries are off: ours tell a quota from a rate limit (the SDK retries every 429)."""
        o = self.opts
        key = o.api_key.get_secret_value() if o.api_key else None
        params = {
            "api_key": key,
            "domain": o.domain,
            "api_url": o.api_url,
            "sandbox_url": o.sandbox_url,
        }
        kwargs |= {k: v for k, v in params.items() if v} | {
            "request_timeout": o.request_timeout,
            "retries": 0,
        }
        call = getattr((await sdk()).AsyncSandbox, method)

        async def once() -> Any:
            with err.translating(NAME, op, sid, table=_table):
                result = call(*args, **kwargs)
                return await result if inspect.isawaitable(result) else result  # list: a pager

        return await retry(once, attempts=o.api_attempts, backoff=o.retry_backoff_seconds)

    async def _sandbox(self, sandbox_id: str, op: str) -> Any:
        """The SDK's sandbox object: cached, or reached with ``connect`` (which only ever extends
        a running sandbox's TTL: asking for 1 s keeps it as it is)."""
        if sandbox_id not in self._sandboxes:
            if (await self._info(sandbox_id, op)).state != "running":
                raise err.ProviderError(f"sandbox {sandbox_id} is paused; resume it first")
            sbx = await self._call(op, sandbox_id, "connect", sandbox_id, timeout=1)
            self._sandboxes[sandbox_id] = sbx
        return self._sandboxes[sandbox_id]

    def _envd(self, sandbox_id: str, user: str | None) -> tuple[Any, dict[str, str]]:
        """An envd process client and its headers: the user as envd selects it (Basic auth
        naming it; none: the template's default user) and the SDK's keepalive interval."""
        from e2b.connection_config import KEEPALIVE_PING_HEADER, KEEPALIVE_PING_INTERVAL_SEC
        from e2b.envd.client_async import create_rpc_client
        from e2b.envd.process.process_connect import ProcessClient

        sbx = self._sandboxes[sandbox_id]
        headers = {KEEPALIVE_PING_HEADER: str(KEEPALIVE_PING_INTERVAL_SEC)}
        if user := user or self._users.get(sandbox_id):
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
        if sandbox_id not in self._rpcs:
            self._rpcs[sandbox_id] = create_rpc_client(
                ProcessClient, sbx.envd_api_url, sbx.connection_config
            )
        return self._rpcs[sandbox_id], headers

    # -- lifecycle ------------------------------------------------------------------------------

    def check_spec(self, spec: SandboxSpec) -> None:
        """Refuse what E2B cannot honour: resources and disk (template-defined), idle timeout."""
        super().check_spec(spec)
        if spec.disk_mib is not None:
            raise self._unsupported("disk_mib (disk size comes from the E2B template)")
        if spec.idle_timeout_seconds is not None:
            raise self._unsupported(
                "idle_timeout_seconds (E2B has a lifetime, not an idle timeout)"
            )

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox; transient failures are retried with the same idempotency key, and a
        create that finally fails removes whatever it made."""
        self.check_spec(spec)
        template = spec.snapshot or spec.image or self.opts.template
        key = str(uuid.uuid4())
        metadata = {**spec.labels, _labels.CREATE_KEY: key}
        metadata |= {_labels.WORKDIR: spec.workdir} if spec.workdir else {}
        metadata |= {_labels.USER: spec.user} if spec.user else {}
        ttl = max(1, math.ceil(spec.ttl_seconds))
        kwargs: dict[str, Any] = {"template": template, "timeout": ttl, "metadata": metadata}
        kwargs |= {"envs": dict(spec.env), "idempotency_key": key}
        if spec.network.mode == "none":
            kwargs["allow_internet_access"] = False
        elif spec.network.mode == "allowlist":
            kwargs["network"] = {"allow_out": list(spec.network.allow), "deny_out": ["0.0.0.0/0"]}
        owner = spec.labels.get(_labels.OWNER)
        spawn(lambda: self._end_expired_paused(owner))
        sbx = None
        try:
            sbx = await self._call("create", None, "create", **kwargs)
            self._sandboxes[sbx.sandbox_id], self._users[sbx.sandbox_id] = sbx, spec.user
            workdir = await self._workdir(sbx.sandbox_id, spec.workdir or "")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._remove_created(key, sbx)
            raise
        now = datetime.now(timezone.utc)
        labels = _labels.public(metadata)
        return SandboxInfo(id=sbx.sandbox_id, provider=NAME, image=template, workdir=workdir,
                           labels=labels, created_at=now, expires_at=now + timedelta(seconds=ttl))  # fmt: skip

    async def _workdir(self, sandbox_id: str, make: str) -> str:
        """The directory commands start in: ``make`` (created), else the template's ``WORKDIR``
        (envd's default cwd; the user's home when the template sets none)."""
        if sandbox_id not in self._workdirs:
            argv = ["sh", "-c", _WORKDIR, "sh", make]
            result = await self.exec(sandbox_id, argv, ExecOptions(output_limit=1 << 16))
            if not result.ok or not result.stdout.startswith("/"):
                raise err.ConfigError(f"cannot make the workdir {make!r}: {result.stderr.strip()}")
            self._workdirs[sandbox_id] = result.stdout.strip()
        return self._workdirs[sandbox_id]

    async def _remove_created(self, key: str, sbx: Any) -> None:
        """Kill what a failed create made: its sandbox, or any carrying its create key."""
        ids = {sbx.sandbox_id} if sbx is not None else set()
        with contextlib.suppress(Exception):
            ids |= {i.id for i in await self.list({_labels.CREATE_KEY: key})}
        for sid in ids:
            with contextlib.suppress(Exception):
                await self.destroy(sid)

    async def _end_expired_paused(self, owner: str | None) -> None:
        """E2B keeps a paused sandbox forever: listing ends the owner's ones past their TTL."""
        with contextlib.suppress(err.SandboxError):
            await self.list({_labels.MANAGED: "true"} | ({_labels.OWNER: owner} if owner else {}))

    def _describe(self, sdk: Any, unknown_workdir: str = "/") -> SandboxInfo:
        meta = dict(sdk.metadata or {})
        self._users.setdefault(sdk.sandbox_id, meta.get(_labels.USER))
        workdir = meta.get(_labels.WORKDIR) or self._workdirs.get(sdk.sandbox_id, unknown_workdir)
        return SandboxInfo(
            id=sdk.sandbox_id, provider=NAME, image=sdk.name or sdk.template_id, workdir=workdir,
            state="paused" if sdk.state.value == "paused" else "running",
            labels=_labels.public(meta),
            created_at=sdk.started_at, expires_at=_labels.expires_at(meta) or sdk.end_at,
            metadata={"template_id": sdk.template_id, "envd_version": sdk.envd_version},
        )  # fmt: skip

    async def _info(self, sandbox_id: str, op: str) -> SandboxInfo:
        """A sandbox's description (workdir ``""`` while unknown); a paused one past its TTL is
        ended instead (``SandboxNotFound``)."""
        info = self._describe(await self._call(op, sandbox_id, "get_info", sandbox_id), "")
        if info.state == "paused" and _labels.is_expired(info):
            await self.destroy(sandbox_id)
            raise err.SandboxNotFound(f"sandbox {sandbox_id} reached its TTL while paused")
        return info

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a sandbox by id. Raises ``SandboxNotFound``."""
        info = await self._info(sandbox_id, "connect")
        if not info.workdir:  # the template's: known only inside the sandbox
            running = info.state == "running"
            workdir = await self._workdir(sandbox_id, "") if running else "/"
            info = info.model_copy(update={"workdir": workdir})
        return info

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Running and paused sandboxes whose metadata holds all of ``labels``; paused ones past
        their TTL are ended instead."""
        query = (await sdk()).SandboxQuery(metadata=dict(labels)) if labels else None
        paginator = await self._call("list", None, "list", query=query)
        found: builtins.list[SandboxInfo] = []
        while paginator.has_next:
            with err.translating(NAME, "list", table=_table):
                found.extend(self._describe(s) for s in await paginator.next_items())
        expired = {i.id for i in found if i.state == "paused" and _labels.is_expired(i)}
        for sandbox_id in expired:
            await self.destroy(sandbox_id)
        return [i for i in found if i.id not in expired]

    async def destroy(self, sandbox_id: str) -> None:
        """Kill a sandbox at once; one already gone is fine."""
        for cache in (self._sandboxes, self._users, self._workdirs, self._rpcs):
            cache.pop(sandbox_id, None)
        with contextlib.suppress(err.SandboxNotFound):
            await self._call("destroy", sandbox_id, "kill", sandbox_id)

    async def aclose(self) -> None:
        """Forget cached sandbox objects (the SDK's connection pools are process-wide)."""
        self._sandboxes.clear()
        self._rpcs.clear()

    # -- processes ------------------------------------------------------------------------------

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: models.StartOptions
    ) -> ProcessHandle:
        """Start ``argv`` through envd under the supervisor, tagged with its ref."""
        await self._sandbox(sandbox_id, "exec")
        ref = tree.new_ref()
        args = wrapper_args(ref, tree.RECORDS if options.detached else "", argv)
        config = pb("ProcessConfig", cmd="/bin/bash", args=args, envs=options.env, cwd=options.cwd)
        stdin = options.stdin is not None or options.stdin_open
        rpc, headers = self._envd(sandbox_id, options.user)
        events = rpc.start(
            pb("StartRequest", process=config, stdin=stdin, tag=ref), headers=headers
        )
        proc = self._handle(sandbox_id, ref, events, rpc, headers)
        await proc.begin(options.stdin, options.stdin_open)
        return proc

    def _handle(self, sid: str, ref: str, events: Any, rpc: Any, headers: Any) -> EnvdProcess:
        async def kill(pid: int) -> None:
            """Kill the tree as root (children that ``sudo`` die too); the supervisor (envd's
            process) survives to report the status."""
            argv = ["sh", "-c", tree.KILL, "kill", ref, str(pid)]
            await self.exec(sid, argv, ExecOptions(user="root", output_limit=1 << 16))

        translate = functools.partial(
            err.translate, provider=NAME, op="exec", sandbox_id=sid, table=_table
        )
        return EnvdProcess(ref, events, rpc, headers, kill, translate)

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """Follow a process by ref (``Connect`` by tag: only what comes next is streamed); one
        that ended long ago gives its recorded status. Raises ``ProcessNotFound``."""
        if not tree.REF.fullmatch(ref):
            raise err.ProcessNotFound(f"no process {ref!r}", provider=NAME, sandbox_id=sandbox_id)
        await self._sandbox(sandbox_id, "attach")
        rpc, headers = self._envd(sandbox_id, None)
        events = rpc.connect(pb("ConnectRequest", process=selector(ref)), headers=headers)
        proc = self._handle(sandbox_id, ref, events, rpc, headers)
        try:
            await proc.begin(None, True)
        except err.ProcessNotFound:
            await proc.close()
            with contextlib.suppress(err.FileNotFound, ValueError):
                status = await self.read_file(
                    sandbox_id, f"{tree.RECORDS}/{ref}.exit", max_bytes=64
                )
                return CompletedHandle(from_shell(int(status)), ref=ref)
            raise
        return proc

    async def processes(self, sandbox_id: str) -> builtins.list[models.ProcessInfo]:
        """Processes started with ``Sandbox.start``: the live ones envd lists, the ended ones
        from their records."""
        await self._sandbox(sandbox_id, "processes")
        rpc, headers = self._envd(sandbox_id, None)

        async def live() -> Any:
            with err.translating(NAME, "processes", sandbox_id, table=_table):
                return await rpc.list(pb("ListRequest"), headers=headers)

        listed, found = await asyncio.gather(live(), tree.records(self, sandbox_id))
        running = {p.tag for p in listed.processes if p.has_field("tag")}
        live_ones = {"running": True, "exit_code": None}
        return [
            p.model_copy(update=live_ones if p.ref in running else {"running": False})
            for p in found
        ]

    # -- files ----------------------------------------------------------------------------------

    def _transfer(self, op: str, sandbox_id: str, size: int) -> contextlib.ExitStack:
        """Typed errors, and a deadline of ``request_timeout`` plus a second per MiB."""
        stack = contextlib.ExitStack()
        stack.enter_context(err.translating(NAME, op, sandbox_id, table=_table))
        stack.enter_context(anyio.fail_after(self.opts.request_timeout + size / TRANSFER_RATE))
        return stack

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = models.DEFAULT_READ_LIMIT
    ) -> bytes:
        """Content of a regular file, streamed from envd's ``/files``.

        envd reads as root whatever user it is told, so a command of the sandbox's user checks
        first that this user may read it as a regular file (envd would block on a FIFO) of at
        most ``max_bytes``; the download stops past ``max_bytes`` anyway.
        """
        size = await file_access.check_read(self, sandbox_id, path, max_bytes)
        sbx = await self._sandbox(sandbox_id, "read_file")
        with self._transfer("read_file", sandbox_id, size):
            stream = await sbx.files.read(path, format="stream", user=self._users.get(sandbox_id))
            async with stream:
                return await file_access.read_stream(stream, path, max_bytes)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file, streamed to envd's ``/files`` in 1 MiB chunks under a
        deadline that grows with its size.

        envd writes as root, so a command of the sandbox's user checks first that this user may
        replace the file (or create it, parents made as that user). envd truncates in place: a
        replaced file keeps its mode.
        """
        await file_access.check_write(self, sandbox_id, path)
        sbx = await self._sandbox(sandbox_id, "write_file")
        chunks = file_access.chunks_of(data) if data else b""
        with self._transfer("write_file", sandbox_id, len(data)):
            await sbx.files.write(path, chunks, user=self._users.get(sandbox_id))

    # -- optional capabilities ------------------------------------------------------------------

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """E2B's public URL of ``port`` (every port is reachable; traffic may need a token)."""
        return "https://" + str((await self._sandbox(sandbox_id, "expose_port")).get_host(port))

    async def snapshot(self, sandbox_id: str) -> str:
        """E2B snapshot of the sandbox; use the id as ``SandboxSpec.snapshot``."""
        return str(
            (await self._call("snapshot", sandbox_id, "create_snapshot", sandbox_id)).snapshot_id
        )

    async def pause(self, sandbox_id: str) -> None:
        """Pause (memory and filesystem kept). E2B keeps a paused sandbox forever; this provider
        ends it once its TTL has passed, at the next list, connect, resume or create."""
        self._sandboxes.pop(sandbox_id, None)
        self._rpcs.pop(sandbox_id, None)
        await self._call("pause", sandbox_id, "pause", sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        """Resume a paused sandbox with what is left of its TTL (past it: ``SandboxNotFound``)."""
        expires = (await self._info(sandbox_id, "resume")).expires_at or datetime.now(timezone.utc)
        left = max(1, int((expires - datetime.now(timezone.utc)).total_seconds()))
        self._sandboxes[sandbox_id] = await self._call(
            "resume", sandbox_id, "connect", sandbox_id, timeout=left
        )
