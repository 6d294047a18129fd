"""``FakeBackend``: a real, in-memory implementation of the provider contract.

Use it to test agent code without any sandbox provider: files live in memory, commands are
interpreted by a small POSIX shell with the usual utilities built in, and
:meth:`FakeBackend.register_command` lets a test script any other command. No host process is ever
started and no network is reachable. It passes the conformance suite::

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
import copy
import io
import posixpath
import re
import tarfile
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import anyio.lowlevel

from .._tasks import spawn
from ..archive import extract_tar
from ..backend import BaseBackend, ProviderOptions
from ..derived import DOWNLOAD_LIMIT, LISTING_LIMIT
from ..errors import (
    ConfigError,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    ProcessNotFound,
    SandboxNotFound,
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
from ._interp import (
    IO,
    Box,
    CommandContext,
    Handler,
    Input,
    Proc,
    Shell,
    Writer,
    command_name,
    kill_all,
    run_as_proc,
    sh_main,
)

__all__ = ["CommandContext", "FakeBackend", "FakeOptions", "Handler"]

DEFAULT_WORKDIR = "/workspace"


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

    Sandboxes hold an in-memory filesystem (``/workspace``, ``/tmp``, ``/dev/null``,
    ``/dev/zero``) and run commands through a small built-in shell. Built in: ``sh``, ``true``,
    ``false``, ``:``, ``echo``, ``printf``, ``cat``, ``head``, ``tail``, ``wc``, ``ls``, ``pwd``,
    ``cd``, ``exit``, ``export``, ``unset``, ``env``, ``printenv``, ``test``/``[``, ``command``,
    ``sleep``, ``kill``, ``wait``, ``mkdir``, ``rm``, ``touch``, ``chmod``, ``cp``, ``mv``,
    ``basename``, ``dirname``, ``seq``, ``sha256sum``, ``md5sum``. Anything else exits 127 with
    ``command not found`` unless scripted with :meth:`register_command`. ``nc``, ``wget`` and
    ``curl`` are present and always fail: the fake has no network. Commands and file
    operations run as root (``id -u`` is 0), so permission bits bind no one, as for root.

    Sandboxes live as long as the Python process (or until destroyed or expired); backends
    built from the same options share them (see :class:`FakeOptions`).
    """

    name: ClassVar[str] = "fake"
    Options: ClassVar[type[ProviderOptions]] = FakeOptions
    capabilities = Capabilities(
        network_none=True,  # there is no network at all, so "none" always holds
        snapshot=True,
        stdin=True,
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
        assert opts.world is not None
        self._world = _WORLDS.setdefault(opts.world, _World())
        self._commands: dict[str, Handler] = {}

    # -- scripting ---------------------------------------------------------------------------

    def register_command(self, name: str, handler: Handler) -> None:
        """Make ``name`` a command of this backend's sandboxes.

        ``handler(ctx: CommandContext)`` may be sync or async; it writes output through
        ``await ctx.write_stdout(...)``/``ctx.write_stderr`` and returns the exit status
        (``None`` means 0). Registered commands take precedence over built-in utilities
        (shell builtins such as ``cd`` and ``exit`` excepted).
        """
        self._commands[name] = handler

    # -- lifecycle ---------------------------------------------------------------------------

    def _box(self, sandbox_id: str, op: str) -> Box:
        box = self._world.boxes.get(sandbox_id)
        expires = box.info.expires_at if box is not None else None
        if expires is not None and expires <= datetime.now(timezone.utc):
            # the TTL ran out: the sandbox ends itself
            self._world.boxes.pop(sandbox_id, None)
            box = None
        if box is None:
            raise SandboxNotFound(
                f"no sandbox {sandbox_id!r}", provider=self.name, op=op, sandbox_id=sandbox_id
            )
        return box

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create a sandbox with an empty filesystem (or a snapshot's)."""
        self.check_spec(spec)
        await anyio.lowlevel.checkpoint()
        workdir = posixpath.normpath(spec.workdir or self.fake_options.workdir)
        if not workdir.startswith("/"):
            raise InvalidPath(
                f"workdir must be absolute: {workdir}", provider=self.name, op="create"
            )
        sandbox_id = "fake-" + uuid.uuid4().hex[:12]
        now = datetime.now(timezone.utc)
        if spec.snapshot is not None:
            saved = self._world.snapshots.get(spec.snapshot)
            if saved is None:
                raise SandboxNotFound(
                    f"no snapshot {spec.snapshot!r}", provider=self.name, op="create"
                )
            fs = copy.deepcopy(saved)
            fs.mkdir(workdir)
        else:
            fs = FS(workdir)
        info = SandboxInfo(
            id=sandbox_id,
            provider=self.name,
            labels=dict(spec.labels),
            created_at=now,
            expires_at=now + timedelta(seconds=spec.ttl_seconds),
            image=spec.image,
            workdir=workdir,
            metadata={"world": str(self.fake_options.world)},
        )
        self._world.boxes[sandbox_id] = Box(info=info, env=dict(spec.env), fs=fs)
        return info

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Describe a sandbox. Raises ``SandboxNotFound``."""
        await anyio.lowlevel.checkpoint()
        return self._box(sandbox_id, "connect").info

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """Sandboxes of this world carrying all of ``labels`` (expired ones excluded)."""
        await anyio.lowlevel.checkpoint()
        wanted = dict(labels or {})
        found = []
        for sandbox_id in builtins.list(self._world.boxes):
            try:
                info = self._box(sandbox_id, "list").info
            except SandboxNotFound:
                continue
            if all(info.labels.get(k) == v for k, v in wanted.items()):
                found.append(info)
        return found

    async def destroy(self, sandbox_id: str) -> None:
        """Remove a sandbox and kill its commands; a missing one is fine."""
        await anyio.lowlevel.checkpoint()
        box = self._world.boxes.pop(sandbox_id, None)
        if box is not None:
            kill_all(box)
        for key in [k for k in self._world.jobs if k[0] == sandbox_id]:
            del self._world.jobs[key]

    async def snapshot(self, sandbox_id: str) -> str:
        """Copy the filesystem; create from it with ``SandboxSpec(snapshot=id)``."""
        box = self._box(sandbox_id, "snapshot")
        snap = "fakesnap-" + uuid.uuid4().hex[:12]
        self._world.snapshots[snap] = copy.deepcopy(box.fs)
        return snap

    # -- files -------------------------------------------------------------------------------

    def _fs_call(self, sandbox_id: str, op: str, func: Callable[[FS], Any]) -> Any:
        box = self._box(sandbox_id, op)
        try:
            return func(box.fs)
        except (FileNotFound, IsADirectory, InvalidPath, FileTooLarge) as exc:
            exc.provider, exc.op, exc.sandbox_id = self.name, op, sandbox_id
            raise

    @staticmethod
    def _check(path: str) -> str:
        if not path.startswith("/") or "\x00" in path:
            raise InvalidPath(f"backend paths must be absolute: {path!r}")
        return posixpath.normpath(path)

    async def read_file(
        self, sandbox_id: str, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> bytes:
        """Bytes of a regular file. Raises ``FileNotFound``, ``IsADirectory``, ``InvalidPath``
        (a device), ``FileTooLarge``. The fake's user is root: permission bits bind no one."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        data: bytes = self._fs_call(
            sandbox_id, "read_file", lambda fs: fs.read_regular(p, max_bytes)
        )
        return data

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file, creating parent directories."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        self._fs_call(sandbox_id, "write_file", lambda fs: fs.write(p, data, create_parents=True))

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """Describe one path. Raises ``FileNotFound``."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        info: FileInfo = self._fs_call(sandbox_id, "stat", lambda fs: fs.info(p, fs.lookup(p)))
        return info

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """Entries of a directory, sorted by name. Raises ``FileNotFound``, ``InvalidPath``."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)

        def entries(fs: FS) -> builtins.list[FileInfo]:
            node = fs.lookup(p)
            if node.kind != "dir":
                raise InvalidPath(f"not a directory: {p}")
            return [fs.info(posixpath.join(p, n), c) for n, c in sorted(node.children.items())]

        result: builtins.list[FileInfo] = self._fs_call(sandbox_id, "list_dir", entries)
        return result

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a tree with ``recursive``. Raises ``FileNotFound``;
        ``IsADirectory`` for a directory without ``recursive``."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)

        def remove(fs: FS) -> None:
            if not recursive and fs.lookup(p).kind == "dir":
                raise IsADirectory(f"is a directory: {p}")
            fs.remove(p, recursive=recursive)

        self._fs_call(sandbox_id, "remove", remove)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its parents."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        self._fs_call(sandbox_id, "mkdir", lambda fs: fs.mkdir(p))

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

    async def realpath(self, sandbox_id: str, paths: Sequence[str]) -> builtins.list[str]:
        """The paths, normalised (the fake's filesystem has no symlinks)."""
        await anyio.lowlevel.checkpoint()
        self._box(sandbox_id, "realpath")
        return [self._check(p) for p in paths]

    async def find(self, sandbox_id: str, root: str, *, limit: int = LISTING_LIMIT) -> FoundFiles:
        """Every file below ``root`` (``.git`` skipped). Raises ``FileNotFound``, ``InvalidPath``."""
        await anyio.lowlevel.checkpoint()
        p = self._check(root)

        def walk(fs: FS) -> FoundFiles:
            node = fs.lookup(p)
            if node.kind != "dir":
                raise InvalidPath(f"not a directory: {p}")
            found = [path for path, child in _files_below(node, p) if child.kind != "dir"]
            return FoundFiles(paths=sorted(found))

        result: FoundFiles = self._fs_call(sandbox_id, "find", walk)
        return result

    async def grep(
        self, sandbox_id: str, pattern: str, path: str, *, limit: int = LISTING_LIMIT
    ) -> GrepResult:
        """Lines matching ``pattern`` (Python's syntax, close to grep -E), binary files and
        ``.git`` skipped. Raises ``FileNotFound``, ``ConfigError`` for a bad pattern."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"grep {pattern!r}: {exc}", provider=self.name, op="grep") from exc

        def search(fs: FS) -> GrepResult:
            node = fs.lookup(p)
            files = _files_below(node, p) if node.kind == "dir" else [(p, node)]
            matches = []
            for name, child in files:
                data = bytes(child.data)
                if child.kind != "file" or b"\x00" in data[:8192]:
                    continue
                for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
                    if regex.search(line):
                        matches.append(GrepMatch(path=name, line=number, text=line))
            return GrepResult(matches=sorted(matches, key=lambda m: (m.path, m.line)))

        result: GrepResult = self._fs_call(sandbox_id, "grep", search)
        return result

    async def read_lines(
        self, sandbox_id: str, path: str, start: int, end: int | None, *, max_bytes: int
    ) -> bytes:
        """Lines ``start`` to ``end`` of a file, at most ``max_bytes`` of them."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        data: bytes = self._fs_call(sandbox_id, "read_lines", lambda fs: fs.read(p))
        lines = data.splitlines(keepends=True)[start - 1 : end]
        return b"".join(lines)[:max_bytes]

    async def upload(self, sandbox_id: str, local_dir: str | Path, remote_dir: str) -> None:
        """Copy a local tree into ``remote_dir``."""
        p = self._check(remote_dir)
        box = self._box(sandbox_id, "upload")
        entries = await anyio.to_thread.run_sync(_read_tree, Path(local_dir))
        box.fs.mkdir(p)
        for rel, data, mode in entries:
            dest = posixpath.join(p, rel)
            if data is None:
                box.fs.mkdir(dest)
            else:
                box.fs.write(dest, data, create_parents=True)
                box.fs.lookup(dest).mode = mode

    async def download(self, sandbox_id: str, remote_dir: str, local_dir: str | Path) -> None:
        """Copy the tree at ``remote_dir`` into ``local_dir``. Raises ``FileNotFound``."""
        p = self._check(remote_dir)
        node = self._fs_call(sandbox_id, "download", lambda fs: fs.lookup(p))
        if node.kind != "dir":
            raise FileNotFound(f"not a directory: {p}", provider=self.name, op="download")
        # Through tar, as a provider would: the same safe extraction applies.
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            _add_tree(tar, node, ".")
        buffer.seek(0)
        await anyio.to_thread.run_sync(extract_tar, buffer, Path(local_dir))

    # -- commands ----------------------------------------------------------------------------

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: StartOptions
    ) -> ProcessHandle:
        """Run a command of the fake shell in a task of its own (see :meth:`BaseBackend.start`).

        Its output is kept in memory, so any backend of the same world can attach to a
        ``detached`` one by ref and read it from the start. Raises ``SandboxNotFound``.
        """
        box = self._box(sandbox_id, "exec")
        job = _Job(argv, keep=options.detached)
        ref = "fakeproc-" + uuid.uuid4().hex[:12]
        if options.detached:
            self._world.jobs[(sandbox_id, ref)] = job
        spawn(lambda: self._run(box, job, argv, options))
        await anyio.lowlevel.checkpoint()
        return _Handle(job, ref)

    async def attach(self, sandbox_id: str, ref: str) -> ProcessHandle:
        """A process started by any backend of this world. Raises ``ProcessNotFound``."""
        self._box(sandbox_id, "attach")
        job = self._world.jobs.get((sandbox_id, ref))
        if job is None:
            raise ProcessNotFound(
                f"no process {ref!r} in sandbox {sandbox_id}",
                provider=self.name,
                op="attach",
                sandbox_id=sandbox_id,
            )
        return _Handle(job, ref)

    async def processes(self, sandbox_id: str) -> builtins.list[ProcessInfo]:
        """The processes started with ``Sandbox.start`` in the sandbox."""
        self._box(sandbox_id, "processes")
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

    async def _run(
        self, box: Box, job: _Job, argv: builtins.list[str], options: StartOptions
    ) -> None:
        def writer(kind: Literal["stdout", "stderr"]) -> Writer:
            async def write(data: bytes) -> None:
                for start in range(0, len(data), CHUNK):
                    await job.append(kind, bytes(data[start : start + CHUNK]))
                await anyio.lowlevel.checkpoint()

            return write

        env = {**box.env, **options.env}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("HOME", "/root")
        cwd = posixpath.normpath(options.cwd or box.info.workdir)
        node = box.fs.get(cwd)
        io_ = IO(Input(options.stdin or b""), writer("stdout"), writer("stderr"))
        proc = box.new_proc()
        job.proc, job.box = proc, box
        try:
            if node is None or node.kind != "dir":
                await io_.stderr(f"sh: cd: can't cd to {cwd}: No such file or directory\n".encode())
                job.finish(ExitStatus(2))
                return
            shell = Shell(box, proc, self._commands, env, cwd, [])
            work: Awaitable[int]
            if command_name(argv[0]) == "sh":
                work = sh_main(shell, argv, io_)
            else:
                work = shell.run_utility(argv, env, io_)
            expires = box.info.expires_at
            left = (
                None if expires is None else (expires - datetime.now(timezone.utc)).total_seconds()
            )
            with anyio.move_on_after(left):
                code, signal = await run_as_proc(box, proc, work)
                job.finish(ExitStatus(code, signal))
                return
            # The sandbox's TTL ran out while the command ran: the sandbox ends, and it with it.
            self._world.boxes.pop(box.info.id, None)
            kill_all(box)
            job.finish(ExitStatus(137, 9))
        except Exception as exc:  # a bug in a scripted command: the caller sees it
            job.error = exc
        finally:
            job.finish(ExitStatus(137, 9))


def _read_tree(source: Path) -> builtins.list[tuple[str, bytes | None, int]]:
    """(relative path, content or ``None`` for a directory, mode) of every entry under ``source``."""
    if not source.is_dir():
        raise FileNotFound(f"local directory not found: {source}", op="upload")
    entries: builtins.list[tuple[str, bytes | None, int]] = []
    for item in sorted(source.rglob("*")):
        rel = item.relative_to(source).as_posix()
        if item.is_dir():
            entries.append((rel, None, 0o755))
        elif item.is_file():
            entries.append((rel, item.read_bytes(), item.stat().st_mode & 0o777))
    return entries


def _add_tree(tar: tarfile.TarFile, node: Node, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = int(node.mtime)
    info.mode = node.mode
    if node.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for child_name, child in sorted(node.children.items()):
            _add_tree(tar, child, f"{name}/{child_name}")
    elif node.kind == "file":
        info.size = len(node.data)
        tar.addfile(info, io.BytesIO(bytes(node.data)))


class _Job:
    """One command's output and end, shared by every handle on it (the fake's "supervisor")."""

    def __init__(self, argv: builtins.list[str], *, keep: bool) -> None:
        self.argv = argv
        self.keep = keep
        self.started_at = datetime.now(timezone.utc)
        self.chunks: builtins.list[tuple[Stream, bytes]] = []
        self.dropped = 0
        self.status: ExitStatus | None = None
        self.changed = anyio.Event()
        self.error: Exception | None = None
        self.proc: Proc | None = None
        self.box: Box | None = None

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def append(self, kind: Stream, data: bytes) -> None:
        """Add output; a command nobody reads waits, like a writer on a full pipe (unless its
        output is kept for attaching)."""
        while not self.keep and len(self.chunks) - self.dropped >= _PIPE_CHUNKS:
            await self.changed.wait()
        self.chunks.append((kind, data))
        self._notify()

    def finish(self, status: ExitStatus) -> None:
        if self.status is None:
            self.status = status
            self._notify()

    def kill(self) -> None:
        if self.status is None and self.proc is not None and self.proc.scope is not None:
            self.proc.signal = 9
            self.proc.scope.cancel()


class _Handle(ProcessHandle):
    """A client's view of a :class:`_Job`: its own read position."""

    def __init__(self, job: _Job, ref: str) -> None:
        self.ref = ref
        self._job = job
        self._next = job.dropped if not job.keep else 0

    async def read(self) -> tuple[Stream, bytes] | None:
        job = self._job
        while True:
            if self._next < len(job.chunks):
                chunk = job.chunks[self._next]
                self._next += 1
                if not job.keep:  # a pipe: what was read is gone
                    job.chunks[self._next - 1] = ("stdout", b"")
                    job.dropped = self._next
                    job._notify()
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
        self._job.kill()
        await anyio.lowlevel.checkpoint()


_PIPE_CHUNKS = 16


def _files_below(node: Node, path: str) -> builtins.list[tuple[str, Node]]:
    """``(path, node)`` of everything below the directory ``node`` (``.git`` skipped)."""
    found = []
    for name, child in sorted(node.children.items()):
        if name == ".git":
            continue
        below = posixpath.join(path, name)
        found.append((below, child))
        if child.kind == "dir":
            found.extend(_files_below(child, below))
    return found
