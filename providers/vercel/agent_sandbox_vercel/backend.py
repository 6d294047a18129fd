"""``VercelBackend``: the agent-sandbox contract on Vercel Sandbox's official ``vercel-sandbox`` SDK.

How the contract maps (details and limits in ``docs/providers/vercel.md``):

* A sandbox is a Vercel sandbox, named ``asb-<random>``; its name is its id. Vercel runs it in
  *sessions*: the sandbox is created non-persistent with ``execution_time_limit`` = the TTL, so
  when that runs out its session stops and nothing resumes it (this backend never resumes a
  stopped session; ``sweep`` deletes the record). Commands and files go to the current session.
* ``create`` is idempotent: the name is chosen before the first attempt, a retried attempt that
  finds the name taken (409) adopts that sandbox, and a create that finally fails deletes it.
* Labels are Vercel tags (at most 5): the owner, the expiry and the caller's labels, plus the
  workdir when set; ``agent-sandbox.managed`` and ``agent-sandbox.created-at`` are derived.
* Commands run through a small shim (see :mod:`._shim`): byte-exact output, exact signals, and
  ``kill`` ends the whole tree. The shim is a static binary uploaded once per sandbox (at create,
  or at a client's first command there), Perl where it cannot run. ``attach`` and ``processes``
  use Vercel's command ids.
* Files: ``fs.read_bytes`` / ``fs.write_bytes`` (checked first by a command of the sandbox's
  user: regular file, size, permission, the mode to keep), ``fs.mkdir``, ``fs.remove``.
* Ports are Vercel routes; ``snapshot`` is Vercel's (which stops the session: the sandbox is
  resumed from that snapshot with the rest of its TTL; its processes end).
"""

from __future__ import annotations

import builtins
import contextlib
import math
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
from pydantic import Field, SecretStr

from agent_sandbox import file_access
from agent_sandbox import labels as _labels
from agent_sandbox.backend import BaseBackend, ProviderOptions
from agent_sandbox.errors import (
    ConfigError,
    FileNotFound,
    FileTooLarge,
    PermissionDenied,
    ProcessNotFound,
    ProviderError,
    SandboxNotFound,
    Unsupported,
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

from ._errors import NAME, rows
from ._process import VercelProcess, VercelRun
from ._shim import runner, unwrap, wrap

if TYPE_CHECKING:
    from vercel.sandbox import Sandbox as VercelSandbox
    from vercel.sandbox import SandboxClient, SandboxRuntimeSession

MAX_TAGS = 5
"""Vercel keeps at most 5 tags per sandbox."""
MIB_PER_VCPU = 2048
"""Vercel gives each vCPU 2048 MB of memory."""
RUNNER_UPLOADS = 2
"""Uploads of the command runner a client tries per sandbox session before its commands stay
with Perl (an image that cannot run it)."""
DEADLINE_GRACE_SECONDS = 30
"""How long past a command's timeout the shim kills it by itself (the client enforces the
timeout; this is the backstop for a client that went away)."""
_DERIVED = (_labels.MANAGED, _labels.CREATED_AT)


class VercelOptions(ProviderOptions):
    """Options of the Vercel provider (``[vercel]`` in ``agent-sandbox.toml``,
    ``AGENT_SANDBOX_VERCEL_*``).

    Unset credentials come from the SDK's own resolution: ``VERCEL_OIDC_TOKEN``, or
    ``VERCEL_TOKEN`` with ``VERCEL_TEAM_ID`` and ``VERCEL_PROJECT_ID``.
    """

    provider: Literal["vercel"] = "vercel"
    token: SecretStr | None = None
    """Vercel access token; with ``team_id`` and ``project_id``, it replaces the environment."""
    team_id: str | None = None
    project_id: str | None = None
    base_url: str | None = None
    """Sandbox API address (tests, proxies); default Vercel's."""
    image: str | None = None
    """Image when the spec names none; default Vercel's (``vercel/sandbox/universal``)."""
    region: str | None = None
    """Region of new sandboxes; default ``VERCEL_REGION`` or Vercel's (``iad1``)."""
    create_attempts: int = Field(default=3, ge=1)
    """Attempts at creating a sandbox when a failure is transient."""
    retry_backoff_seconds: float = Field(default=1.0, ge=0)
    """First wait between create attempts; doubles each time."""

    # Credentials and addresses stay out of project files: a cloned repository could send the
    # token elsewhere.
    project_settable: ClassVar[frozenset[str]] = frozenset(
        {"image", "region", "create_attempts", "retry_backoff_seconds"}
    )


@dataclass
class _Box:
    """What a client keeps of one sandbox: its current session, its workdir and where its
    command runner is (``None``: not uploaded, or it would not start there)."""

    session: SandboxRuntimeSession
    workdir: str
    runner: str | None = None
    uploads: int = 0
    uploading: anyio.Lock = field(default_factory=anyio.Lock)

    def unstarted(self, path: str) -> None:
        """The runner at ``path`` did not start (removed?): upload it again before the next
        command, up to :data:`RUNNER_UPLOADS` times."""
        if self.runner == path:
            self.runner = None


class VercelBackend(BaseBackend):
    """Sandboxes on Vercel Sandbox (https://vercel.com/docs/vercel-sandbox)."""

    name = NAME
    Options = VercelOptions
    capabilities = Capabilities(
        network_none=True,
        network_allowlist=True,
        expose_port=True,
        snapshot=True,
        pause=False,
        exec_user=False,
        stdin=True,
        resources=True,
        gpu=False,
        persistent=True,
        isolated=True,
        signals=True,
        stdin_streaming=True,
        reattach=True,
    )

    def __init__(self, options: ProviderOptions | None = None) -> None:
        super().__init__(options)
        self.opts: VercelOptions = self.options  # type: ignore[assignment]
        self._client: SandboxClient | None = None
        self._boxes: dict[str, _Box] = {}

    # -- plumbing -------------------------------------------------------------------------------

    def _sdk(self) -> SandboxClient:
        if self._client is None:
            from vercel.sandbox import SandboxClient, SandboxCredentials, SandboxServiceOptions

            o = self.opts
            factory = None
            if o.token is not None:
                if not (o.team_id and o.project_id):
                    raise ConfigError(
                        "the Vercel token needs team_id and project_id too", provider=NAME
                    )
                credentials = SandboxCredentials(
                    token=o.token.get_secret_value(), team_id=o.team_id, project_id=o.project_id
                )

                async def factory() -> SandboxCredentials:
                    return credentials

            service = SandboxServiceOptions(
                base_url=o.base_url, credentials_factory=factory, region=o.region
            )
            self._client = SandboxClient.create(options=service)
        return self._client

    def _translating(
        self, op: str, sandbox_id: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        return translating(NAME, op, sandbox_id, table=rows)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._boxes.clear()
        if client is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await client.aclose()

    async def _get(self, sandbox_id: str, op: str) -> VercelSandbox:
        with self._translating(op, sandbox_id):
            return await self._sdk().get_sandbox(name=sandbox_id)

    async def _box(self, sandbox_id: str, op: str) -> _Box:
        """The sandbox's running session (cached). Raises ``SandboxNotFound`` when it stopped."""
        box = self._boxes.get(sandbox_id)
        if box is not None:
            return box
        sb = await self._get(sandbox_id, op)
        return self._remember(sb, op)

    def _remember(self, sb: VercelSandbox, op: str) -> _Box:
        from vercel.sandbox import SandboxStatus

        session = sb.current_session
        if session is None or session.status != SandboxStatus.RUNNING:
            raise SandboxNotFound(
                f"sandbox {sb.name} is stopped (its TTL ran out, or it was stopped)",
                provider=NAME,
                op=op,
                sandbox_id=sb.name,
            )
        workdir = (sb.tags or {}).get(_labels.WORKDIR) or sb.cwd or "/vercel/sandbox"
        box = self._boxes.get(sb.name)
        if box is not None and box.session.id == session.id:  # same session: same runner
            box.session, box.workdir = session, workdir
            return box
        box = _Box(session, workdir)
        self._boxes[sb.name] = box
        return box

    async def _runner(self, box: _Box) -> str | None:
        """Where the box's command runner is, uploading it first when needed; ``None`` when
        commands go through Perl (no runner in this installation, or uploads that failed or
        gave a runner that would not start)."""
        found = runner()
        if found is None or box.runner is not None or box.uploads >= RUNNER_UPLOADS:
            return box.runner
        async with box.uploading:
            if box.runner is None and box.uploads < RUNNER_UPLOADS:
                box.uploads += 1
                path, data = found
                with contextlib.suppress(Exception):  # then Perl, as without a runner
                    await box.session.fs.write_bytes(path, data, mode=0o755)
                    box.runner = path
        return box.runner

    async def _in_session(self, sandbox_id: str, op: str, call: Any) -> Any:
        """``await call(session)`` in the current session; once more in a new one if the cached
        session stopped meanwhile (another client took a snapshot)."""
        box = await self._box(sandbox_id, op)
        try:
            with self._translating(op, sandbox_id):
                return await call(box.session)
        except SandboxNotFound:
            self._boxes.pop(sandbox_id, None)
            fresh = await self._box(sandbox_id, op)
            if fresh.session.id == box.session.id:
                raise
            with self._translating(op, sandbox_id):
                return await call(fresh.session)

    def _info(self, sb: VercelSandbox) -> SandboxInfo:
        from vercel.sandbox import SandboxStatus

        tags = dict(sb.tags or {})
        workdir = tags.pop(_labels.WORKDIR, None) or sb.cwd or "/vercel/sandbox"
        created = _from_ms(sb.created_at)
        expires = _labels.expires_at(tags)
        session = sb.current_session
        if expires is None and session is not None and session.execution_time_limit:
            started = _from_ms(session.started_at)
            expires = started + session.execution_time_limit if started else None
        if _labels.OWNER in tags:
            tags[_labels.MANAGED] = "true"
            if created is not None:
                tags[_labels.CREATED_AT] = created.isoformat(timespec="seconds")
        status = session.status if session is not None else sb.status
        state: Literal["running", "stopped", "unknown"] = (
            "running"
            if status in (SandboxStatus.RUNNING, SandboxStatus.PENDING)
            else "stopped"
            if status is not None
            else "unknown"
        )
        return SandboxInfo(
            id=sb.name,
            provider=NAME,
            state=state,
            labels=tags,
            created_at=created,
            expires_at=expires,
            image=sb.image,
            workdir=workdir,
            metadata={
                "region": str(sb.region or ""),
                "vcpus": str(sb.vcpus or ""),
                "memory_mb": str(sb.memory or ""),
                "session": sb.current_session_id,
            },
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def check_spec(self, spec: SandboxSpec) -> None:
        """Refuse what Vercel cannot honour: disk size, idle timeout, odd CPU/memory sizes."""
        super().check_spec(spec)
        if spec.disk_mib is not None:
            raise self._unsupported("disk_mib (Vercel sandboxes have a fixed disk)")
        if spec.idle_timeout_seconds is not None:
            raise self._unsupported("idle_timeout_seconds (Vercel has a lifetime, not an idle one)")
        _resources(spec)

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox (transient failures retried under the same name; never orphaned)."""
        from vercel.sandbox import SnapshotSource

        self.check_spec(spec)
        name = "asb-" + uuid.uuid4().hex
        tags = _tags(spec)
        kwargs: dict[str, Any] = {
            "name": name,
            "image": None if spec.snapshot else (spec.image or self.opts.image),
            "source": SnapshotSource(snapshot_id=spec.snapshot) if spec.snapshot else None,
            "ports": list(spec.ports) or None,
            "execution_time_limit": timedelta(seconds=max(1, math.ceil(spec.ttl_seconds))),
            "resources": _resources(spec),
            "persistent": False,
            "network_policy": _network(spec),
            "env": dict(spec.env) or None,
            "tags": tags,
        }
        client = self._sdk()

        async def attempt() -> VercelSandbox:
            from vercel.sandbox import SandboxApiError

            with self._translating("create", name):
                try:
                    return await client.create_sandbox(**kwargs)
                except SandboxApiError as exc:
                    if exc.status_code != 409:
                        raise
                    # an earlier attempt made it and its answer was lost: that one is ours
                    return await client.get_sandbox(name=name)

        try:
            sb = await retry(
                attempt,
                attempts=self.opts.create_attempts,
                backoff=self.opts.retry_backoff_seconds,
            )
            box = self._remember(sb, "create")
            if spec.workdir:
                with self._translating("create", name):
                    await box.session.fs.mkdir(spec.workdir, recursive=True)
            await self._runner(box)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._delete(name)
            raise
        return self._info(sb)

    async def _delete(self, name: str) -> None:
        """Delete a sandbox by name, whatever state it is in; a missing one is fine."""
        self._boxes.pop(name, None)
        with contextlib.suppress(SandboxNotFound):
            sb = await self._get(name, "destroy")
            with self._translating("destroy", name):
                await sb.destroy(delete_orphan_snapshots=False)

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a sandbox by id. Raises ``SandboxNotFound``."""
        sb = await self._get(sandbox_id, "connect")
        with contextlib.suppress(SandboxNotFound):
            self._remember(sb, "connect")
        return self._info(sb)

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Sandboxes carrying all of ``labels`` (one tag filtered by Vercel, the rest here)."""
        from vercel.sandbox import SandboxQueryByCreatedAt, TagFilter

        wanted = dict(labels or {})
        stored = [(k, v) for k, v in wanted.items() if k not in _DERIVED]
        query = SandboxQueryByCreatedAt(
            tag=TagFilter(key=stored[0][0], value=stored[0][1]) if stored else None
        )
        found = []
        with self._translating("list"):
            async for sb in self._sdk().query_sandboxes(query=query, page_size=50):
                info = self._info(sb)
                if all(info.labels.get(k) == v for k, v in wanted.items()):
                    found.append(info)
        return found

    async def destroy(self, sandbox_id: str) -> None:
        """Delete the sandbox (its session stops at once); a gone one is fine."""
        await self._delete(sandbox_id)

    # -- processes ------------------------------------------------------------------------------

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Start ``argv`` under the shim (see :mod:`._shim`): a command run to completion in one
        ``run_process`` request, a background one or one whose stdin stays open with
        ``create_process``."""
        box = await self._box(sandbox_id, "exec")
        deadline = (
            0 if options.timeout is None else math.ceil(options.timeout) + DEADLINE_GRACE_SECONDS
        )
        kind = "start" if options.detached else "exec"
        cwd = options.cwd or box.workdir
        path = await self._runner(box)
        command, args = wrap(argv, cwd, kind, deadline, path)
        piped = options.stdin_open or options.stdin is not None
        env = options.env or None

        def unstarted() -> None:
            if path is not None:
                box.unstarted(path)

        if not (options.detached or options.stdin_open):
            commands = [(command, args)]
            if path is not None:  # Perl where the runner does not start
                commands.append(wrap(argv, cwd, kind, deadline))

            async def run_to_end(session: SandboxRuntimeSession) -> VercelRun:
                return await VercelRun.begin(
                    session,
                    sandbox_id,
                    commands,
                    env=env,
                    stdin=options.stdin,
                    on_unstarted=unstarted,
                )

            handle: VercelRun = await self._in_session(sandbox_id, "exec", run_to_end)
            return handle

        async def run(session: SandboxRuntimeSession) -> Any:
            return await session.create_process(
                command,
                args,
                env=env,
                stdin=subprocess.PIPE if piped else None,
                stderr=subprocess.DEVNULL,
            )

        proc = await self._in_session(sandbox_id, "exec", run)
        feed = None if options.stdin_open else options.stdin
        return VercelProcess(proc, sandbox_id, stdin=feed, on_unstarted=unstarted)

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """A command started by any client, by its Vercel command id (output replayed from its
        start). Raises ``ProcessNotFound``."""
        from vercel.sandbox import SandboxApiError

        box = await self._box(sandbox_id, "attach")
        with self._translating("attach", sandbox_id):
            try:
                proc = await box.session.get_process(ref)
            except SandboxApiError as exc:
                if exc.status_code != 404:
                    raise
                proc = None
        if proc is None or unwrap(proc.name, proc.args) is None:
            raise ProcessNotFound(
                f"no process {ref!r} started by agent-sandbox in sandbox {sandbox_id}",
                provider=NAME,
                op="attach",
                sandbox_id=sandbox_id,
            )
        return VercelProcess(proc, sandbox_id)

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """The commands started with ``Sandbox.start`` in the sandbox's current session."""

        async def query(session: SandboxRuntimeSession) -> Any:
            return await session.query_processes()

        found = []
        for proc in await self._in_session(sandbox_id, "processes", query):
            shown = unwrap(proc.name, proc.args)
            if shown is None or shown[0] != "start":
                continue
            found.append(
                ProcessInfo(
                    ref=proc.id,
                    command=tuple(shown[1]),
                    running=proc.returncode is None,
                    exit_code=proc.returncode,
                    started_at=_from_ms(proc.started_at),
                )
            )
        return found

    # -- files ----------------------------------------------------------------------------------

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """A regular file's bytes, through Vercel's file API (which acts as the sandbox's user);
        a command checks first that it is a regular file within ``max_bytes``."""
        await file_access.check_read(self, sandbox_id, path, max_bytes)

        async def read(session: SandboxRuntimeSession) -> bytes:
            return await session.fs.read_bytes(path)

        data: bytes = await self._in_session(sandbox_id, "read_file", read)
        if len(data) > max_bytes:  # it grew after the check
            raise FileTooLarge(
                f"read_file {path}: larger than max_bytes={max_bytes}",
                provider=NAME,
                op="read_file",
                sandbox_id=sandbox_id,
            )
        return data

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file through Vercel's file API, keeping a replaced file's mode
        (a command of the sandbox's user checks the target and makes its parents first)."""
        mode = await file_access.check_write(self, sandbox_id, path)

        async def write(session: SandboxRuntimeSession) -> None:
            await session.fs.write_bytes(path, data, mode=mode)

        await self._in_session(sandbox_id, "write_file", write)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its parents (Vercel's ``fs/mkdir``)."""

        async def mkdir(session: SandboxRuntimeSession) -> None:
            await session.fs.mkdir(path, recursive=True)

        await self._in_session(sandbox_id, "mkdir", mkdir)

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a tree with ``recursive`` (the SDK's ``fs.remove``)."""
        from vercel.sandbox import SandboxFilesystemCommandError

        async def remove(session: SandboxRuntimeSession) -> None:
            await session.fs.remove(path, recursive=recursive)

        where: dict[str, Any] = {"provider": NAME, "op": "remove", "sandbox_id": sandbox_id}
        try:
            await self._in_session(sandbox_id, "remove", remove)
        except ProviderError as exc:
            cause = exc.__cause__
            if not isinstance(cause, SandboxFilesystemCommandError):
                raise
            if cause.exit_code == 1 and not cause.stderr:
                raise FileNotFound(f"no such file or directory: {path}", **where) from cause
            if "ermission denied" in cause.stderr or "Read-only" in cause.stderr:
                raise PermissionDenied(f"remove {path}: {cause.stderr.strip()}", **where) from cause
            raise

    # -- optional capabilities ------------------------------------------------------------------

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """The public URL of ``port`` (Vercel's route; the port is added when not yet exposed)."""
        sb = await self._get(sandbox_id, "expose_port")
        with self._translating("expose_port", sandbox_id):
            if not any(route.port == port for route in sb.routes):
                await sb.update(ports=sorted({*(r.port for r in sb.routes), port}))
        for route in sb.routes:
            if route.port == port:
                return route.url
        raise ProviderError(
            f"Vercel gave no route for port {port}", provider=NAME, sandbox_id=sandbox_id
        )

    async def snapshot(self, sandbox_id: str) -> str:
        """Vercel's snapshot (use the id as ``SandboxSpec.snapshot``). Vercel stops the session to
        take it; the sandbox then resumes from it with the rest of its TTL, without its
        processes."""
        box = await self._box(sandbox_id, "snapshot")
        with self._translating("snapshot", sandbox_id):
            snap = await box.session.snapshot()
        self._boxes.pop(sandbox_id, None)
        sb = await self._get(sandbox_id, "snapshot")
        expiry = self._info(sb).expires_at
        left = (expiry - datetime.now(timezone.utc)).total_seconds() if expiry else 0
        if left >= 1:
            with self._translating("snapshot", sandbox_id):
                await sb.update(execution_time_limit=timedelta(seconds=math.ceil(left)))
                resumed = await self._sdk().resume_sandbox(name=sandbox_id)
            self._remember(resumed, "snapshot")
        return snap.id


def _from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc)


def _tags(spec: SandboxSpec) -> dict[str, str]:
    """The Vercel tags of a spec: its labels, less the derived ones, plus the workdir."""
    tags = {k: v for k, v in spec.labels.items() if k not in _DERIVED}
    if spec.workdir:
        tags[_labels.WORKDIR] = spec.workdir
    if len(tags) > MAX_TAGS:
        raise Unsupported(
            f"Vercel keeps at most {MAX_TAGS} tags per sandbox; these labels need {len(tags)}: "
            f"{sorted(tags)} (agent-sandbox uses the owner and the expiry, and the workdir when "
            "set)",
            provider=NAME,
            op="create",
        )
    return tags


def _resources(spec: SandboxSpec) -> Any:
    """``SandboxResources`` for the spec's cpus / memory_mib (2048 MB per whole vCPU)."""
    if spec.cpus is None and spec.memory_mib is None:
        return None
    from vercel.sandbox import SandboxResources

    vcpus = spec.cpus if spec.cpus is not None else (spec.memory_mib or 0) / MIB_PER_VCPU
    if vcpus != int(vcpus) or vcpus < 1:
        raise Unsupported(
            f"Vercel allocates whole vCPUs with {MIB_PER_VCPU} MiB each; cpus={spec.cpus}, "
            f"memory_mib={spec.memory_mib} is not such a size",
            provider=NAME,
            op="create",
        )
    if spec.memory_mib is not None and spec.memory_mib != int(vcpus) * MIB_PER_VCPU:
        raise Unsupported(
            f"Vercel gives {MIB_PER_VCPU} MiB per vCPU: {int(vcpus)} vCPU(s) have "
            f"{int(vcpus) * MIB_PER_VCPU} MiB, not {spec.memory_mib}",
            provider=NAME,
            op="create",
        )
    return SandboxResources(vcpus=int(vcpus), memory=int(vcpus) * MIB_PER_VCPU)


def _network(spec: SandboxSpec) -> Any:
    """Vercel's network policy for the spec's (``open`` leaves Vercel's default: allow all)."""
    from vercel.sandbox import NetworkPolicy, NetworkPolicySubnets

    mode = spec.network.mode
    if mode == "open":
        return None
    if mode == "none":
        return NetworkPolicy.deny_all()
    cidrs, domains = spec.network.split()
    subnets = NetworkPolicySubnets(allow=cidrs) if cidrs else None
    return NetworkPolicy.custom(allow={domain: [] for domain in domains}, subnets=subnets)
