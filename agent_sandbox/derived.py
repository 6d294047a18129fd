"""The operations :class:`~agent_sandbox.BaseBackend` derives from a provider's primitives.

Each is a named operation a provider may override with a native one (a vendor's file API, the
fake's in-memory filesystem); the default runs a script of :mod:`agent_sandbox._scripts` through
``exec`` as the sandbox's default user. Whatever comes back is bounded: a sandbox program that
prints without end (a shadowed ``mkdir``, a huge directory) costs the client at most the
operation's limit, and an answer past it is an error, never a silent cut.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import tempfile
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio.to_thread

from . import _scripts
from .errors import (
    ConfigError,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    SandboxError,
)
from .models import (
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    FileType,
    FoundFiles,
    GrepMatch,
    GrepResult,
    StartOptions,
)
from .output import CappedBuffer
from .process import Process, close_stream

if TYPE_CHECKING:
    from .archive import ArchiveLimits

SMALL_OUTPUT = 64 * 1024
"""What a status-only operation (mkdir, remove, upload) may print."""
LISTING_LIMIT = 64 * 1024 * 1024
"""The most a directory listing, ``find`` or ``grep`` may send back."""
DOWNLOAD_LIMIT = 4 << 30
"""The largest file ``download_file`` takes by default (as a tree's archive)."""
TRANSFER_CHUNK = 1 << 20

_TYPES: dict[str, FileType] = {
    "regular file": "file",
    "regular empty file": "file",
    "directory": "dir",
    "symbolic link": "symlink",
}


def parse_stat_line(line: str) -> FileInfo:
    """A :class:`FileInfo` from one line of ``stat -c STAT_FORMAT``."""
    kind, size, mode, mtime, path = line.split("\t", 4)
    return FileInfo(
        path=path,
        name=posixpath.basename(path.rstrip("/")) or "/",
        type=_TYPES.get(kind, "other"),
        size=int(size),
        mode=int(mode, 8),
        mtime=float(mtime),
    )


def error_for(code: int, stderr: str, op: str, path: str, **where: Any) -> SandboxError:
    """The typed error of a file command that exited with ``code`` printing ``stderr``."""
    where["op"] = op
    message = stderr.strip()[:500]
    if code == _scripts.IS_DIR:
        return IsADirectory(f"is a directory: {path}", **where)
    if code == _scripts.NOT_DIR:
        return InvalidPath(f"not a directory: {path}", **where)
    if code == _scripts.NOT_REGULAR:
        return InvalidPath(f"{op} {path}: not a regular file (a FIFO, device or socket)", **where)
    if code == _scripts.DENIED or "ermission denied" in message or "Read-only" in message:
        return PermissionDenied(f"{op} {path}: permission denied", **where)
    if code == _scripts.MISSING or "No such file" in message or "Not a directory" in message:
        return FileNotFound(f"no such file or directory: {path}", **where)
    if "File exists" in message:
        return InvalidPath(f"{op} {path}: a parent is not a directory", **where)
    if "No space left" in message or "Disk quota" in message:
        return QuotaExceeded(f"{op} {path}: {message}", **where)
    return ProviderError(f"{op} {path} failed: {message or f'exit status {code}'}", **where)


class DerivedOperations:
    """File and search operations built on ``exec``; mixed into ``BaseBackend``."""

    name: ClassVar[str]
    capabilities: Capabilities
    _archive_limits: ArchiveLimits | None = None

    @property
    def archive_limits(self) -> ArchiveLimits:
        """Bounds on the archive a tree ``download`` reads from a sandbox (size, members)."""
        from .archive import DEFAULT_LIMITS  # tarfile and friends: loaded when first needed

        return self._archive_limits or DEFAULT_LIMITS

    @archive_limits.setter
    def archive_limits(self, limits: ArchiveLimits) -> None:
        self._archive_limits = limits

    @abstractmethod
    async def exec(self, sandbox_id: str, command: Command, options: ExecOptions) -> ExecResult:
        """See ``BaseBackend.exec``."""

    @abstractmethod
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """See ``BaseBackend.write_file``."""

    @abstractmethod
    def exec_stream(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> AsyncIterator[ExecEvent]:
        """See ``BaseBackend.exec_stream``."""

    async def _script(
        self,
        sandbox_id: str,
        op: str,
        path: str,
        script: str,
        *args: str,
        limit: int = SMALL_OUTPUT,
        stdin: bytes | None = None,
        ok: tuple[int, ...] = (0,),
    ) -> ExecResult:
        """Run one of the operations' scripts (arguments positional, output bounded); the typed
        error of a failure, or of an answer longer than ``limit``."""
        options = ExecOptions(stdin=stdin, output_limit=limit)
        result = await self.exec(sandbox_id, ["sh", "-c", script, "sh", *args], options)
        where: dict[str, Any] = {"provider": self.name, "sandbox_id": sandbox_id}
        if result.exit_code not in ok:
            raise error_for(result.exit_code, result.stderr, op, path, **where)
        if result.stdout_truncated:
            raise ProviderError(
                f"{op} {path}: the sandbox's answer is over {limit} bytes", op=op, **where
            )
        return result

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """Describe one path (not following a final symlink). Raises ``FileNotFound``."""
        result = await self._script(sandbox_id, "stat", path, _scripts.STAT, path)
        return parse_stat_line(result.stdout.rstrip("\n"))

    async def exists(self, sandbox_id: str, path: str) -> bool:
        """True when ``path`` exists (a dangling symlink counts)."""
        try:
            await self.stat(sandbox_id, path)
        except FileNotFound:
            return False
        return True

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """Entries of a directory, sorted by name. Raises ``FileNotFound``, ``InvalidPath``."""
        result = await self._script(
            sandbox_id, "list_dir", path, _scripts.LIST, path, limit=LISTING_LIMIT
        )
        entries = [parse_stat_line(line) for line in result.stdout.splitlines() if line]
        return sorted(entries, key=lambda e: e.name)

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory tree with ``recursive``. Raises ``FileNotFound``;
        ``IsADirectory`` for a directory without ``recursive``."""
        flag = "-rf" if recursive else "-f"
        await self._script(sandbox_id, "remove", path, _scripts.REMOVE, path, flag)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its missing parents; an existing directory is fine."""
        await self._script(sandbox_id, "mkdir", path, _scripts.MKDIR, path)

    async def upload(self, sandbox_id: str, local_dir: str | Path, remote_dir: str) -> None:
        """Copy a local directory tree into ``remote_dir`` (created if missing), as a tar on stdin."""
        from .archive import tar_directory

        archive = await anyio.to_thread.run_sync(tar_directory, Path(local_dir))
        await self._script(
            sandbox_id, "upload", remote_dir, _scripts.UNTAR, remote_dir, stdin=archive
        )

    async def download(self, sandbox_id: str, remote_dir: str, local_dir: str | Path) -> None:
        """Copy the tree at ``remote_dir`` into ``local_dir`` (created if missing).

        The sandbox's ``tar`` output is hostile input: it is bounded and unpacked by
        :mod:`agent_sandbox.archive`'s rules. Raises ``FileNotFound``, ``UnsafeArchive``.
        """
        from .archive import ArchiveSpool

        err = CappedBuffer(SMALL_OUTPUT)
        exit_code: int | None = None
        with ArchiveSpool(self.archive_limits) as spool:
            options = ExecOptions(output_limit=spool.limits.max_bytes + 1)
            argv = ["sh", "-c", _scripts.TAR, "sh", remote_dir]
            events = self.exec_stream(sandbox_id, argv, options)
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
                message = err.getvalue().decode(errors="replace")
                raise error_for(
                    -1 if exit_code is None else exit_code,
                    message,
                    "download",
                    remote_dir,
                    provider=self.name,
                    sandbox_id=sandbox_id,
                )
            await anyio.to_thread.run_sync(spool.extract, Path(local_dir))

    async def upload_file(
        self,
        sandbox_id: str,
        local: Path,
        path: str,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Copy the local file ``local`` to ``path``, never holding it whole in memory where the
        provider streams stdin (``write_file`` elsewhere); the rules of ``write_file`` apply.
        ``on_progress`` gets the bytes sent so far. Raises as ``write_file``, and
        ``FileNotFound``/``PermissionDenied`` for the local file."""
        if not self.capabilities.stdin_streaming:
            with local_errors(local):
                data = await anyio.to_thread.run_sync(local.read_bytes)
            await self.write_file(sandbox_id, path, data)
            if on_progress is not None:
                on_progress(len(data))
            return
        argv = ["sh", "-c", _scripts.WRITE_FILE, "sh", path, _parent(path), "write"]
        options = StartOptions(stdin_open=True)
        with local_errors(local):
            source = open(local, "rb")  # noqa: ASYNC230, SIM115 - reads go to a thread
        with source:
            proc = await Process.start(self, sandbox_id, argv, options, output_limit=SMALL_OUTPUT)  # type: ignore[arg-type]
            async with proc:
                sent = 0
                while chunk := await anyio.to_thread.run_sync(source.read, TRANSFER_CHUNK):
                    await proc.write_stdin(chunk)
                    sent += len(chunk)
                    if on_progress is not None:
                        on_progress(sent)
                await proc.close_stdin()
                result = await proc.wait()
        if not result.ok:
            where: dict[str, Any] = {"provider": self.name, "sandbox_id": sandbox_id}
            raise error_for(result.exit_code, result.stderr, "write_file", path, **where)

    async def download_file(
        self,
        sandbox_id: str,
        path: str,
        local: Path,
        *,
        max_bytes: int = DOWNLOAD_LIMIT,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Copy the regular file ``path`` to the local file ``local``, streamed (never whole in
        memory) and written under a temporary name first, so a failed copy leaves nothing
        behind. ``read_file``'s rules apply: ``FileTooLarge`` past ``max_bytes``."""
        argv = ["sh", "-c", _scripts.READ_FILE, "sh", path, str(max_bytes + 1)]
        err = CappedBuffer(SMALL_OUTPUT)
        exit_code: int | None = None
        received = 0
        with local_errors(local):
            landing = _Landing(local)
        with landing as out:
            events = self.exec_stream(sandbox_id, argv, ExecOptions(output_limit=0))
            try:
                async for event in events:
                    if event.kind == "stdout":
                        received += len(event.data)
                        if received > max_bytes:
                            raise FileTooLarge(
                                f"read_file {path}: larger than max_bytes={max_bytes}",
                                provider=self.name,
                                op="download_file",
                                sandbox_id=sandbox_id,
                            )
                        await anyio.to_thread.run_sync(out.write, event.data)
                        if on_progress is not None:
                            on_progress(received)
                    elif event.kind == "stderr":
                        err.write(event.data)
                    else:
                        exit_code = event.exit_code
            finally:
                await close_stream(events)
            if exit_code != 0:
                where: dict[str, Any] = {"provider": self.name, "sandbox_id": sandbox_id}
                message = err.getvalue().decode(errors="replace")
                code = -1 if exit_code is None else exit_code
                raise error_for(code, message, "read_file", path, **where)
            out.keep()

    async def realpath(self, sandbox_id: str, paths: Sequence[str]) -> builtins.list[str]:
        """Each path with every symlink resolved (a missing tail kept as it is)."""
        if not paths:
            return []
        result = await self._script(
            sandbox_id, "realpath", paths[0], _scripts.REALPATH, *paths, limit=LISTING_LIMIT
        )
        resolved = result.stdout.split("\0")[: len(paths)]
        if len(resolved) != len(paths) or not all(p.startswith("/") for p in resolved):
            raise ProviderError(
                f"realpath: unexpected answer from the sandbox for {paths[0]}",
                provider=self.name,
                op="realpath",
                sandbox_id=sandbox_id,
            )
        return resolved

    async def find(self, sandbox_id: str, root: str, *, limit: int = LISTING_LIMIT) -> FoundFiles:
        """Every file and symlink below the directory ``root`` (``.git`` skipped), as absolute
        paths; past ``limit`` bytes of answer the list is cut and says so. Raises
        ``FileNotFound``, ``InvalidPath`` (not a directory)."""
        options = ExecOptions(output_limit=limit)
        argv = ["sh", "-c", _scripts.FIND, "sh", root]
        result = await self.exec(sandbox_id, argv, options)
        if not result.ok and not result.stdout_bytes:
            where: dict[str, Any] = {"provider": self.name, "sandbox_id": sandbox_id}
            raise error_for(result.exit_code, result.stderr, "find", root, **where)
        found = result.stdout.split("\0")
        if result.stdout_truncated or not result.stdout.endswith("\0"):
            found = found[:-1]  # the last name may be cut
        return FoundFiles(paths=sorted(p for p in found if p), truncated=result.stdout_truncated)

    async def grep(
        self, sandbox_id: str, pattern: str, path: str, *, limit: int = LISTING_LIMIT
    ) -> GrepResult:
        """Lines matching the extended regular expression ``pattern`` in the file ``path`` or
        the files below it (binary files and ``.git`` skipped), sorted by path and line. Raises
        ``FileNotFound``, ``ConfigError`` for a pattern the sandbox's grep refuses."""
        options = ExecOptions(output_limit=limit)
        argv = ["sh", "-c", _scripts.GREP, "sh", pattern, path]
        result = await self.exec(sandbox_id, argv, options)
        where: dict[str, Any] = {"provider": self.name, "sandbox_id": sandbox_id}
        if result.exit_code == _scripts.MISSING:
            raise error_for(result.exit_code, result.stderr, "grep", path, **where)
        if not result.stdout_bytes and not (
            result.exit_code in (0, 1) and not result.stderr.strip()
        ):
            detail = result.stderr.strip() or f"exit status {result.exit_code}"
            raise ConfigError(f"grep {pattern!r}: {detail[:500]}", op="grep", **where)
        matches = []
        records = result.stdout.split("\n")
        if result.stdout_truncated:
            records = records[:-1]
        for record in records:
            name, sep, rest = record.partition("\0")
            number, _, line = rest.partition(":")
            if sep and number.isdigit():
                matches.append(GrepMatch(path=name, line=int(number), text=line))
        matches.sort(key=lambda m: (m.path, m.line))
        return GrepResult(matches=matches, truncated=result.stdout_truncated)

    async def read_lines(
        self, sandbox_id: str, path: str, start: int, end: int | None, *, max_bytes: int
    ) -> bytes:
        """Lines ``start`` to ``end`` (1-based, inclusive; ``None``: to the end) of a file too
        large to read whole, cut out in the sandbox: at most ``max_bytes`` come back."""
        if start < 1 or (end is not None and end < start):
            raise ConfigError(f"read_lines: invalid line range {start}-{end}")
        selection = f"{start},$p" if end is None else f"{start},{end}p;{end}q"
        result = await self._script(
            sandbox_id,
            "read_lines",
            path,
            _scripts.READ_LINES,
            selection,
            path,
            str(max_bytes),
            limit=max_bytes,
        )
        return result.stdout_bytes


@contextlib.contextmanager
def local_errors(path: Path) -> Iterator[None]:
    """A local file that cannot be opened as a typed error naming it."""
    try:
        yield
    except FileNotFoundError as exc:
        raise FileNotFound(f"{path}: {exc.strerror}", op="copy") from exc
    except PermissionError as exc:
        raise PermissionDenied(f"{path}: {exc.strerror}", op="copy") from exc
    except IsADirectoryError as exc:
        raise IsADirectory(f"{path}: {exc.strerror}", op="copy") from exc


def _parent(path: str) -> str:
    return posixpath.dirname(posixpath.normpath(path)) or "/"


class _Landing:
    """A local file written under a temporary name beside ``target``, renamed into place only
    by :meth:`keep`; removed otherwise."""

    def __init__(self, target: Path) -> None:
        self.target = target
        handle, self._temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        self._file = os.fdopen(handle, "wb")
        self._kept = False

    def __enter__(self) -> _Landing:
        return self

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def keep(self) -> None:
        self._file.close()
        os.replace(self._temp, self.target)
        self._kept = True

    def __exit__(self, *exc: object) -> None:
        if not self._kept:
            self._file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
