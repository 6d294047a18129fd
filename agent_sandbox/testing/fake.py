"""``FakeBackend``: a real, in-memory implementation of the provider contract.

Use it to test agent code without any sandbox provider: files live in memory, commands run in a
small built-in shell, and :meth:`FakeBackend.register_command` scripts any other command (as
httpx's ``MockTransport`` scripts responses). No host process is ever started and no network is
reachable. It passes the conformance suite::

    backend = FakeBackend()

    async def git(ctx):
        await ctx.write_stdout("ok\\n")
        return 0

    backend.register_command("git", git)
    async with await Sandbox.create(backend=backend) as sb:
        assert (await sb.exec("git status")).stdout == "ok\\n"
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import io
import posixpath
import re
import tarfile
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._tasks import spawn
from ..archive import extract_tar, tar_directory
from ..backend import BaseBackend, ProviderOptions
from ..derived import DOWNLOAD_LIMIT, LISTING_LIMIT, local_errors
from ..errors import (
    ConfigError,
    FileNotFound,
    InvalidPath,
    ProcessNotFound,
    SandboxNotFound,
    StdinClosed,
    translating,
)
from ..models import (
    DEFAULT_READ_LIMIT,
    Capabilities,
    FileInfo,
    FoundFiles,
    GrepMatch,
    GrepResult,
    ProcessInfo,
    SandboxInfo,
    SandboxSpec,
    StartOptions,
)
from ..process import ExitStatus, ProcessHandle, Stream
from ._fs import CHUNK, FS, Node
from ._interp import Box, BrokenPipe, CommandContext, Handler, Pipe, Proc, Shell, run_proc
from ._utils import UTILITIES, run_sh

__all__ = ["CommandContext", "FakeBackend", "FakeOptions", "Handler"]

DEFAULT_WORKDIR = "/workspace"
_PIPE_CHUNKS = 16  # output of a command nobody reads yet: then it waits, as on a full pipe
_KEEP = 8 * 1024 * 1024  # output a started process keeps for readers to come (oldest dropped)


class FakeOptions(ProviderOptions):
    """Options of :class:`FakeBackend`.

    ``world`` names the in-memory "server" the backend talks to: backends built with the same
    ``world`` see the same sandboxes (which is how ``connect`` from a new instance works). When
    omitted each new backend gets a private world of its own, shared with backends built from its
    ``options``.
    """

    provider: Literal["fake"] = "fake"
    world: str | None = None
    workdir: str = DEFAULT_WORKDIR

    project_settable: ClassVar[frozenset[str]] = frozenset({"world", "workdir"})


@dataclass
class _World:
    boxes: dict[str, Box] = field(default_factory=dict)
    jobs: dict[tuple[str, str], _Job] = field(default_factory=dict)
    snapshots: dict[str, FS] = field(default_factory=dict)


_WORLDS: dict[str, _World] = {}


class FakeBackend(BaseBackend):
    """An in-memory provider for tests: real behaviour, no processes, no network.

    Sandboxes hold an in-memory filesystem (the workdir, ``/tmp``, ``/root``, ``/dev/null``,
    ``/dev/zero``; no symlinks) and run commands as root (``id -u`` is 0, so permission bits
    bind no one) in a small shell:

    - syntax: ``;`` ``&`` newlines ``&&`` ``||`` ``|`` ``!``, ``{ }``, ``( )``,
      ``if``/``elif``/``else``, ``while``, ``until``, ``for``; quoting, ``$name``, ``${name}``,
      ``${name:-word}`` (and ``-`` ``:=`` ``=`` ``:+`` ``+``), ``$(...)``; ``NAME=value``
      prefixes; redirections ``<`` ``>`` ``>>`` ``n>&m``; ``#`` comments. No globbing (``*`` is
      literal). Anything else (``case``, functions, here-documents, backquotes, ``$((...))``)
      is a syntax error naming it, exit status 2.
    - shell builtins: ``cd``, ``exit``, ``export``, ``unset``, ``eval``, ``exec``,
      ``command [-v]``, ``read``, ``wait``, ``kill`` (``$$``, ``$!``; a signal ends a process
      with 128+N), ``:``.
    - utilities: ``sh``, ``true``, ``false``, ``echo``, ``printf``, ``cat``, ``head``, ``wc``,
      ``sha256sum``, ``test``/``[``, ``ls``, ``mkdir``, ``rm``, ``touch``, ``chmod``, ``sleep``,
      ``env``, ``pwd``, ``id``; ``nc``, ``wget`` and ``curl`` always fail (no network). A
      file with a path (``./run.sh``) runs as an ``sh`` script.

    Anything else exits 127 with ``command not found`` unless scripted with
    :meth:`register_command`. Background jobs (``&``) end with the shell that started them.
    Processes started with ``Sandbox.start`` stream stdin and keep their last 8 MiB of output
    for ``attach`` (replayed from the oldest byte kept). Sandboxes live as long as the Python
    process (or until destroyed or expired); backends built from the same options share them
    (see :class:`FakeOptions`).
    """

    name: ClassVar[str] = "fake"
    Options: ClassVar[type[ProviderOptions]] = FakeOptions
    capabilities = Capabilities(
        network_none=True,  # there is no network at all, so "none" always holds
        snapshot=True,
        stdin=True,
        stdin_streaming=True,
        reattach=True,
        persistent=True,
        isolated=True,
        signals=True,
    )

    def __init__(self, options: ProviderOptions | None = None) -> None:
        opts = options if options is not None else FakeOptions()
        if not isinstance(opts, FakeOptions):
            opts = FakeOptions.model_validate(opts.model_dump())
        if opts.world is None:
            opts = opts.model_copy(update={"world": f"private-{uuid.uuid4().hex}"})
        super().__init__(opts)
        self.fake_options: FakeOptions = opts
        self._world = _WORLDS.setdefault(str(opts.world), _World())
        self._commands: dict[str, Handler] = {}

    def register_command(self, name: str, handler: Handler) -> None:
        """Make ``name`` a command of this backend's sandboxes.

        ``handler(ctx: CommandContext)`` may be sync or async; it reads stdin with ``await
        ctx.read_stdin()``, writes output with ``await ctx.write_stdout(...)``/``write_stderr``
        and returns the exit status (``None`` means 0). An exception it raises reaches the
        caller of ``exec``/``wait``. Registered commands take precedence over the utilities
        (not over shell builtins such as ``cd`` and ``exit``).
        """
        self._commands[name] = handler

    # -- lifecycle ---------------------------------------------------------------------------

    def _expire(self) -> None:
        """End the sandboxes whose TTL ran out."""
        now = datetime.now(timezone.utc)
        for box in builtins.list(self._world.boxes.values()):
            if box.info.expires_at and box.info.expires_at <= now:
                self._end(box)

    @contextlib.asynccontextmanager
    async def _sandbox(self, sandbox_id: str, op: str) -> AsyncIterator[Box]:
        """The sandbox, for a block whose errors name the provider, ``op`` and the sandbox."""
        await anyio.lowlevel.checkpoint()
        self._expire()
        with translating(self.name, op, sandbox_id):
            if (box := self._world.boxes.get(sandbox_id)) is None:
                raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
            yield box

    def _end(self, box: Box) -> None:
        self._world.boxes.pop(box.info.id, None)
        for proc in builtins.list(box.procs.values()):
            proc.kill()
        for key in [k for k in self._world.jobs if k[0] == box.info.id]:
            del self._world.jobs[key]

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox with an empty filesystem (or a snapshot's)."""
        self.check_spec(spec)
        await anyio.lowlevel.checkpoint()
        workdir = posixpath.normpath(spec.workdir or self.fake_options.workdir)
        with translating(self.name, "create"):
            if not workdir.startswith("/"):
                raise InvalidPath(f"workdir must be absolute: {workdir}")
            if spec.snapshot is not None and spec.snapshot not in self._world.snapshots:
                raise SandboxNotFound(f"no snapshot {spec.snapshot!r}")
        fs = FS(workdir)
        if spec.snapshot is not None:
            fs = copy.deepcopy(self._world.snapshots[spec.snapshot])
            fs.mkdir(workdir)
        now = datetime.now(timezone.utc)
        info = SandboxInfo(
            id="fake-" + uuid.uuid4().hex[:12],
            provider=self.name,
            labels=dict(spec.labels),
            created_at=now,
            expires_at=now + timedelta(seconds=spec.ttl_seconds),
            image=spec.image,
            workdir=workdir,
            metadata={"world": str(self.fake_options.world)},
        )
        self._world.boxes[info.id] = Box(info=info, env=dict(spec.env), fs=fs)
        return info

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a sandbox. Raises ``SandboxNotFound``."""
        async with self._sandbox(sandbox_id, "connect") as box:
            return box.info

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Sandboxes of this world carrying all of ``labels`` (expired ones excluded)."""
        await anyio.lowlevel.checkpoint()
        self._expire()
        wanted = (labels or {}).items()
        return [b.info for b in self._world.boxes.values() if wanted <= b.info.labels.items()]

    async def destroy(self, sandbox_id: str) -> None:
        """Remove a sandbox and kill its processes; a missing one is fine."""
        await anyio.lowlevel.checkpoint()
        if (box := self._world.boxes.get(sandbox_id)) is not None:
            self._end(box)

    async def snapshot(self, sandbox_id: str) -> str:
        """Copy the filesystem; create from it with ``SandboxSpec(snapshot=id)``."""
        snap = "fakesnap-" + uuid.uuid4().hex[:12]
        async with self._sandbox(sandbox_id, "snapshot") as box:
            self._world.snapshots[snap] = copy.deepcopy(box.fs)
        return snap

    # -- files -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _files(self, sandbox_id: str, op: str) -> AsyncIterator[FS]:
        async with self._sandbox(sandbox_id, op) as box:
            yield box.fs

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Bytes of a regular file. Raises ``FileNotFound``, ``IsADirectory``, ``InvalidPath``
        (a device), ``FileTooLarge``. The fake's user is root: permission bits bind no one."""
        async with self._files(sandbox_id, "read_file") as fs:
            return fs.read(_absolute(path), max_bytes)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file, creating parent directories. Raises ``IsADirectory``."""
        async with self._files(sandbox_id, "write_file") as fs:
            fs.write(_absolute(path), data, create_parents=True)

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """Describe one path. Raises ``FileNotFound``."""
        async with self._files(sandbox_id, "stat") as fs:
            return fs.info(_absolute(path))

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """Entries of a directory, sorted by name. Raises ``FileNotFound``, ``InvalidPath``."""
        async with self._files(sandbox_id, "list_dir") as fs:
            node = _directory(fs, path := _absolute(path))
            return [fs.info(posixpath.join(path, name)) for name in sorted(node.children)]

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a tree with ``recursive``. Raises ``FileNotFound``;
        ``IsADirectory`` for a directory without ``recursive``."""
        async with self._files(sandbox_id, "remove") as fs:
            fs.remove(_absolute(path), recursive=recursive)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its parents. Raises ``InvalidPath`` (a file on the way)."""
        async with self._files(sandbox_id, "mkdir") as fs:
            fs.mkdir(_absolute(path))

    async def download_file(
        self,
        sandbox_id: str,
        path: str,
        local: Path,
        *,
        max_bytes: int = DOWNLOAD_LIMIT,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Copy a file of the sandbox to a local file."""
        data = await self.read_file(sandbox_id, path, max_bytes=max_bytes)
        await anyio.to_thread.run_sync(local.write_bytes, data)
        if on_progress is not None:
            on_progress(len(data))

    async def upload_file(
        self,
        sandbox_id: str,
        local: Path,
        path: str,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Copy a local file into the sandbox (read whole: the fake's files live in memory)."""
        with local_errors(local):
            data = await anyio.to_thread.run_sync(local.read_bytes)
        await self.write_file(sandbox_id, path, data)
        if on_progress is not None:
            on_progress(len(data))

    async def realpath(self, sandbox_id: str, paths: Sequence[str]) -> builtins.list[str]:
        """The paths, normalised (the fake's filesystem has no symlinks)."""
        async with self._files(sandbox_id, "realpath"):
            return [_absolute(p) for p in paths]

    async def find(self, sandbox_id: str, root: str, *, limit: int = LISTING_LIMIT) -> FoundFiles:
        """Every file below ``root`` (``.git`` skipped), cut past ``limit`` bytes of paths.
        Raises ``FileNotFound``, ``InvalidPath``."""
        async with self._files(sandbox_id, "find") as fs:
            found: builtins.list[str] = []
            size = 0
            for path, node in _walk(_directory(fs, root := _absolute(root)), root):
                if node.kind != "dir":
                    size += len(path.encode()) + 1
                    if size > limit:
                        return FoundFiles(paths=sorted(found), truncated=True)
                    found.append(path)
            return FoundFiles(paths=sorted(found))

    async def grep(
        self, sandbox_id: str, pattern: str, path: str, *, limit: int = LISTING_LIMIT
    ) -> GrepResult:
        """Lines matching ``pattern`` (Python's syntax, close to grep -E), binary files and
        ``.git`` skipped, cut past ``limit`` bytes of lines. Raises ``FileNotFound``,
        ``ConfigError`` for a bad pattern."""
        async with self._files(sandbox_id, "grep") as fs:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"grep {pattern!r}: {exc}") from exc
            top = fs.lookup(path := _absolute(path))
            matches: builtins.list[GrepMatch] = []
            size = 0
            for name, node in _walk(top, path) if top.kind == "dir" else [(path, top)]:
                if node.kind != "file" or b"\x00" in node.data[:8192]:
                    continue
                for number, line in enumerate(node.data.decode(errors="replace").splitlines(), 1):
                    if regex.search(line):
                        size += len(name) + len(line) + 8
                        if size > limit:
                            return GrepResult(matches=_by_place(matches), truncated=True)
                        matches.append(GrepMatch(path=name, line=number, text=line))
            return GrepResult(matches=_by_place(matches))

    async def read_lines(
        self, sandbox_id: str, path: str, start: int, end: int | None, *, max_bytes: int
    ) -> bytes:
        """Lines ``start`` to ``end`` of a file, at most ``max_bytes`` of them."""
        async with self._files(sandbox_id, "read_lines") as fs:
            lines = fs.read(_absolute(path)).splitlines(keepends=True)[start - 1 : end]
            return b"".join(lines)[:max_bytes]

    async def upload(self, sandbox_id: str, local_dir: str | Path, remote_dir: str) -> None:
        """Copy a local tree into ``remote_dir`` (created), through the tar every provider is
        sent; symlinks are skipped (the fake has none). Raises ``FileNotFound``."""
        archive = await anyio.to_thread.run_sync(tar_directory, Path(local_dir))
        async with self._files(sandbox_id, "upload") as fs:
            fs.mkdir(root := _absolute(remote_dir))
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                for member in tar:
                    path = posixpath.normpath(posixpath.join(root, member.name))
                    if member.isdir():
                        fs.mkdir(path)
                    elif member.isfile() and (source := tar.extractfile(member)):
                        fs.write(path, source.read(), create_parents=True)
                        fs.lookup(path).mode = member.mode & 0o777

    async def download(self, sandbox_id: str, remote_dir: str, local_dir: str | Path) -> None:
        """Copy the tree at ``remote_dir`` into ``local_dir``. Raises ``FileNotFound``."""
        buffer = io.BytesIO()  # through tar, as a provider would: the same safe extraction
        async with self._files(sandbox_id, "download") as fs:
            node = fs.lookup(_absolute(remote_dir))
            if node.kind != "dir":
                raise FileNotFound(f"{remote_dir}: not a directory")
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                for path, child in [(".", node), *_walk(node, ".", skip=())]:
                    info = tarfile.TarInfo(path)
                    info.mtime, info.mode = int(child.mtime), child.mode
                    info.type = tarfile.DIRTYPE if child.kind == "dir" else tarfile.REGTYPE
                    info.size = len(child.data) if child.kind == "file" else 0
                    if child.kind in ("dir", "file"):
                        tar.addfile(info, io.BytesIO(bytes(child.data)))
        buffer.seek(0)
        await anyio.to_thread.run_sync(extract_tar, buffer, Path(local_dir))

    # -- processes ---------------------------------------------------------------------------

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Run a command in the fake shell, in a task of its own (see :meth:`BaseBackend.start`).

        A ``detached`` process (``Sandbox.start``) is reachable by ref from any backend of this
        world, its output replayed from the oldest byte kept. Raises ``SandboxNotFound``,
        ``FileNotFound`` for a missing ``cwd``.
        """
        async with self._sandbox(sandbox_id, "exec") as box:
            cwd = posixpath.normpath(options.cwd or box.info.workdir)
            if (node := box.fs.get(cwd)) is None or node.kind != "dir":
                raise FileNotFound(f"working directory not found: {cwd}")
        ref = "fakeproc-" + uuid.uuid4().hex[:12]
        job = _Job(argv, options, box.new_proc())
        if options.detached:
            self._world.jobs[(sandbox_id, ref)] = job
        spawn(lambda: self._run(box, job, cwd))
        await anyio.lowlevel.checkpoint()
        return _Handle(job, ref)

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """A process started by any backend of this world. Raises ``ProcessNotFound``."""
        async with self._sandbox(sandbox_id, "attach"):
            if (job := self._world.jobs.get((sandbox_id, ref))) is None:
                raise ProcessNotFound(f"no process {ref!r} in sandbox {sandbox_id}")
            return _Handle(job, ref)

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """The processes started with ``Sandbox.start`` in the sandbox."""
        async with self._sandbox(sandbox_id, "processes"):
            return [
                ProcessInfo(
                    ref=ref,
                    command=tuple(job.argv),
                    running=job.status is None,
                    exit_code=None if job.status is None else job.status.exit_code,
                    started_at=job.started_at,
                )
                for (sid, ref), job in self._world.jobs.items()
                if sid == sandbox_id
            ]

    async def _run(self, box: Box, job: _Job, cwd: str) -> None:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", **box.env, **job.env}
        shell = Shell(box, {**UTILITIES, **self._commands}, env, cwd)
        shell.pid = job.proc.pid
        fds = {0: job.stdin, 1: partial(job.write, "stdout"), 2: partial(job.write, "stderr")}
        ctx = CommandContext(job.argv, env, cwd, box.info.id, fds, shell)
        sh = posixpath.basename(job.argv[0]) == "sh" and "sh" not in self._commands
        expires = box.info.expires_at
        left = None if expires is None else (expires - datetime.now(timezone.utc)).total_seconds()
        try:
            with anyio.move_on_after(left):
                body = run_sh(ctx, job.proc) if sh else shell.call(job.argv, fds, env)
                job.finish(ExitStatus(*await run_proc(box, job.proc, body)))
                return
            self._end(box)  # the TTL ran out: the sandbox ends, and its processes with it
        except Exception as exc:  # a bug in a scripted command: its caller sees it
            job.error = exc
        finally:
            job.finish(ExitStatus(137, 9))


def _absolute(path: str) -> str:
    if not path.startswith("/") or "\x00" in path:
        raise InvalidPath(f"backend paths must be absolute: {path!r}")
    return posixpath.normpath(path)


def _directory(fs: FS, path: str) -> Node:
    node = fs.lookup(path)
    if node.kind != "dir":
        raise InvalidPath(f"{path}: Not a directory")
    return node


def _walk(node: Node, path: str, skip: tuple[str, ...] = (".git",)) -> Iterator[tuple[str, Node]]:
    """``(path, node)`` of everything below the directory ``node``, but ``skip``'s names."""
    for name, child in sorted(node.children.items()):
        if name not in skip:
            yield posixpath.join(path, name), child
            if child.kind == "dir":
                yield from _walk(child, posixpath.join(path, name), skip)


def _by_place(matches: builtins.list[GrepMatch]) -> builtins.list[GrepMatch]:
    return sorted(matches, key=lambda m: (m.path, m.line))


class _Job:
    """One process's stdin, output and end, shared by every handle on it."""

    def __init__(self, argv: builtins.list[str], options: StartOptions, proc: Proc) -> None:
        self.argv, self.env, self.proc, self.detached = argv, options.env, proc, options.detached
        self.stdin = Pipe() if options.stdin_open else Pipe(options.stdin or b"", closed=True)
        self.started_at = datetime.now(timezone.utc)
        self.chunks: deque[tuple[Stream, bytes]] = deque()
        self.first = self.kept = 0  # the index of chunks[0] in all the output; bytes kept
        self.status: ExitStatus | None = None
        self.error: Exception | None = None
        self.changed = anyio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def write(self, kind: Stream, data: bytes) -> None:
        for start in range(0, len(data), CHUNK):
            while not self.detached and len(self.chunks) >= _PIPE_CHUNKS:
                await self.changed.wait()
            self.chunks.append((kind, data[start : start + CHUNK]))
            self.kept += len(self.chunks[-1][1])
            while self.detached and self.kept > _KEEP:
                self.kept -= len(self.chunks.popleft()[1])
                self.first += 1
            self.notify()
        await anyio.lowlevel.checkpoint()

    def finish(self, status: ExitStatus) -> None:
        if self.status is None:
            self.status = status
            self.stdin.hang_up()
            self.notify()


class _Handle(ProcessHandle):
    """A client's view of a :class:`_Job`: its own read position."""

    def __init__(self, job: _Job, ref: str) -> None:
        self.ref, self._job, self._next = ref, job, job.first

    async def read(self) -> tuple[Stream, bytes] | None:
        job = self._job
        while True:
            self._next = max(self._next, job.first)
            if self._next - job.first < len(job.chunks):
                chunk = job.chunks[self._next - job.first]
                self._next += 1
                if not job.detached:  # a pipe: what was read is gone
                    job.kept -= len(job.chunks.popleft()[1])
                    job.first += 1
                    job.notify()
                return chunk
            if job.status is not None:
                if job.error is not None:
                    raise job.error
                return None
            await job.changed.wait()

    async def wait(self) -> ExitStatus:
        while self._job.status is None:
            await self._job.changed.wait()
        return self._job.status

    async def kill(self) -> None:
        self._job.proc.kill()
        await anyio.lowlevel.checkpoint()

    async def write_stdin(self, data: bytes) -> None:
        try:
            await self._job.stdin.write(data)
        except BrokenPipe:
            raise StdinClosed(
                f"the stdin of process {self.ref} is closed", provider="fake"
            ) from None

    async def close_stdin(self) -> None:
        self._job.stdin.close()
        await anyio.lowlevel.checkpoint()
