"""A LangChain deepagents sandbox backend on any agent-sandbox provider.

:class:`AgentSandboxBackend` implements deepagents' ``BaseSandbox`` (``execute``,
``upload_files``, ``download_files``; deepagents derives ``ls``, ``read``, ``write``, ``edit``,
``grep`` and ``glob`` from them)::

    from deepagents import create_deep_agent
    from agent_sandbox.integrations.deepagents import AgentSandboxBackend

    backend = AgentSandboxBackend.create(provider="docker", image="python:3.12-slim")
    agent = create_deep_agent(model=..., backend=backend)
    ...
    backend.destroy()

:class:`AgentSandboxProvider` is the lifecycle half (``get_or_create``/``delete``), published
under the ``deepagents_code.sandbox_providers`` entry point group as ``agent_sandbox``, where
deepagents' coding CLI looks for sandbox providers.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Mapping
from typing import Any

from . import require

require("deepagents.backends.sandbox", "deepagents")

from deepagents.backends.protocol import (  # noqa: E402
    ExecuteResponse,
    FileDownloadResponse,
    FileOperationError,
    FileUploadResponse,
)
from deepagents.backends.sandbox import BaseSandbox  # noqa: E402

from .. import (  # noqa: E402
    CommandTimeout,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    SandboxError,
    SandboxNotFound,
)
from ..sync import Sandbox  # noqa: E402
from ._config import INTEGRATION_LABEL, SandboxConfig  # noqa: E402

__all__ = ["AgentSandboxBackend", "AgentSandboxProvider"]

DEFAULT_TIMEOUT = 30 * 60
"""Seconds a command may run when the caller gives no timeout."""
DEFAULT_OUTPUT_LIMIT = 10 * 1024 * 1024
"""Bytes of merged output kept per command; the rest is dropped and flagged ``truncated``."""
TIMEOUT_EXIT_CODE = 124
"""Exit code reported for a command killed at its timeout (as coreutils ``timeout``)."""
_LABELS = {INTEGRATION_LABEL: "deepagents"}


class AgentSandboxBackend(BaseSandbox):
    """One agent-sandbox sandbox as a deepagents sandbox backend.

    ``execute`` runs the command with ``sh -c`` and returns stdout and stderr merged in the
    order they arrived; a timeout kills the whole process tree and returns exit code 124 with
    the output so far. File transfers go through the provider's file API; per-file failures
    come back as values (``file_not_found``, ``is_directory``, ``permission_denied``,
    ``invalid_path``), never as exceptions. Paths must be absolute.

    Synchronous (deepagents calls it from worker threads for its async methods); build one
    with :meth:`create` or :meth:`connect`, or around an ``agent_sandbox.sync.Sandbox``.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        timeout: int = DEFAULT_TIMEOUT,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> None:
        self.sandbox = sandbox
        """The agent-sandbox handle (blocking API): everything beyond deepagents' protocol."""
        self.timeout = timeout
        self.output_limit = output_limit

    @classmethod
    def create(
        cls,
        *,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        timeout: int = DEFAULT_TIMEOUT,
        **spec: Any,
    ) -> AgentSandboxBackend:
        """Create a sandbox (``spec``: any ``SandboxSpec`` field) and wrap it.

        Raises ``ConfigError``, ``ProviderNotInstalled`` and the provider's typed errors.
        """
        config = SandboxConfig(provider=provider, options=dict(options or {}), **spec)
        sandbox = Sandbox.create(
            config.spec(_LABELS), provider=provider, options=config.options or None
        )
        return cls(sandbox, timeout=timeout)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> AgentSandboxBackend:
        """Wrap an existing sandbox. Raises ``SandboxNotFound``."""
        return cls(Sandbox.connect(sandbox_id, provider=provider, options=options), timeout=timeout)

    @property
    def id(self) -> str:
        """The sandbox's id (what :meth:`connect` and ``AgentSandboxProvider`` take)."""
        return self.sandbox.id

    def destroy(self) -> None:
        """Destroy the sandbox (idempotent)."""
        self.sandbox.destroy()

    # -- the protocol -----------------------------------------------------------------------

    def execute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        """Run ``command`` with ``sh -c``; ``timeout`` 0 means none, ``None`` the default."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be non-negative, got {timeout}")
        seconds = self.timeout if timeout is None else timeout
        output = bytearray()
        truncated = False
        exit_code: int | None = None
        try:
            for event in self.sandbox.exec_stream(command, timeout=seconds or None):
                if event.kind == "exit":
                    exit_code = event.exit_code
                    continue
                room = self.output_limit - len(output)
                truncated = truncated or len(event.data) > room
                output += event.data[: max(room, 0)]
        except CommandTimeout:
            text = output.decode("utf-8", errors="replace")
            note = f"Command timed out after {seconds} seconds"
            return ExecuteResponse(
                output=f"{text}\n{note}" if text else note,
                exit_code=TIMEOUT_EXIT_CODE,
                truncated=truncated,
            )
        return ExecuteResponse(
            output=output.decode("utf-8", errors="replace"),
            exit_code=exit_code,
            truncated=truncated,
        )

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """Write each file (parents created); failures are per-file values."""
        responses = []
        for path, content in files:
            error: FileOperationError | str | None = _path_error(path)
            if error is None:
                try:
                    self.sandbox.write_file(path, content)
                except SandboxError as exc:
                    error = _file_error(exc)
            responses.append(FileUploadResponse(path=path, error=error))
        return responses

    def download_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        """Read each file; failures are per-file values."""
        responses = []
        for path in paths:
            error: FileOperationError | str | None = _path_error(path)
            content = None
            if error is None:
                try:
                    content = self.sandbox.read_file(path)
                except SandboxError as exc:
                    error = _file_error(exc)
            responses.append(FileDownloadResponse(path=path, content=content, error=error))
        return responses


def _path_error(path: str) -> FileOperationError | None:
    if not path or "\x00" in path or not posixpath.isabs(path):
        return "invalid_path"
    return None


def _file_error(exc: SandboxError) -> FileOperationError | str:
    if isinstance(exc, FileNotFound):
        return "file_not_found"
    if isinstance(exc, IsADirectory):
        return "is_directory"
    if isinstance(exc, PermissionDenied):
        return "permission_denied"
    if isinstance(exc, InvalidPath):
        return "invalid_path"
    return f"{exc.code}: {exc}"


class AgentSandboxProvider:
    """Sandbox lifecycle for deepagents' coding CLI (its ``SandboxProvider`` interface).

    Published under the ``deepagents_code.sandbox_providers`` entry point group as
    ``agent_sandbox``. ``get_or_create`` takes ``provider``, ``options`` and any
    ``SandboxSpec`` field as keyword arguments (the CLI passes its configured ``params``).
    """

    @property
    def metadata(self) -> Any:
        """The CLI's ``SandboxProviderMetadata`` when the CLI is installed, else ``None``."""
        try:
            from deepagents_code.integrations.sandbox_provider import (  # type: ignore[import-not-found,unused-ignore]
                SandboxInstallHint,
                SandboxProviderMetadata,
            )
        except ImportError:
            return None
        return SandboxProviderMetadata(
            name="agent_sandbox",
            working_dir="/workspace",
            install=SandboxInstallHint(kind="package", name="agent-sandbox[deepagents]"),
            backend_module="agent_sandbox.integrations.deepagents",
        )

    def get_or_create(
        self,
        *,
        sandbox_id: str | None = None,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        **spec: Any,
    ) -> AgentSandboxBackend:
        """Reattach to ``sandbox_id``, or create a sandbox when it is ``None``.

        Raises ``SandboxNotFound`` (the CLI's ``SandboxNotFoundError`` when it is installed)
        for an unknown id, ``ConfigError`` for a bad option.
        """
        if sandbox_id is None:
            return AgentSandboxBackend.create(provider=provider, options=options, **spec)
        try:
            return AgentSandboxBackend.connect(sandbox_id, provider=provider, options=options)
        except SandboxNotFound as exc:
            raise _not_found(exc) from exc

    def delete(
        self,
        *,
        sandbox_id: str,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Destroy a sandbox; deleting one that is already gone is not an error."""
        try:
            sandbox = Sandbox.connect(sandbox_id, provider=provider, options=options)
        except SandboxNotFound:
            return
        sandbox.destroy()

    async def aget_or_create(
        self,
        *,
        sandbox_id: str | None = None,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        **spec: Any,
    ) -> AgentSandboxBackend:
        """:meth:`get_or_create` in a worker thread."""
        return await asyncio.to_thread(
            lambda: self.get_or_create(
                sandbox_id=sandbox_id, provider=provider, options=options, **spec
            )
        )

    async def adelete(
        self,
        *,
        sandbox_id: str,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`delete` in a worker thread."""
        await asyncio.to_thread(
            lambda: self.delete(sandbox_id=sandbox_id, provider=provider, options=options)
        )


def _not_found(exc: SandboxNotFound) -> Exception:
    try:
        from deepagents_code.integrations.sandbox_provider import (  # type: ignore[import-not-found,unused-ignore]
            SandboxNotFoundError,
        )
    except ImportError:
        return exc
    error: Exception = SandboxNotFoundError(str(exc))
    return error
