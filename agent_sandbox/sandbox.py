"""The :class:`Sandbox` handle: what users hold. Async; see :mod:`agent_sandbox.sync` for the twin."""

from __future__ import annotations

import builtins
import logging
import posixpath
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from .backend import BaseBackend, close_stream
from .derived import DOWNLOAD_LIMIT, LISTING_LIMIT
from .errors import ArgumentTypeError, ConfigError, InvalidPath, SandboxError
from .labels import default_owner, stamp
from .models import (
    DEFAULT_OUTPUT_LIMIT,
    DEFAULT_READ_LIMIT,
    Command,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    FoundFiles,
    GrepResult,
    NetworkPolicy,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    StartOptions,
)
from .process import Process

if TYPE_CHECKING:
    from .audit import AuditLog
    from .policy import Policy

log = logging.getLogger("agent_sandbox")


def _backend_for(
    provider: str | None, options: Mapping[str, Any] | None, owner: str | None = None
) -> tuple[BaseBackend, str]:
    from .config import resolve

    resolved = resolve(provider, options, owner=owner)
    return resolved.make_backend(), resolved.owner


def _guarded(backend: BaseBackend, audit: AuditLog | None, policy: Policy | None) -> BaseBackend:
    """``backend`` wrapped to ask ``policy`` and record to ``audit``, when either is given."""
    if audit is None and policy is None:
        return backend

    from .audit import AuditingBackend  # only when asked for: it costs import time

    return AuditingBackend(backend, audit, policy)


def _stdin_bytes(stdin: bytes | str | None) -> bytes | None:
    if stdin is None or isinstance(stdin, bytes):
        return stdin
    if isinstance(stdin, (str, bytearray, memoryview)):
        return stdin.encode() if isinstance(stdin, str) else bytes(stdin)
    raise ArgumentTypeError(f"stdin must be bytes or str, not {type(stdin).__name__}")


class Sandbox:
    """One sandbox, on any provider.

    Create one with :meth:`create` (or :meth:`connect` to an existing one) and use it as an async
    context manager so it is destroyed however the block ends::

        async with await Sandbox.create() as sb:
            result = await sb.exec(["python3", "-c", "print(6*7)"])

    Relative paths are relative to the sandbox's workdir.
    """

    def __init__(
        self, backend: BaseBackend, info: SandboxInfo, *, owns_backend: bool = True
    ) -> None:
        self.backend = backend
        self.info = info
        self._owns_backend = owns_backend
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        spec: SandboxSpec | None = None,
        *,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        backend: BaseBackend | None = None,
        owner: str | None = None,
        audit: AuditLog | None = None,
        policy: Policy | None = None,
        image: str | None = None,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        ttl_seconds: float | None = None,
        network: NetworkPolicy | str | None = None,
        **spec_fields: Any,
    ) -> Sandbox:
        """Create a sandbox and return its handle.

        Args:
            spec: the full specification; the keyword shortcuts (``image``, ``env``, ``labels``,
                ``ttl_seconds``, ``network`` as a mode string or policy, and any other
                :class:`SandboxSpec` field) override its fields.
            provider: provider name; default from config (``local`` when nothing is configured).
            options: provider options (merged over configured ones; unknown keys are an error).
            backend: an existing backend instance to use instead of ``provider``/``options``;
                the handle then does not close it.
            owner: value of the owner label (default ``user@host`` or configured).
            audit: record every operation of this handle (create, exec, files, destroy) there.
            policy: decide before every operation of the sandbox (exec, file access, ...); a
                denial raises ``PolicyDenied``. It sees every command, including those a
                ``ToolKit`` runs for its own bookkeeping under ``/tmp``: rules about tools
                belong on ``ToolKit(policy=...)``.

        Raises:
            ConfigError, ProviderNotInstalled, Unsupported, and the provider's typed errors.
        """
        overrides: dict[str, Any] = dict(spec_fields)
        for key, value in (("image", image), ("ttl_seconds", ttl_seconds)):
            if value is not None:
                overrides[key] = value
        if env is not None:
            overrides["env"] = dict(env)
        if labels is not None:
            overrides["labels"] = dict(labels)
        if network is not None:
            overrides["network"] = {"mode": network} if isinstance(network, str) else network
        base = spec or SandboxSpec()
        try:
            final = (
                SandboxSpec.model_validate({**base.model_dump(), **overrides})
                if overrides
                else base
            )
        except ValueError as exc:
            raise ConfigError(f"invalid sandbox spec: {exc}") from exc
        owns = backend is None
        if backend is None:
            backend, resolved_owner = _backend_for(provider, options, owner)
            owner = owner or resolved_owner
        elif owner is None:
            owner = default_owner()
        backend = _guarded(backend, audit, policy)
        try:
            backend.check_spec(final)
            info = await backend.create(stamp(final, owner))
        except BaseException:
            if owns:
                await backend.aclose()
            raise
        return cls(backend, info, owns_backend=owns)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        backend: BaseBackend | None = None,
        audit: AuditLog | None = None,
        policy: Policy | None = None,
    ) -> Sandbox:
        """Attach to an existing sandbox by id (``audit``/``policy`` as in :meth:`create`).

        Raises ``SandboxNotFound``.
        """
        owns = backend is None
        if backend is None:
            backend, _ = _backend_for(provider, options)
        backend = _guarded(backend, audit, policy)
        try:
            info = await backend.connect(sandbox_id)
        except BaseException:
            if owns:
                await backend.aclose()
            raise
        return cls(backend, info, owns_backend=owns)

    @staticmethod
    async def list(
        labels: Mapping[str, str] | None = None,
        *,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Sandboxes of a provider that carry all of ``labels``."""
        backend, _ = _backend_for(provider, options)
        try:
            return await backend.list(labels)
        finally:
            await backend.aclose()

    @staticmethod
    async def sweep(
        *,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[str]:
        """Destroy the provider's managed sandboxes whose TTL has passed; return their ids.

        ``labels`` narrows the sweep to sandboxes carrying all of them.
        """
        backend, _ = _backend_for(provider, options)
        try:
            return await backend.sweep(labels=labels)
        finally:
            await backend.aclose()

    @property
    def id(self) -> str:
        """The provider's id of this sandbox."""
        return self.info.id

    @property
    def provider(self) -> str:
        """The provider's name."""
        return self.info.provider

    async def refresh(self) -> SandboxInfo:
        """Fetch the sandbox's current description. Raises ``SandboxNotFound`` when gone."""
        self.info = await self.backend.connect(self.id)
        return self.info

    async def destroy(self) -> None:
        """Destroy the sandbox (idempotent) and release the client."""
        if self._closed:
            return
        try:
            await self.backend.destroy(self.id)
        finally:
            self._closed = True
            if self._owns_backend:
                await self.backend.aclose()

    async def close(self) -> None:
        """Release the client but leave the sandbox running (it still ends at its TTL)."""
        if not self._closed:
            self._closed = True
            if self._owns_backend:
                await self.backend.aclose()

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Shielded: a cancelled block must still destroy its sandbox.
            with anyio.CancelScope(shield=True):
                await self.destroy()
        except SandboxError:
            if exc is None:
                raise
            log.warning("destroying sandbox %s failed after an error", self.id, exc_info=True)

    def __repr__(self) -> str:
        return f"<Sandbox {self.provider}:{self.id}>"

    # -- commands ---------------------------------------------------------------------------

    def _options(
        self,
        cwd: str | None,
        env: Mapping[str, str] | None,
        stdin: bytes | str | None,
        timeout: float | None,
        user: str | None,
        output_limit: int,
    ) -> ExecOptions:
        return ExecOptions(
            cwd=self.path(cwd) if cwd is not None else self.info.workdir,
            env=dict(env or {}),
            stdin=_stdin_bytes(stdin),
            timeout=timeout,
            user=user,
            output_limit=output_limit,
        )

    async def exec(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        user: str | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> ExecResult:
        """Run a command to completion.

        ``command`` is a shell string (run by ``sh -c``) or an argv list (run as is). A non-zero
        exit is a result, not an error. Output beyond ``output_limit`` bytes per stream is
        dropped and flagged (``stdout_truncated``/``stderr_truncated``).

        Raises:
            CommandTimeout: ``timeout`` seconds passed; the process tree was killed. Carries the
                partial output.
            SandboxNotFound: the sandbox is gone.
        """
        options = self._options(cwd, env, stdin, timeout, user, output_limit)
        return await self.backend.exec(self.id, command, options)

    async def exec_stream(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        user: str | None = None,
    ) -> AsyncIterator[ExecEvent]:
        """Run a command, yielding ``stdout``/``stderr`` chunks as they come, then one ``exit``.

        Leaving the loop early kills the command. Raises as :meth:`exec`.
        """
        options = self._options(cwd, env, stdin, timeout, user, 0)
        stream = self.backend.exec_stream(self.id, command, options)
        try:
            async for event in stream:
                yield event
        finally:
            await close_stream(stream)

    async def start(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | bool | None = None,
        timeout: float | None = None,
        user: str | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> Process:
        """Start a command in the background and return at once.

        The :class:`Process` streams its output (``async for event in proc``), waits
        (``await proc.wait()``), takes stdin (``stdin=True``, then ``proc.write_stdin`` and
        ``proc.close_stdin``; bytes or str are fed and stdin closed) and is killed with
        ``proc.kill()``. It runs until it ends, is killed, or the sandbox ends (TTL included):
        ``timeout`` is opt-in. ``proc.ref`` reaches it again through :meth:`attach`, from this
        client or another (``Capabilities.reattach``).

        Raises:
            Unsupported: ``stdin=True`` without ``Capabilities.stdin_streaming``.
            SandboxNotFound: the sandbox is gone.
        """
        options = StartOptions(
            cwd=self.path(cwd) if cwd is not None else self.info.workdir,
            env=dict(env or {}),
            user=user,
            stdin=None if isinstance(stdin, bool) else _stdin_bytes(stdin),
            stdin_open=stdin is True,
            detached=True,
            timeout=timeout,
        )
        return await Process.start(
            self.backend, self.id, command, options, output_limit=output_limit
        )

    async def attach(self, ref: str, *, output_limit: int = DEFAULT_OUTPUT_LIMIT) -> Process:
        """The process :meth:`start` returned with this ``ref``, from any client.

        What it printed before is replayed where the provider keeps it (see the provider's
        page). Raises ``ProcessNotFound``, ``Unsupported`` (``Capabilities.reattach``).
        """
        handle = await self.backend.attach(self.id, ref)
        return Process(
            handle, provider=self.provider, sandbox_id=self.id, output_limit=output_limit
        )

    async def processes(self) -> builtins.list[ProcessInfo]:
        """The processes started with :meth:`start` in this sandbox, running or ended.

        Raises ``Unsupported`` (``Capabilities.reattach``).
        """
        return await self.backend.processes(self.id)

    # -- files ------------------------------------------------------------------------------

    def path(self, path: str) -> str:
        """The absolute, normalised form of ``path`` (relative ones are under the workdir).

        Raises ``InvalidPath`` for an empty path or one containing a NUL byte.
        """
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidPath(f"invalid path: {path!r}", sandbox_id=self.id, provider=self.provider)
        joined = posixpath.join(self.info.workdir, path)
        normal = posixpath.normpath(joined)
        return "/" + normal.lstrip("/")

    async def read_file(self, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT) -> bytes:
        """The bytes of a regular file, read as the sandbox's default user.

        Raises ``FileNotFound``, ``IsADirectory``, ``PermissionDenied``, ``FileTooLarge`` for a
        file over ``max_bytes`` (100 MiB by default; use :meth:`download` for bigger trees) and
        ``InvalidPath`` for a FIFO, device or socket.
        """
        where: dict[str, Any] = {"sandbox_id": self.id, "provider": self.provider}
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise ArgumentTypeError(
                f"max_bytes must be an int, got {type(max_bytes).__name__}", op="read_file", **where
            )
        if max_bytes < 0:
            raise ConfigError(f"max_bytes must be >= 0, got {max_bytes}", op="read_file", **where)
        return await self.backend.read_file(self.id, self.path(path), max_bytes=max_bytes)

    async def read_text(
        self, path: str, encoding: str = "utf-8", *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> str:
        """A file decoded as text (see :meth:`read_file`)."""
        return (await self.read_file(path, max_bytes=max_bytes)).decode(encoding)

    async def write_file(self, path: str, data: bytes | str) -> None:
        """Create or replace a file (``str`` is written as UTF-8); parent directories are created.

        Raises ``ArgumentTypeError`` when ``data`` is neither bytes nor str.
        """
        payload = _payload(data)
        await self.backend.write_file(self.id, self.path(path), payload)

    async def list_dir(self, path: str = ".") -> builtins.list[FileInfo]:
        """Entries of a directory, sorted by name."""
        return await self.backend.list_dir(self.id, self.path(path))

    async def stat(self, path: str) -> FileInfo:
        """Describe a path. Raises ``FileNotFound``."""
        return await self.backend.stat(self.id, self.path(path))

    async def exists(self, path: str) -> bool:
        """True when ``path`` exists. Raises ``PermissionDenied`` when the
        sandbox's user cannot look (a directory on the way is not searchable)."""
        return await self.backend.exists(self.id, self.path(path))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a whole tree with ``recursive=True``. Raises ``FileNotFound``."""
        await self.backend.remove(self.id, self.path(path), recursive=recursive)

    async def mkdir(self, path: str) -> None:
        """Create a directory with its parents."""
        await self.backend.mkdir(self.id, self.path(path))

    async def upload_file(
        self,
        local: str | Path,
        path: str,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Copy a local file into the sandbox, streamed where the provider can (a file of any
        size costs a chunk of memory); ``write_file``'s rules apply. ``on_progress`` gets the
        bytes sent so far."""
        await self.backend.upload_file(
            self.id, Path(local), self.path(path), on_progress=on_progress
        )

    async def download_file(
        self,
        path: str,
        local: str | Path,
        *,
        max_bytes: int = DOWNLOAD_LIMIT,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Copy a regular file out of the sandbox, streamed and written under a temporary name
        first (a failed copy leaves nothing behind). ``read_file``'s rules apply
        (``FileTooLarge`` past ``max_bytes``)."""
        await self.backend.download_file(
            self.id, self.path(path), Path(local), max_bytes=max_bytes, on_progress=on_progress
        )

    async def realpath(self, path: str) -> str:
        """``path`` made absolute with every symlink resolved (as the sandbox sees it)."""
        (resolved,) = await self.backend.realpath(self.id, [self.path(path)])
        return resolved

    async def find(self, path: str = ".", *, limit: int = LISTING_LIMIT) -> FoundFiles:
        """Every file and symlink below the directory ``path`` (``.git`` skipped), sorted; past
        ``limit`` bytes of answer the list is cut (``truncated``).

        Raises ``FileNotFound``, ``InvalidPath`` (not a directory)."""
        return await self.backend.find(self.id, self.path(path), limit=limit)

    async def grep(
        self, pattern: str, path: str = ".", *, limit: int = LISTING_LIMIT
    ) -> GrepResult:
        """Lines matching the extended regular expression ``pattern`` in a file or the files
        below a directory (binary files and ``.git`` skipped), sorted by path and line; past
        ``limit`` bytes of answer the list is cut (``truncated``).

        Raises ``FileNotFound``, ``ConfigError`` for a pattern the sandbox refuses."""
        return await self.backend.grep(self.id, pattern, self.path(path), limit=limit)

    async def read_lines(
        self, path: str, start: int = 1, end: int | None = None, *, max_bytes: int = 1 << 20
    ) -> bytes:
        """Lines ``start`` to ``end`` (1-based, inclusive; ``None``: to the end) of a file,
        cut out in the sandbox: at most ``max_bytes`` come back, whatever the file's size."""
        return await self.backend.read_lines(
            self.id, self.path(path), start, end, max_bytes=max_bytes
        )

    async def upload(self, local_dir: str | Path, remote_dir: str = ".") -> None:
        """Copy a local directory tree into the sandbox."""
        await self.backend.upload(self.id, local_dir, self.path(remote_dir))

    async def download(self, remote_dir: str, local_dir: str | Path) -> None:
        """Copy a directory tree out of the sandbox."""
        await self.backend.download(self.id, self.path(remote_dir), local_dir)

    # -- optional capabilities --------------------------------------------------------------

    async def expose_port(self, port: int) -> str:
        """A URL reaching ``port`` inside the sandbox. Raises ``Unsupported``."""
        return await self.backend.expose_port(self.id, port)

    async def snapshot(self) -> str:
        """Save the filesystem; pass the returned id as ``snapshot=`` to :meth:`create`."""
        return await self.backend.snapshot(self.id)

    async def pause(self) -> None:
        """Suspend the sandbox. Raises ``Unsupported``."""
        await self.backend.pause(self.id)

    async def resume(self) -> None:
        """Resume a paused sandbox. Raises ``Unsupported``."""
        await self.backend.resume(self.id)


def _payload(data: object) -> bytes:
    """File content as bytes: ``bytes``-like as is, ``str`` as UTF-8, anything else refused
    (``bytes(5)`` would be five NUL bytes)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConfigError(f"file content is not valid text ({exc}); pass bytes") from exc
    raise ArgumentTypeError(f"file content must be bytes or str, not {type(data).__name__}")
