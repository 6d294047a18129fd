"""The provider contract: the :class:`SandboxBackend` primitives and the :class:`BaseBackend` that
derives everything else from them.

A provider implements the lifecycle (create, connect, list, destroy), the process seam (``start``
returning a :class:`~agent_sandbox.process.ProcessHandle`, and ``attach`` where processes can be
reached again) and two file primitives (read_file, write_file); ``exec`` and ``exec_stream``,
directory listing, stat, remove, mkdir, tree upload and download, and ``sweep`` come from
:class:`BaseBackend`. Every method takes the sandbox id, so a backend holds no
per-sandbox state that cannot be rebuilt from the id. Paths given to a backend are absolute: the
:class:`~agent_sandbox.Sandbox` handle resolves relative ones against the sandbox's workdir.
"""

from __future__ import annotations

import builtins
import shlex
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from . import labels as _labels
from .derived import DerivedOperations
from .errors import (
    SandboxError,
    Unsupported,
)
from .models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    ExecResult,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    StartOptions,
)
from .process import Process, ProcessHandle, exec_stream, run
from .process import argv_of as argv_of
from .process import close_stream as close_stream


@dataclass(frozen=True)
class Diagnostic:
    """One prerequisite check reported by :meth:`BaseBackend.doctor`."""

    name: str
    ok: bool
    detail: str = ""


class ProviderOptions(BaseModel):
    """Base of each provider's options model. Unknown keys are rejected by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project_settable: ClassVar[frozenset[str]] = frozenset()
    """Options a project's config file may set: those that can neither lower isolation nor
    widen what the sandbox or the client reaches. Every other option comes only from code, the
    environment or the user's own config file (see :mod:`agent_sandbox.config`)."""


@runtime_checkable
class SandboxBackend(Protocol):
    """The primitives every provider implements (see :class:`BaseBackend` for the derived rest)."""

    name: ClassVar[str]
    capabilities: Capabilities

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create and start a sandbox; it must end by itself after ``spec.ttl_seconds``."""
        ...

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe an existing sandbox. Raises ``SandboxNotFound``."""
        ...

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Sandboxes of this provider carrying all of ``labels``."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Remove a sandbox promptly; a sandbox already gone is not an error."""
        ...

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Start ``argv`` (never empty, already checked) and return its handle.

        The core owns the rest of the command's life (see :mod:`agent_sandbox.process`): the
        handle only reads output, writes stdin, waits and kills the whole tree. Raises
        ``SandboxNotFound`` for a gone sandbox, ``FileNotFound`` for a missing ``cwd``; a
        command that cannot be found or executed is not an error but an exit status (127 or
        126) with the shell's message on stderr.
        """
        ...

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """A handle on a process started earlier, possibly by another client
        (``Capabilities.reattach``). Raises ``ProcessNotFound``."""
        ...

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Whole content of a regular file, read as the sandbox's default user.

        Raises ``FileNotFound``, ``IsADirectory``, ``PermissionDenied``, ``FileTooLarge`` past
        ``max_bytes`` and ``InvalidPath`` for what is not a regular file (a FIFO, a device):
        never blocks on one.
        """
        ...

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file as the sandbox's default user, creating missing parent
        directories; an existing file keeps its mode. Raises ``IsADirectory``,
        ``PermissionDenied`` where that user's own command would be refused."""
        ...

    async def aclose(self) -> None:
        """Release client resources (connections, threads). Sandboxes are left as they are."""
        ...


def start_options(options: ExecOptions, *, detached: bool = False) -> StartOptions:
    """The :class:`StartOptions` of a command run with ``options``."""
    return StartOptions(
        cwd=options.cwd,
        env=options.env,
        user=options.user,
        stdin=options.stdin,
        timeout=options.timeout,
        detached=detached,
    )


class BaseBackend(DerivedOperations, ABC):
    """Base class of providers: implement the primitives, inherit the derived operations.

    Subclasses set ``name``, ``Options`` and ``capabilities``, and are constructed with an
    instance of their ``Options`` (defaults when omitted). Override a derived operation only when
    the provider has a faster native one.
    """

    name: ClassVar[str]
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions
    capabilities: Capabilities = Capabilities()

    def __init__(self, options: ProviderOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    # -- primitives -------------------------------------------------------------------------

    @abstractmethod
    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """See :class:`SandboxBackend`."""

    @abstractmethod
    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """See :class:`SandboxBackend`."""

    @abstractmethod
    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """See :class:`SandboxBackend`."""

    @abstractmethod
    async def destroy(self, sandbox_id: str) -> None:
        """See :class:`SandboxBackend`."""

    @abstractmethod
    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """See :class:`SandboxBackend`."""

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """See :class:`SandboxBackend`. Raises ``Unsupported`` by default."""
        raise self._unsupported("attaching to a process")

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """Processes started with ``Sandbox.start`` in the sandbox (``Capabilities.reattach``).

        Raises ``Unsupported`` by default."""
        raise self._unsupported("listing processes")

    @abstractmethod
    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """See :class:`SandboxBackend`."""

    @abstractmethod
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """See :class:`SandboxBackend`."""

    async def aclose(self) -> None:
        """Release client resources. The default holds none."""

    # -- derived ----------------------------------------------------------------------------

    async def exec(self, sandbox_id: str, command: Command, options: ExecOptions) -> ExecResult:
        """Run a command to completion, keeping at most ``options.output_limit`` bytes per stream.

        Raises ``CommandTimeout`` carrying the partial output.
        """
        proc = await Process.start(
            self, sandbox_id, command, start_options(options), output_limit=options.output_limit
        )
        return await run(proc)

    async def exec_stream(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> AsyncIterator[ExecEvent]:
        """Run a command, yielding output chunks as they come, then one ``exit`` event.

        Leaving the iteration early kills the command. Raises as :meth:`exec`.
        """
        proc = await Process.start(self, sandbox_id, command, start_options(options))
        async for event in exec_stream(proc):
            yield event

    async def sweep(
        self, *, now: datetime | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[str]:
        """Destroy every managed sandbox of this provider whose TTL has passed; return their ids.

        ``labels`` narrows the sweep to sandboxes carrying all of them (say, one owner's).
        """
        now = now or datetime.now(timezone.utc)
        removed = []
        for info in await self.list({**(labels or {}), _labels.MANAGED: "true"}):
            if _labels.is_expired(info, now):
                await self.destroy(info.id)
                removed.append(info.id)
        return removed

    async def doctor(self) -> builtins.list[Diagnostic]:
        """Check this provider's prerequisites. The default lists sandboxes, which proves the
        provider is installed, configured, reachable and accepts our credentials."""
        try:
            found = await self.list({_labels.MANAGED: "true"})
        except SandboxError as exc:
            return [Diagnostic("api", False, f"{exc.code}: {exc}")]
        return [Diagnostic("api", True, f"reachable; {len(found)} managed sandbox(es)")]

    # -- optional capabilities --------------------------------------------------------------

    def _unsupported(self, what: str) -> Unsupported:
        return Unsupported(
            f"the {self.name} provider does not support {what}", provider=self.name, op=what
        )

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """A URL reaching ``port`` inside the sandbox. Raises ``Unsupported`` by default."""
        raise self._unsupported("expose_port")

    async def snapshot(self, sandbox_id: str) -> str:
        """Save the sandbox's filesystem; returns an id usable as ``SandboxSpec.snapshot``."""
        raise self._unsupported("snapshot")

    async def pause(self, sandbox_id: str) -> None:
        """Suspend a sandbox, keeping its state. Raises ``Unsupported`` by default."""
        raise self._unsupported("pause")

    async def resume(self, sandbox_id: str) -> None:
        """Resume a paused sandbox. Raises ``Unsupported`` by default."""
        raise self._unsupported("resume")

    def check_spec(self, spec: SandboxSpec) -> None:
        """Raise ``Unsupported`` for parts of ``spec`` this provider's capabilities exclude."""
        caps = self.capabilities
        if spec.network.mode == "none" and not caps.network_none:
            raise self._unsupported("network policy 'none'")
        if spec.network.mode == "allowlist" and not caps.network_allowlist:
            raise self._unsupported("network policy 'allowlist'")
        if (spec.cpus is not None or spec.memory_mib is not None) and not caps.resources:
            raise self._unsupported("cpus / memory_mib limits")
        if spec.ports and not caps.expose_port:
            raise self._unsupported("ports")
        if spec.snapshot is not None and not caps.snapshot:
            raise self._unsupported("snapshots")
        if spec.user is not None and not caps.exec_user:
            raise self._unsupported("running as another user")


def quote(argv: list[str]) -> str:
    """``argv`` as one shell-quoted string (for providers whose API takes a command line)."""
    return shlex.join(argv)
