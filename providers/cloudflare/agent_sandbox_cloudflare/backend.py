"""``CloudflareBackend``: the agent-sandbox contract on Cloudflare Containers, through the Worker
in ``providers/cloudflare/worker`` (Cloudflare's sandbox bridge plus agent-sandbox's routes).

How the contract maps (details and limits in ``docs/providers/cloudflare.md``):

* create: ``POST /asb/v1/sandboxes`` records the sandbox (labels, TTL, idle timeout, a create key
  reused by every retry) and starts its container; then the bridge's ``POST
  /v1/sandbox/{id}/session`` makes the session every command runs in, holding ``spec.env`` and
  the workdir; a ``spec.snapshot`` is restored with the bridge's ``hydrate``. A create that
  fails after the record destroys what it made.
* connect / list / destroy: the Worker's registry (``GET /asb/v1/sandboxes[/{id}]``) and the
  bridge's ``DELETE /v1/sandbox/{id}``. The registry answers 404 for a sandbox destroyed,
  expired, or whose container stopped; its cron destroys expired ones within a minute.
* processes: ``POST /asb/v1/sandboxes/{id}/processes`` (argv, cwd, env, stdin, a timeout
  backstop) streams base64 output as server-sent events; ``GET .../processes/{ref}`` follows a
  process again from byte offsets (attach replays from the start), ``.../kill`` kills its tree,
  ``PUT .../stdin`` streams stdin.
* files: through commands of the sandbox's user (``agent_sandbox.file_access``): byte-exact,
  anywhere in the sandbox, any size, with that user's permissions.
* ``expose_port``: the bridge's tunnel route; ``snapshot``: the bridge's ``persist`` (a tar of
  /workspace) kept in a local directory, restored at create with ``hydrate``.
"""

from __future__ import annotations

import builtins
import math
import os
import re
import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
from pydantic import Field, SecretStr

from agent_sandbox import file_access
from agent_sandbox import labels as _labels
from agent_sandbox.backend import BaseBackend, ProviderOptions
from agent_sandbox.errors import (
    ConfigError,
    ProcessNotFound,
    ProviderError,
    SandboxNotFound,
    translating,
)
from agent_sandbox.models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    StartOptions,
)
from agent_sandbox.process import ProcessHandle
from agent_sandbox.retry import retry

from ._api import PROVIDER, Api, table
from ._process import BridgeProcess

WORKDIR_LABEL = _labels.WORKDIR
SANDBOX_ID = re.compile(r"^[a-z2-7]{1,128}$")
"""Sandbox ids as the bridge mints them (base32)."""
REF = re.compile(r"^p-[0-9a-f]{16}$")
SNAPSHOT_ID = re.compile(r"^cfsnap-[0-9a-f]{32}$")
HYDRATE_LIMIT = 32 * 1024 * 1024
"""The largest archive the bridge's hydrate route accepts."""
TIMEOUT_GRACE_SECONDS = 10
"""The Worker's timeout backstop fires this long after the command's own deadline (the core
enforces that one; the backstop only stops a command whose client died)."""


def default_snapshot_dir() -> Path:
    """``$XDG_STATE_HOME/agent-sandbox/cloudflare/snapshots``, else under ``~/.local/state``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "agent-sandbox" / "cloudflare" / "snapshots"


class CloudflareOptions(ProviderOptions):
    """Options of the Cloudflare provider (``[cloudflare]`` in ``agent-sandbox.toml``,
    ``AGENT_SANDBOX_CLOUDFLARE_*``)."""

    provider: Literal["cloudflare"] = "cloudflare"
    url: str | None = None
    """The Worker's URL (``https://agent-sandbox.<account>.workers.dev``); default
    ``CLOUDFLARE_SANDBOX_WORKER_URL``."""
    api_key: SecretStr | None = None
    """The Worker's ``SANDBOX_API_KEY`` secret; default ``SANDBOX_API_KEY``, then
    ``CLOUDFLARE_SANDBOX_API_KEY``."""
    workdir: str = "/workspace"
    """Working directory of commands when the spec sets none (what snapshots archive)."""
    request_timeout: float = Field(default=60.0, gt=0)
    """Seconds for one request (a create waits for the container to start)."""
    create_attempts: int = Field(default=3, ge=1)
    """Attempts at creating a sandbox when a failure is transient."""
    retry_backoff_seconds: float = Field(default=1.0, ge=0)
    """First wait between create attempts; doubles each time."""
    snapshot_dir: str | None = None
    """Where snapshots are kept; default ``$XDG_STATE_HOME/agent-sandbox/cloudflare/snapshots``."""

    # The URL, the key and a directory to write into come only from code, the environment or
    # the user's own config: a cloned project could otherwise send the key elsewhere.
    project_settable: ClassVar[frozenset[str]] = frozenset(
        {"workdir", "request_timeout", "create_attempts", "retry_backoff_seconds"}
    )


class CloudflareBackend(BaseBackend):
    """Sandboxes on Cloudflare Containers, through agent-sandbox's Worker."""

    name = PROVIDER
    Options = CloudflareOptions
    capabilities = Capabilities(
        network_none=False,
        network_allowlist=False,
        expose_port=True,
        snapshot=True,
        pause=False,
        exec_user=False,
        stdin=True,
        resources=False,
        gpu=False,
        persistent=True,
        isolated=True,
        signals=False,
        stdin_streaming=True,
        reattach=True,
    )

    def __init__(self, options: ProviderOptions | None = None) -> None:
        super().__init__(options)
        self.opts: CloudflareOptions = self.options  # type: ignore[assignment]
        self._api: Api | None = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def api(self) -> Api:
        """The Worker's client, made on first use (``ConfigError`` without a URL)."""
        if self._api is None:
            url = self.opts.url or os.environ.get("CLOUDFLARE_SANDBOX_WORKER_URL")
            if not url:
                raise ConfigError(
                    "the cloudflare provider needs the Worker's URL: set "
                    "AGENT_SANDBOX_CLOUDFLARE_URL (or CLOUDFLARE_SANDBOX_WORKER_URL), or "
                    "CloudflareOptions(url=...)",
                    provider=PROVIDER,
                )
            if not url.startswith(("https://", "http://")):
                raise ConfigError(f"the Worker's URL must be http(s): {url!r}", provider=PROVIDER)
            key = self.opts.api_key.get_secret_value() if self.opts.api_key else None
            key = (
                key
                or os.environ.get("SANDBOX_API_KEY")
                or os.environ.get("CLOUDFLARE_SANDBOX_API_KEY")
            )
            self._api = Api(url, key, self.opts.request_timeout)
        return self._api

    def _where(self, op: str, sandbox_id: str | None = None) -> Any:
        return translating(PROVIDER, op, sandbox_id, table=table)

    def _missing(self, sandbox_id: str, op: str) -> SandboxNotFound:
        return SandboxNotFound(
            f"no sandbox {sandbox_id!r}", provider=PROVIDER, op=op, sandbox_id=sandbox_id
        )

    def _info(self, record: dict[str, Any]) -> SandboxInfo:
        labels = dict(record.get("labels") or {})
        workdir = labels.pop(WORKDIR_LABEL, None) or self.opts.workdir
        expires = datetime.fromisoformat(str(record["expires_at"]).replace("Z", "+00:00"))
        idle = record.get("idle_timeout_seconds")
        return SandboxInfo(
            id=str(record["id"]),
            provider=PROVIDER,
            state="stopped" if expires <= datetime.now(timezone.utc) else "running",
            labels=labels,
            created_at=datetime.fromisoformat(str(record["created_at"]).replace("Z", "+00:00")),
            expires_at=expires,
            workdir=workdir,
            metadata={
                "worker": self.api.url,
                "idle_timeout_seconds": str(idle) if idle is not None else "600 (the default)",
            },
        )

    # -- lifecycle --------------------------------------------------------------------------

    def check_spec(self, spec: SandboxSpec) -> None:
        """Refuse what the Worker cannot honour: network policies, resources, disk, users and
        images (a sandbox's image is the Worker's Dockerfile)."""
        super().check_spec(spec)
        if spec.disk_mib is not None:
            raise self._unsupported("disk_mib (the container's instance type sets the disk)")
        if spec.image is not None:
            raise self._unsupported(
                "image (every sandbox runs the Worker's image: edit its Dockerfile and deploy)"
            )

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox; transient failures are retried with the same create key."""
        self.check_spec(spec)
        archive = self._snapshot_archive(spec.snapshot) if spec.snapshot else None
        workdir = spec.workdir or self.opts.workdir
        labels = {**spec.labels, WORKDIR_LABEL: workdir}
        key = str(uuid.uuid4())

        async def attempt() -> dict[str, Any]:
            with self._where("create"):
                return await self.api.create_sandbox(
                    labels, spec.ttl_seconds, key, spec.idle_timeout_seconds
                )

        record = await retry(
            attempt, attempts=self.opts.create_attempts, backoff=self.opts.retry_backoff_seconds
        )
        sandbox_id = str(record["id"])
        try:
            if workdir != self.opts.workdir or spec.workdir:
                await self._prepare_workdir(sandbox_id, workdir)
            with self._where("create", sandbox_id):
                await self.api.create_session(sandbox_id, workdir, dict(spec.env))
                if archive is not None:
                    await self.api.hydrate(sandbox_id, archive)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.destroy(sandbox_id)
            raise
        return self._info(record)

    async def _prepare_workdir(self, sandbox_id: str, workdir: str) -> None:
        handle = await self._start(
            sandbox_id, ["mkdir", "-p", "--", workdir], StartOptions(cwd="/"), session=False
        )
        try:
            chunks = []
            while (chunk := await handle.read()) is not None:
                chunks.append(chunk[1])
            status = await handle.wait()
        finally:
            await handle.close()
        if status.exit_code != 0:
            message = b"".join(chunks).decode("utf-8", "replace").strip()
            raise ProviderError(
                f"cannot create workdir {workdir}: {message}",
                provider=PROVIDER,
                op="create",
                sandbox_id=sandbox_id,
            )

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a sandbox by id. Raises ``SandboxNotFound`` (also once it has expired)."""
        if not SANDBOX_ID.match(sandbox_id):
            raise self._missing(sandbox_id, "connect")
        with self._where("connect", sandbox_id):
            return self._info(await self.api.get_sandbox(sandbox_id))

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Sandboxes of the Worker's registry carrying every one of ``labels`` (expired ones,
        ``state="stopped"``, until the Worker has destroyed them)."""
        with self._where("list"):
            records = await self.api.list_sandboxes(dict(labels or {}))
        return [self._info(record) for record in records]

    async def destroy(self, sandbox_id: str) -> None:
        """Destroy the sandbox's container and forget it; one already gone is fine."""
        if not SANDBOX_ID.match(sandbox_id):
            return
        with self._where("destroy", sandbox_id):
            await self.api.destroy(sandbox_id)

    async def aclose(self) -> None:
        """Close the connections to the Worker."""
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    # -- processes --------------------------------------------------------------------------

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Start ``argv`` in the sandbox's session (its environment) and follow it."""
        return await self._start(sandbox_id, argv, options, session=True)

    async def _start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions, *, session: bool
    ) -> BridgeProcess:
        if not SANDBOX_ID.match(sandbox_id):
            raise self._missing(sandbox_id, "exec")
        ref = "p-" + secrets.token_hex(8)
        body: dict[str, Any] = {"ref": ref, "argv": argv, "detached": options.detached}
        if options.cwd is not None:
            body["cwd"] = options.cwd
        if options.env:
            body["env"] = options.env
        if options.timeout is not None:
            body["timeout_ms"] = (math.ceil(options.timeout) + TIMEOUT_GRACE_SECONDS) * 1000
        with self._where("exec", sandbox_id):
            if options.stdin is not None or options.stdin_open:
                body["stdin"] = True
                if options.stdin or not options.stdin_open:
                    # Sent (and closed unless kept open) before the start: the process reads
                    # it from its first instruction.
                    await self.api.stdin(
                        sandbox_id, ref, options.stdin or b"", close=not options.stdin_open
                    )
            response = await self.api.start(sandbox_id, body, session)
        return BridgeProcess(self.api, sandbox_id, ref, response)

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """A started process by its ref; its output is replayed from the start."""
        if not SANDBOX_ID.match(sandbox_id):
            raise self._missing(sandbox_id, "attach")
        if not REF.match(ref):
            raise ProcessNotFound(
                f"no process {ref!r} in sandbox {sandbox_id}",
                provider=PROVIDER,
                op="attach",
                sandbox_id=sandbox_id,
            )
        with self._where("attach", sandbox_id):
            response = await self.api.follow(sandbox_id, ref, 0, 0)
        return BridgeProcess(self.api, sandbox_id, ref, response)

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """Processes started with ``Sandbox.start`` (running, or ended), oldest first."""
        if not SANDBOX_ID.match(sandbox_id):
            raise self._missing(sandbox_id, "processes")
        with self._where("processes", sandbox_id):
            found = await self.api.processes(sandbox_id)
        infos = [
            ProcessInfo(
                ref=str(p["ref"]),
                command=tuple(str(a) for a in p["command"]),
                running=bool(p["running"]),
                exit_code=p["exit_code"],
                started_at=datetime.fromisoformat(str(p["started_at"]).replace("Z", "+00:00")),
            )
            for p in found
        ]
        return sorted(infos, key=lambda p: (p.started_at or datetime.min, p.ref))

    # -- files ------------------------------------------------------------------------------

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Content of a regular file, read by a command of the sandbox's user."""
        return await file_access.read_as_user(self, sandbox_id, path, max_bytes)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file (parents created), written by a command of the sandbox's
        user from stdin."""
        await file_access.write_as_user(self, sandbox_id, path, data)

    # -- optional capabilities --------------------------------------------------------------

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """A public URL of ``port`` (1024-65535, not 3000) through the bridge's tunnel route."""
        if not isinstance(port, int) or not 1024 <= port <= 65535 or port == 3000:
            raise ConfigError(
                f"the bridge tunnels ports 1024-65535 except 3000 (its own), not {port!r}",
                provider=PROVIDER,
                op="expose_port",
                sandbox_id=sandbox_id,
            )
        if not SANDBOX_ID.match(sandbox_id):
            raise self._missing(sandbox_id, "expose_port")
        with self._where("expose_port", sandbox_id):
            return await self.api.tunnel(sandbox_id, port)

    def _snapshot_dir(self) -> Path:
        return Path(self.opts.snapshot_dir) if self.opts.snapshot_dir else default_snapshot_dir()

    def _snapshot_archive(self, snapshot_id: str) -> bytes:
        if not SNAPSHOT_ID.match(snapshot_id):
            raise ConfigError(
                f"not a snapshot of the cloudflare provider: {snapshot_id!r}", provider=PROVIDER
            )
        try:
            return (self._snapshot_dir() / f"{snapshot_id}.tar").read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"no snapshot {snapshot_id} in {self._snapshot_dir()} (snapshots are kept on "
                "the machine that took them)",
                provider=PROVIDER,
                op="create",
            ) from None

    async def snapshot(self, sandbox_id: str) -> str:
        """Archive the sandbox's /workspace (the bridge's persist) into the snapshot directory;
        the id restores it at create (``SandboxSpec.snapshot``). At most 32 MiB, the most the
        bridge restores."""
        if not SANDBOX_ID.match(sandbox_id):
            raise self._missing(sandbox_id, "snapshot")
        with self._where("snapshot", sandbox_id):
            archive = await self.api.persist(sandbox_id, HYDRATE_LIMIT)
        snapshot_id = "cfsnap-" + secrets.token_hex(16)
        folder = self._snapshot_dir()

        def save() -> None:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            partial = folder / f".{snapshot_id}.tar.part"
            partial.write_bytes(archive)
            partial.replace(folder / f"{snapshot_id}.tar")

        await anyio.to_thread.run_sync(save)
        return snapshot_id
