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
import contextlib
import io
import posixpath
import shlex
import tarfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import anyio
import anyio.lowlevel
import anyio.to_thread
from pydantic import BaseModel, ConfigDict

from . import labels as _labels
from ._tasks import spawn
from .archive import DEFAULT_LIMITS, ArchiveLimits, ArchiveSpool
from .errors import (
    FileNotFound,
    InvalidPath,
    PermissionDenied,
    ProviderError,
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
    FileInfo,
    FileType,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    StartOptions,
)
from .output import CappedBuffer
from .process import ExitStatus, Process, ProcessHandle, Stream, exec_stream, run
from .process import argv_of as argv_of

UNLIMITED_OUTPUT = 1 << 62


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


def exit_status(returncode: int) -> tuple[int, int | None]:
    """Map a POSIX wait status as Python reports it (negative = signal) to (exit_code, signal)."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


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


_STAT_FORMAT = "%F\t%s\t%a\t%Y\t%n"
_MISSING = 44
_NOT_DIR = 45
_STAT_SCRIPT = f"""
for p do
  if [ ! -e "$p" ] && [ ! -L "$p" ]; then echo "$p" >&2; exit {_MISSING}; fi
done
exec stat -c '{_STAT_FORMAT}' -- "$@"
"""
_LIST_SCRIPT = f"""
if [ ! -e "$1" ]; then exit {_MISSING}; fi
if [ ! -d "$1" ]; then exit {_NOT_DIR}; fi
find "$1" -mindepth 1 -maxdepth 1 -exec stat -c '{_STAT_FORMAT}' -- {{}} +
"""
_TYPES: dict[str, FileType] = {
    "regular file": "file",
    "regular empty file": "file",
    "directory": "dir",
    "symbolic link": "symlink",
}


def _parse_stat_line(line: str) -> FileInfo:
    kind, size, mode, mtime, path = line.split("\t", 4)
    return FileInfo(
        path=path,
        name=posixpath.basename(path.rstrip("/")) or "/",
        type=_TYPES.get(kind, "other"),
        size=int(size),
        mode=int(mode, 8),
        mtime=float(mtime),
    )


class BaseBackend(ABC):
    """Base class of providers: implement the primitives, inherit the derived operations.

    Subclasses set ``name``, ``Options`` and ``capabilities``, and are constructed with an
    instance of their ``Options`` (defaults when omitted). Override a derived operation only when
    the provider has a faster native one.
    """

    name: ClassVar[str]
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions
    capabilities: Capabilities = Capabilities()
    archive_limits: ArchiveLimits = DEFAULT_LIMITS
    """Bounds on the archive a tree ``download`` reads from a sandbox (size, member count)."""

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

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """See :class:`SandboxBackend`."""
        if type(self).exec_stream is BaseBackend.exec_stream:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither start nor exec_stream"
            )
        # A provider not yet ported onto the process seam: its own exec_stream (and its own
        # timeout, as a backstop: the core enforces the deadline and closes the stream).
        legacy = ExecOptions(
            cwd=options.cwd,
            env=options.env,
            stdin=options.stdin,
            user=options.user,
            timeout=options.timeout,
        )
        return _StreamHandle(self.exec_stream(sandbox_id, argv, legacy))

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

    async def _helper(
        self, sandbox_id: str, op: str, script: str, *args: str, stdin: bytes | None = None
    ) -> ExecResult:
        """Run a derived operation's shell script with positional ``args`` (never spliced)."""
        options = ExecOptions(stdin=stdin, output_limit=UNLIMITED_OUTPUT)
        return await self.exec(sandbox_id, ["sh", "-c", script, "sh", *args], options)

    def _fail(self, result: ExecResult, op: str, sandbox_id: str, path: str) -> SandboxError:
        message = result.stderr.strip() or f"exit status {result.exit_code}"
        where: dict[str, Any] = {"provider": self.name, "op": op, "sandbox_id": sandbox_id}
        if result.exit_code == _MISSING or "No such file" in message:
            return FileNotFound(f"no such file or directory: {path}", **where)
        if result.exit_code == _NOT_DIR:
            return InvalidPath(f"not a directory: {path}", **where)
        if "ermission denied" in message or "Read-only file system" in message:
            return PermissionDenied(f"{op} {path}: {message}", **where)
        return ProviderError(f"{op} {path} failed: {message}", **where)

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """Describe one path (not following a final symlink). Raises ``FileNotFound``."""
        result = await self._helper(sandbox_id, "stat", _STAT_SCRIPT, path)
        if not result.ok:
            raise self._fail(result, "stat", sandbox_id, path)
        return _parse_stat_line(result.stdout.rstrip("\n"))

    async def exists(self, sandbox_id: str, path: str) -> bool:
        """True when ``path`` exists (a dangling symlink counts)."""
        try:
            await self.stat(sandbox_id, path)
        except FileNotFound:
            return False
        return True

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """Entries of a directory, sorted by name. Raises ``FileNotFound``, ``InvalidPath``."""
        result = await self._helper(sandbox_id, "list_dir", _LIST_SCRIPT, path)
        if not result.ok:
            raise self._fail(result, "list_dir", sandbox_id, path)
        entries = [_parse_stat_line(line) for line in result.stdout.splitlines() if line]
        return sorted(entries, key=lambda e: e.name)

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory tree with ``recursive``. Raises ``FileNotFound``."""
        script = f'[ -e "$1" ] || [ -L "$1" ] || exit {_MISSING}; rm {"-rf" if recursive else "-f"} -- "$1"'
        result = await self._helper(sandbox_id, "remove", script, path)
        if not result.ok:
            raise self._fail(result, "remove", sandbox_id, path)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its missing parents; an existing directory is fine."""
        result = await self._helper(sandbox_id, "mkdir", 'mkdir -p -- "$1"', path)
        if not result.ok:
            raise self._fail(result, "mkdir", sandbox_id, path)

    async def upload(self, sandbox_id: str, local_dir: str | Path, remote_dir: str) -> None:
        """Copy a local directory tree into ``remote_dir`` (created if missing), as a tar on stdin."""
        archive = await anyio.to_thread.run_sync(_tar_directory, Path(local_dir))
        script = 'mkdir -p -- "$1" && tar -x -f - -C "$1"'
        result = await self._helper(sandbox_id, "upload", script, remote_dir, stdin=archive)
        if not result.ok:
            raise self._fail(result, "upload", sandbox_id, remote_dir)

    async def download(self, sandbox_id: str, remote_dir: str, local_dir: str | Path) -> None:
        """Copy the tree at ``remote_dir`` into ``local_dir`` (created if missing).

        The sandbox's ``tar`` output is hostile input: it is bounded and unpacked by
        :mod:`agent_sandbox.archive`'s rules. Raises ``FileNotFound``, ``UnsafeArchive``.
        """
        script = f'[ -d "$1" ] || exit {_MISSING}; tar -c -f - -C "$1" .'
        err = CappedBuffer(64 * 1024)
        exit_code: int | None = None
        with ArchiveSpool(self.archive_limits) as spool:
            options = ExecOptions(output_limit=spool.limits.max_bytes + 1)
            events = self.exec_stream(sandbox_id, ["sh", "-c", script, "sh", remote_dir], options)
            try:
                async for event in events:
                    if event.kind == "stdout":
                        spool.write(event.data)
                    elif event.kind == "stderr":
                        err.write(event.data)
                    else:
                        exit_code = event.exit_code
            finally:
                await close_stream(events)
            if exit_code != 0:
                code = -1 if exit_code is None else exit_code
                result = ExecResult(exit_code=code, stderr_bytes=err.getvalue())
                raise self._fail(result, "download", sandbox_id, remote_dir)
            await anyio.to_thread.run_sync(spool.extract, Path(local_dir))

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


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Close an async generator (kills its command if still running); plain iterators need nothing."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _tar_directory(source: Path) -> bytes:
    if not source.is_dir():
        raise FileNotFound(f"local directory not found: {source}", op="upload")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(source), arcname=".")
    return buffer.getvalue()


def quote(argv: list[str]) -> str:
    """``argv`` as one shell-quoted string (for providers whose API takes a command line)."""
    return shlex.join(argv)


class _StreamHandle(ProcessHandle):
    """A process seen through a provider's own ``exec_stream`` (providers not yet ported),
    pumped by a task of its own so the command runs whether or not anyone reads."""

    ref = ""

    def __init__(self, stream: AsyncIterator[ExecEvent]) -> None:
        self._stream = stream
        self._send, self._receive = anyio.create_memory_object_stream[ExecEvent | Exception](16)
        self._status = ExitStatus(137, 9)
        self._done = anyio.Event()
        self._task = spawn(self._pump)

    async def _pump(self) -> None:
        try:
            await self._pump_events()
        finally:
            self._done.set()

    async def _pump_events(self) -> None:
        async with self._send:
            try:
                async for event in self._stream:
                    await self._send.send(event)
            except anyio.BrokenResourceError:
                pass
            except Exception as exc:
                with contextlib.suppress(anyio.BrokenResourceError):
                    await self._send.send(exc)
            finally:
                with anyio.CancelScope(shield=True):
                    await close_stream(self._stream)

    async def read(self) -> tuple[Stream, bytes] | None:
        while True:
            try:
                item = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return None
            if isinstance(item, Exception):
                raise item
            if item.kind == "exit":
                assert item.exit_code is not None
                self._status = ExitStatus(item.exit_code, item.signal)
                return None
            if item.data:
                return item.kind, item.data

    async def wait(self) -> ExitStatus:
        return self._status

    async def kill(self) -> None:
        # One asyncio cancellation (not a cancel scope's, repeated at every await), so the
        # provider's generator can still clean up (kill the command) in its finally.
        if self._task is not None and not self._done.is_set():
            self._task.cancel()
        await self._done.wait()

    async def close(self) -> None:
        await self.kill()
        await self._receive.aclose()
