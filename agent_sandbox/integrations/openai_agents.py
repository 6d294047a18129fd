"""A sandbox client for the OpenAI Agents SDK backed by any agent-sandbox provider.

The SDK's own backends are client classes handed to ``SandboxRunConfig``; this one is too::

    from agents import Runner, RunConfig
    from agents.sandbox import SandboxAgent, SandboxRunConfig
    from agent_sandbox.integrations.openai_agents import AgentSandboxClient, AgentSandboxClientOptions

    run_config = RunConfig(sandbox=SandboxRunConfig(
        client=AgentSandboxClient(),
        options=AgentSandboxClientOptions(provider="docker", image="python:3.12-slim"),
    ))

Importing this module registers the options type and the session-state type
(``"agent_sandbox"``) with the SDK, which is how it finds a backend again when it deserializes
a saved run.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import IO, Literal, cast
from urllib.parse import urlsplit

import anyio

from . import require

require("agents.sandbox", "openai-agents")

from agents.sandbox import Manifest  # noqa: E402
from agents.sandbox.errors import (  # noqa: E402
    ExecTimeoutError,
    ExecTransportError,
    ExposedPortUnavailableError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
)
from agents.sandbox.session import (  # noqa: E402
    BaseSandboxClient,
    BaseSandboxClientOptions,
    BaseSandboxSession,
    Dependencies,
    SandboxSession,
    SandboxSessionState,
)
from agents.sandbox.session.manager import Instrumentation  # noqa: E402
from agents.sandbox.session.runtime_helpers import (  # noqa: E402
    RESOLVE_WORKSPACE_PATH_HELPER,
    RuntimeHelperScript,
)
from agents.sandbox.session.workspace_payloads import coerce_write_payload  # noqa: E402
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot  # noqa: E402
from agents.sandbox.types import ExecResult, ExposedPortEndpoint, User  # noqa: E402
from pydantic import Field  # noqa: E402

from .. import (  # noqa: E402
    CommandTimeout,
    FileNotFound,
    Sandbox,
    SandboxError,
    SandboxNotFound,
    Unsupported,
)
from .. import ExecResult as SandboxExecResult  # noqa: E402
from ._config import INTEGRATION_LABEL, SandboxConfig  # noqa: E402

__all__ = [
    "AgentSandboxClient",
    "AgentSandboxClientOptions",
    "AgentSandboxSession",
    "AgentSandboxSessionState",
]

BACKEND_ID = "agent_sandbox"
_WRITE_AS_USER = 'mkdir -p "$(dirname "$1")" && cat > "$1"'


class AgentSandboxClientOptions(BaseSandboxClientOptions, SandboxConfig):
    """Where and what to create: ``provider``, its ``options``, and any ``SandboxSpec`` field.

    ``ports`` become the session's exposed ports (``resolve_exposed_port``). Options travel in
    the saved session state so a resumed run can recreate the sandbox: pass credentials through
    the provider's environment variables, not ``options``.
    """

    type: Literal["agent_sandbox"] = "agent_sandbox"


class AgentSandboxSessionState(SandboxSessionState):
    """What a saved run needs to find its sandbox again, or recreate it."""

    type: Literal["agent_sandbox"] = "agent_sandbox"
    sandbox_id: str
    config: AgentSandboxClientOptions = Field(default_factory=AgentSandboxClientOptions)


class AgentSandboxSession(BaseSandboxSession):
    """One agent-sandbox sandbox as an SDK session.

    Commands run through ``Sandbox.exec`` (argv, in the manifest root once it exists; a timeout
    kills the process tree); files move through the provider's file API, after the SDK's
    in-sandbox check that a path does not leave the workspace; ``persist_workspace`` and
    ``hydrate_workspace`` move a tar of the workspace through ``download``/``upload``.
    """

    state: AgentSandboxSessionState

    def __init__(self, state: AgentSandboxSessionState, sandbox: Sandbox) -> None:
        self.state = state
        self.sandbox = sandbox
        """The agent-sandbox handle: its full API (``exec_stream``, ``snapshot``, ...)."""

    # -- commands ---------------------------------------------------------------------------

    async def exec(
        self,
        *command: str | Path,
        timeout: float | None = None,
        shell: bool | list[str] = True,
        user: str | User | None = None,
    ) -> ExecResult:
        # The user goes to the provider (no sudo wrapper): Unsupported where it has no users.
        argv = self._prepare_exec_command(*command, shell=shell, user=None)
        return await self._run(argv, timeout=timeout, user=user)

    async def _exec_internal(
        self, *command: str | Path, timeout: float | None = None
    ) -> ExecResult:
        return await self._run([str(part) for part in command], timeout=timeout)

    async def _run(
        self,
        argv: list[str],
        *,
        timeout: float | None = None,
        user: str | User | None = None,
        stdin: bytes | None = None,
    ) -> ExecResult:
        return _sdk_result(await self._run_raw(argv, timeout=timeout, user=user, stdin=stdin))

    async def _run_raw(
        self,
        argv: list[str],
        *,
        timeout: float | None = None,
        user: str | User | None = None,
        stdin: bytes | None = None,
    ) -> SandboxExecResult:
        name = user.name if isinstance(user, User) else user
        # The manifest root exists only once the workspace is set up; before, the default.
        cwd = self.state.manifest.root if self.state.workspace_root_ready else None
        try:
            result = await self.sandbox.exec(argv, cwd=cwd, timeout=timeout, user=name, stdin=stdin)
        except CommandTimeout as exc:
            raise ExecTimeoutError(command=argv, timeout_s=timeout, cause=exc) from exc
        except Unsupported:
            raise  # e.g. a user on a provider without users: the caller's error, not transport
        except SandboxError as exc:
            raise ExecTransportError(
                command=argv, cause=exc, retryable=exc.retryable, context={"code": exc.code}
            ) from exc
        return result

    async def _resolve_exposed_port(self, port: int) -> ExposedPortEndpoint:
        try:
            url = urlsplit(await self.sandbox.expose_port(port))
        except SandboxError as exc:
            raise ExposedPortUnavailableError(
                port=port,
                exposed_ports=self.state.exposed_ports,
                reason="backend_unavailable",
                context={"backend": BACKEND_ID, "code": exc.code},
                cause=exc,
            ) from exc
        tls = url.scheme in ("https", "wss")
        return ExposedPortEndpoint(
            host=url.hostname or "127.0.0.1",
            port=url.port or (443 if tls else 80),
            tls=tls,
            query=url.query,
        )

    # -- files ------------------------------------------------------------------------------

    def _runtime_helpers(self) -> tuple[RuntimeHelperScript, ...]:
        return (RESOLVE_WORKSPACE_PATH_HELPER,)

    def _current_runtime_helper_cache_key(self) -> object | None:
        return self.state.sandbox_id

    async def _validate_path_access(self, path: Path | str, *, for_write: bool = False) -> Path:
        # Symlinks are resolved inside the sandbox, so none leads a file operation out of the
        # workspace (the SDK's rule for remote backends).
        return await self._validate_remote_path_access(path, for_write=for_write)

    async def read(self, path: Path, *, user: str | User | None = None) -> io.IOBase:
        workspace_path = await self._validate_path_access(path)
        if user is not None:
            raw = await self._run_raw(["cat", "--", workspace_path.as_posix()], user=user)
            if raw.stdout_truncated:
                raise WorkspaceArchiveReadError(
                    path=path, context={"reason": "larger than the exec output limit"}
                )
            result = _sdk_result(raw)
            if not result.ok():
                await self._raise_read_error_from_exec(
                    path=path,
                    workspace_path=workspace_path,
                    command=("cat", "--", workspace_path.as_posix()),
                    result=result,
                    user=user,
                )
            return io.BytesIO(result.stdout)
        try:
            return io.BytesIO(await self.sandbox.read_file(workspace_path.as_posix()))
        except FileNotFound as exc:
            raise WorkspaceReadNotFoundError(path=path, cause=exc) from exc
        except SandboxError as exc:
            raise WorkspaceArchiveReadError(
                path=path, context={"code": exc.code}, cause=exc, retryable=exc.retryable
            ) from exc

    async def write(self, path: Path, data: io.IOBase, *, user: str | User | None = None) -> None:
        payload = coerce_write_payload(path=path, data=data).stream.read()
        workspace_path = await self._validate_path_access(path, for_write=True)
        target = workspace_path.as_posix()
        if user is not None:
            argv = ["sh", "-c", _WRITE_AS_USER, "sh", target]
            result = await self._run(argv, user=user, stdin=payload)
            if not result.ok():
                raise WorkspaceArchiveWriteError(
                    path=workspace_path,
                    context={"stderr": result.stderr.decode("utf-8", errors="replace")},
                )
            return
        try:
            await self.sandbox.write_file(target, payload)
        except SandboxError as exc:
            raise WorkspaceArchiveWriteError(
                path=workspace_path, context={"code": exc.code}, cause=exc, retryable=exc.retryable
            ) from exc

    async def persist_workspace(self) -> io.IOBase:
        """A tar of the workspace root, member paths relative to it, skip paths left out."""
        root = self._workspace_root_path()
        skip = {path.as_posix() for path in self._persist_workspace_skip_relpaths()}
        with tempfile.TemporaryDirectory() as local:
            try:
                await self.sandbox.download(root.as_posix(), local)
            except SandboxError as exc:
                raise WorkspaceArchiveReadError(
                    path=root, context={"code": exc.code}, cause=exc
                ) from exc
            archive = await anyio.to_thread.run_sync(_tar_tree, Path(local), skip)
        return cast(io.IOBase, archive)

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        """Unpack a tar from :meth:`persist_workspace` under the workspace root.

        The archive is extracted by Python's ``data`` filter (no absolute paths, no ``..``, no
        links leaving it, no devices, no set-id bits) before anything reaches the sandbox.
        """
        root = self._workspace_root_path()
        with tempfile.TemporaryDirectory() as local:
            try:
                await anyio.to_thread.run_sync(_untar, data, Path(local))
            except (tarfile.TarError, OSError) as exc:
                raise WorkspaceArchiveWriteError(path=root, cause=exc) from exc
            try:
                await self.sandbox.upload(local, root.as_posix())
            except SandboxError as exc:
                raise WorkspaceArchiveWriteError(
                    path=root, context={"code": exc.code}, cause=exc
                ) from exc

    # -- lifecycle --------------------------------------------------------------------------

    async def running(self) -> bool:
        try:
            info = await self.sandbox.refresh()
        except SandboxNotFound:
            return False
        return info.state == "running"

    # shutdown() leaves the sandbox running (there is no "stopped" state to keep it in): it
    # ends with AgentSandboxClient.delete, which the Runner calls for sessions it owns, or
    # with its TTL.


def _sdk_result(result: SandboxExecResult) -> ExecResult:
    return ExecResult(
        stdout=result.stdout_bytes, stderr=result.stderr_bytes, exit_code=result.exit_code
    )


def _tar_tree(local: Path, skip: set[str]) -> IO[bytes]:
    """A tar (in a temporary file, rewound) of ``local``'s children, less the ``skip`` paths."""

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        hidden = any(member.name == s or member.name.startswith(s + "/") for s in skip)
        return None if hidden else member

    archive = tempfile.TemporaryFile()  # noqa: SIM115 - the caller reads and closes it
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for child in sorted(local.iterdir()):
            tar.add(child, arcname=child.name, filter=keep)
    archive.seek(0)
    return archive


def _untar(data: io.IOBase, local: Path) -> None:
    with tarfile.open(fileobj=cast(IO[bytes], data), mode="r:*") as tar:
        tar.extractall(local, filter="data")


class AgentSandboxClient(BaseSandboxClient[AgentSandboxClientOptions]):
    """Creates, resumes and deletes :class:`AgentSandboxSession` s on any provider.

    Options default to the configured provider (``AGENT_SANDBOX_*``, ``agent-sandbox.toml``,
    else ``local``), so ``SandboxRunConfig(client=AgentSandboxClient())`` is enough.
    """

    backend_id = BACKEND_ID
    supports_default_options = True

    def __init__(
        self,
        *,
        instrumentation: Instrumentation | None = None,
        dependencies: Dependencies | None = None,
    ) -> None:
        self._instrumentation = instrumentation or Instrumentation()
        self._dependencies = dependencies

    async def create(
        self,
        *,
        snapshot: SnapshotSpec | SnapshotBase | None = None,
        manifest: Manifest | None = None,
        options: AgentSandboxClientOptions | None = None,
    ) -> SandboxSession:
        """Create a sandbox. Without a manifest the workspace root is the sandbox's workdir."""
        config = options or AgentSandboxClientOptions()
        session_id = uuid.uuid4()
        sandbox = await config.create({INTEGRATION_LABEL: "openai-agents"})
        try:
            if manifest is None:
                manifest = Manifest(root=sandbox.info.workdir)
            self._validate_manifest_for_create(manifest)
            state = AgentSandboxSessionState(
                session_id=session_id,
                manifest=manifest,
                snapshot=resolve_snapshot(snapshot, str(session_id)),
                exposed_ports=config.ports,
                sandbox_id=sandbox.id,
                config=config,
            )
        except BaseException:
            await sandbox.destroy()
            raise
        return self._wrap_session(
            AgentSandboxSession(state, sandbox), instrumentation=self._instrumentation
        )

    async def delete(self, session: SandboxSession) -> SandboxSession:
        """Destroy the session's sandbox (idempotent)."""
        inner = session._inner
        if not isinstance(inner, AgentSandboxSession):
            raise TypeError("AgentSandboxClient.delete expects an AgentSandboxSession")
        await inner.sandbox.destroy()
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """Reattach to the state's sandbox; when it is gone, create a replacement from the same
        config (the SDK then restores the workspace from the state's snapshot)."""
        if not isinstance(state, AgentSandboxSessionState):
            raise TypeError("AgentSandboxClient.resume expects an AgentSandboxSessionState")
        state.assert_path_grants_rebound()
        try:
            sandbox = await state.config.connect(state.sandbox_id)
            preserved = True
        except SandboxNotFound:
            sandbox = await state.config.create({INTEGRATION_LABEL: "openai-agents"})
            state.sandbox_id = sandbox.id
            state.workspace_root_ready = False
            preserved = False
        inner = AgentSandboxSession(state, sandbox)
        inner._set_start_state_preserved(preserved)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, AgentSandboxSessionState)
