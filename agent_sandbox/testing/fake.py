"""``FakeBackend``: a real, in-memory implementation of the provider contract.

Use it to test agent code without any sandbox provider: files live in memory, commands are
interpreted by a small shell (see :mod:`agent_sandbox.testing._shell`) with the usual utilities
built in, and :meth:`FakeBackend.register_command` lets a test script any other command. No host
process is ever started and no network is reachable. It passes the conformance suite.

    backend = FakeBackend()
    backend.register_command("git", lambda ctx: ctx.write_stdout_nowait(b"ok\\n") or 0)
    async with await Sandbox.create(backend=backend) as sb:
        assert (await sb.exec("echo hi")).stdout == "hi\\n"
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import hashlib
import inspect
import io
import posixpath
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from ..backend import BaseBackend, ProviderOptions, argv_of
from ..errors import (
    CommandTimeout,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    SandboxNotFound,
)
from ..models import (
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    FileInfo,
    SandboxInfo,
    SandboxSpec,
)
from . import _shell

CHUNK = 64 * 1024
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


# -- the in-memory filesystem ----------------------------------------------------------------


@dataclass
class _Node:
    kind: Literal["file", "dir", "null", "zero"]
    mode: int
    mtime: float = field(default_factory=time.time)
    data: bytearray = field(default_factory=bytearray)
    children: dict[str, _Node] = field(default_factory=dict)


def _zeros() -> Iterator[bytes]:
    zeros = bytes(CHUNK)
    while True:
        yield zeros


def _dir(mode: int = 0o755) -> _Node:
    return _Node("dir", mode)


class _FS:
    """One sandbox's filesystem. Paths are absolute and normalised by the caller."""

    def __init__(self, workdir: str) -> None:
        self.root = _dir()
        for d in ("/tmp", "/dev", "/etc", "/home", workdir):
            self.mkdir(d)
        dev = self.root.children["dev"]
        dev.children["null"] = _Node("null", 0o666)
        dev.children["zero"] = _Node("zero", 0o666)

    @staticmethod
    def parts(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def lookup(self, path: str) -> _Node:
        node = self.root
        walked = ""
        for part in self.parts(path):
            if node.kind != "dir":
                raise InvalidPath(f"not a directory: {walked}")
            walked += "/" + part
            child = node.children.get(part)
            if child is None:
                raise FileNotFound(f"no such file or directory: {path}")
            node = child
        return node

    def get(self, path: str) -> _Node | None:
        try:
            return self.lookup(path)
        except (FileNotFound, InvalidPath):
            return None

    def mkdir(self, path: str) -> _Node:
        node = self.root
        for part in self.parts(path):
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _dir()
                node.mtime = time.time()
            elif child.kind != "dir":
                raise InvalidPath(f"not a directory: {path}")
            node = child
        return node

    def parent_of(self, path: str, *, create: bool) -> tuple[_Node, str]:
        parent, name = posixpath.split(path)
        if not name:
            raise IsADirectory(f"is a directory: {path}")
        if create:
            return self.mkdir(parent), name
        node = self.lookup(parent)
        if node.kind != "dir":
            raise InvalidPath(f"not a directory: {parent}")
        return node, name

    def write(
        self, path: str, data: bytes, *, append: bool = False, create_parents: bool = False
    ) -> None:
        parent, name = self.parent_of(path, create=create_parents)
        node = parent.children.get(name)
        if node is None:
            node = parent.children[name] = _Node("file", 0o644)
            parent.mtime = time.time()
        if node.kind == "dir":
            raise IsADirectory(f"is a directory: {path}")
        if node.kind == "file":
            if append:
                node.data += data
            else:
                node.data = bytearray(data)
            node.mtime = time.time()

    def read(self, path: str) -> bytes:
        node = self.lookup(path)
        if node.kind == "dir":
            raise IsADirectory(f"is a directory: {path}")
        if node.kind == "zero":
            raise InvalidPath(f"cannot read all of an endless device: {path}")
        return bytes(node.data)

    def chunks(self, path: str) -> Iterator[bytes]:
        """The content of a file in pieces (endless for ``/dev/zero``). Checks eagerly."""
        node = self.lookup(path)
        if node.kind == "dir":
            raise IsADirectory(f"is a directory: {path}")
        if node.kind == "zero":
            return _zeros()
        view = bytes(node.data)
        return (view[start : start + CHUNK] for start in range(0, len(view), CHUNK))

    def remove(self, path: str, *, recursive: bool) -> None:
        parent, name = self.parent_of(path, create=False)
        node = parent.children.get(name)
        if node is None:
            raise FileNotFound(f"no such file or directory: {path}")
        if node.kind == "dir" and node.children and not recursive:
            raise IsADirectory(f"directory not empty: {path}")
        del parent.children[name]
        parent.mtime = time.time()

    def info(self, path: str, node: _Node) -> FileInfo:
        kind: Literal["file", "dir", "other"] = (
            "file" if node.kind == "file" else "dir" if node.kind == "dir" else "other"
        )
        return FileInfo(
            path=path,
            name=posixpath.basename(path) or "/",
            type=kind,
            size=len(node.data) if node.kind == "file" else 0,
            mode=node.mode,
            mtime=node.mtime,
        )


# -- sandboxes and their processes -----------------------------------------------------------


@dataclass
class _Proc:
    pid: int
    scope: anyio.CancelScope | None = None
    signal: int | None = None


@dataclass
class _Box:
    info: SandboxInfo
    env: dict[str, str]
    fs: _FS
    procs: dict[int, _Proc] = field(default_factory=dict)
    next_pid: int = 100

    def new_proc(self) -> _Proc:
        self.next_pid += 1
        proc = _Proc(self.next_pid)
        self.procs[proc.pid] = proc
        return proc


@dataclass
class _World:
    boxes: dict[str, _Box] = field(default_factory=dict)
    snapshots: dict[str, _FS] = field(default_factory=dict)


_WORLDS: dict[str, _World] = {}


# -- what a command sees --------------------------------------------------------------------


class _Input:
    """A command's stdin: bytes consumed by whoever reads first (like a pipe)."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = data

    def read(self) -> bytes:
        data, self._data = self._data, b""
        return data


Writer = Callable[[bytes], Awaitable[None]]


async def _discard(data: bytes) -> None:
    await anyio.lowlevel.checkpoint()


@dataclass
class CommandContext:
    """What a scripted command (see :meth:`FakeBackend.register_command`) gets.

    Attributes:
        argv: the command and its arguments, expanded.
        env: the environment of the command.
        cwd: the absolute working directory.
        sandbox_id: the sandbox it runs in.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str
    sandbox_id: str
    _stdin: _Input
    _stdout: Writer
    _stderr: Writer
    _fs: _FS

    def read_stdin(self) -> bytes:
        """All of stdin (later reads get nothing)."""
        return self._stdin.read()

    async def write_stdout(self, data: bytes | str) -> None:
        """Write to stdout."""
        await self._stdout(data.encode() if isinstance(data, str) else data)

    async def write_stderr(self, data: bytes | str) -> None:
        """Write to stderr."""
        await self._stderr(data.encode() if isinstance(data, str) else data)

    def path(self, path: str) -> str:
        """``path`` made absolute against ``cwd``."""
        return posixpath.normpath(posixpath.join(self.cwd, path))

    def read_file(self, path: str) -> bytes:
        """A file of the sandbox. Raises ``FileNotFound``, ``IsADirectory``."""
        return self._fs.read(self.path(path))

    def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a file of the sandbox (parents created)."""
        self._fs.write(self.path(path), data, create_parents=True)


Handler = Callable[[CommandContext], "int | Awaitable[int | None] | None"]


class _ExitShell(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Usage(Exception):
    """A utility was called wrongly: message on stderr, exit status given."""

    def __init__(self, message: str, code: int = 1) -> None:
        self.message = message
        self.code = code


_SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15}


@dataclass
class _IO:
    stdin: _Input
    stdout: Writer
    stderr: Writer


class _Shell:
    """The state of one shell process: variables, positional parameters, cwd, jobs."""

    def __init__(
        self,
        backend: FakeBackend,
        box: _Box,
        proc: _Proc,
        env: dict[str, str],
        cwd: str,
        args: list[str],
        name: str = "sh",
    ) -> None:
        self.backend = backend
        self.box = box
        self.proc = proc
        self.vars = dict(env)
        self.cwd = cwd
        self.args = args
        self.name = name
        self.status = 0
        self.last_bg: int | None = None
        self.jobs: anyio.abc.TaskGroup | None = None
        self.job_done: dict[int, anyio.Event] = {}

    def child(self, proc: _Proc) -> _Shell:
        sub = _Shell(self.backend, self.box, proc, self.vars, self.cwd, list(self.args), self.name)
        sub.status = self.status
        sub.jobs = self.jobs
        return sub

    def lookup(self, name: str) -> str | None:
        if name == "$":
            return str(self.proc.pid)
        if name == "?":
            return str(self.status)
        if name == "!":
            return "" if self.last_bg is None else str(self.last_bg)
        if name == "#":
            return str(len(self.args))
        if name in ("@", "*"):
            return " ".join(self.args)
        if name.isdigit():
            index = int(name)
            if index == 0:
                return self.name
            return self.args[index - 1] if index <= len(self.args) else ""
        return self.vars.get(name)

    def expand(self, word: _shell.Word) -> list[str]:
        if word.segments == [(True, "$@")] or (
            len(word.segments) == 1 and word.segments[0] == (True, '"$@"')
        ):
            return list(self.args)
        text = "".join(
            _shell.expand_text(seg, self.lookup) if expand else seg for expand, seg in word.segments
        )
        if not word.quoted and not text and any(e for e, _ in word.segments):
            return []  # an unquoted empty expansion disappears
        return [text]

    def expand_words(self, words: builtins.list[_shell.Word]) -> builtins.list[str]:
        out: list[str] = []
        for w in words:
            out.extend(self.expand(w))
        return out

    def abspath(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.cwd, path)) if path else self.cwd

    # -- running -------------------------------------------------------------------------

    async def run_script(self, node: _shell.ListNode, io_: _IO) -> int:
        try:
            async with anyio.create_task_group() as jobs:
                self.jobs = jobs
                try:
                    status = await self.run_list(node, io_)
                except _ExitShell as exc:
                    status = exc.code
                # background jobs end with the command that started them
                jobs.cancel_scope.cancel()
        finally:
            self.jobs = None
        return status

    async def run_list(self, node: _shell.ListNode, io_: _IO) -> int:
        for and_or, background in node.items:
            if background:
                await self.start_job(and_or, io_)
                self.status = 0
            else:
                self.status = await self.run_and_or(and_or, io_)
        return self.status

    async def start_job(self, and_or: _shell.AndOr, io_: _IO) -> None:
        proc = self.box.new_proc()
        sub = self.child(proc)
        done = anyio.Event()
        self.job_done[proc.pid] = done
        self.last_bg = proc.pid

        async def job() -> None:
            try:
                script = _shell.ListNode([(and_or, False)])
                await self.backend._in_proc(self.box, proc, sub.run_script(script, io_))
            finally:
                done.set()

        assert self.jobs is not None
        self.jobs.start_soon(job)
        await anyio.lowlevel.checkpoint()

    async def run_and_or(self, node: _shell.AndOr, io_: _IO) -> int:
        status = await self.run_pipeline(node.first, io_)
        for op, pipeline in node.rest:
            self.status = status
            if (op == "&&" and status == 0) or (op == "||" and status != 0):
                status = await self.run_pipeline(pipeline, io_)
        return status

    async def run_pipeline(self, node: _shell.Pipeline, io_: _IO) -> int:
        stdin = io_.stdin
        status = 0
        for index, command in enumerate(node.commands):
            last = index == len(node.commands) - 1
            if last:
                status = await self.run_command(command, _IO(stdin, io_.stdout, io_.stderr))
            else:
                captured = bytearray()

                async def capture(data: bytes, sink: bytearray = captured) -> None:
                    sink.extend(data)
                    await anyio.lowlevel.checkpoint()

                await self.run_command(command, _IO(stdin, capture, io_.stderr))
                stdin = _Input(bytes(captured))
        if node.negate:
            status = 0 if status else 1
        return status

    async def run_command(self, node: _shell.Command, io_: _IO) -> int:
        try:
            io_ = self.redirect(node.redirs, io_)
        except (FileNotFound, IsADirectory, InvalidPath) as exc:
            await io_.stderr(f"sh: {exc}\n".encode())
            return 1
        if isinstance(node, _shell.Simple):
            return await self.run_simple(node, io_)
        kind = node.kind
        if kind == "group":
            return await self.run_list(node.parts[0], io_)
        if kind == "subshell":
            sub = self.child(self.proc)
            try:
                return await sub.run_list(node.parts[0], io_)
            except _ExitShell as exc:
                return exc.code
        if kind == "if":
            parts = node.parts
            for i in range(0, len(parts) - 1, 2):
                if await self.run_list(parts[i], io_) == 0:
                    return await self.run_list(parts[i + 1], io_)
            if len(parts) % 2 == 1:
                return await self.run_list(parts[-1], io_)
            return 0
        if kind in ("while", "until"):
            status = 0
            while True:
                cond = await self.run_list(node.parts[0], io_)
                if (cond == 0) != (kind == "while"):
                    return status
                status = await self.run_list(node.parts[1], io_)
                await anyio.lowlevel.checkpoint()
        if kind == "for":
            items = self.args if node.items is None else self.expand_words(node.items)
            status = 0
            for item in items:
                self.vars[node.name] = item
                status = await self.run_list(node.parts[0], io_)
            return status
        raise AssertionError(kind)

    def redirect(self, redirs: builtins.list[_shell.Redir], io_: _IO) -> _IO:
        stdin, out, err = io_.stdin, io_.stdout, io_.stderr
        for r in redirs:
            target = "".join(self.expand(r.target))
            if r.op == ">&":
                if target not in ("1", "2"):
                    raise InvalidPath(f"bad descriptor: {target}")
                writer = out if target == "1" else err
                if r.fd == 1:
                    out = writer
                elif r.fd == 2:
                    err = writer
                continue
            path = self.abspath(target)
            fs = self.box.fs
            if r.op == "<":
                stdin = _Input(fs.read(path) if fs.lookup(path).kind == "file" else b"")
                continue
            fs.write(path, b"", append=r.op == ">>")

            async def to_file(data: bytes, path: str = path, fs: _FS = fs) -> None:
                fs.write(path, data, append=True)
                await anyio.lowlevel.checkpoint()

            if r.fd == 1:
                out = to_file
            elif r.fd == 2:
                err = to_file
        return _IO(stdin, out, err)

    async def run_simple(self, node: _shell.Simple, io_: _IO) -> int:
        argv = self.expand_words(node.words)
        assigned = {name: "".join(self.expand(value)) or "" for name, value in node.assigns}
        if not argv:
            self.vars.update(assigned)
            return 0
        env = {**self.vars, **assigned}
        return await self.backend._run_utility(self, argv, env, io_)


# -- built-in utilities -----------------------------------------------------------------------


def _escape_text(text: str, *, octal_needs_zero: bool) -> tuple[bytes, bool]:
    """Interpret backslash escapes; returns (bytes, stop) where stop means ``\\c`` was seen."""
    out = bytearray()
    i = 0
    simple = {"n": 10, "t": 9, "r": 13, "\\": 92, "a": 7, "b": 8, "f": 12, "v": 11, "e": 27}
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 >= len(text):
            out += c.encode()
            i += 1
            continue
        d = text[i + 1]
        if d in simple:
            out.append(simple[d])
            i += 2
        elif d == "c":
            return bytes(out), True
        elif d in "01234567":
            j = i + 1
            if octal_needs_zero and d == "0":
                j += 1
            k = j
            while k < len(text) and k < j + 3 and text[k] in "01234567":
                k += 1
            out.append(int(text[j:k] or "0", 8) & 0xFF)
            i = k
        else:
            out += ("\\" + d).encode()
            i += 2
    return bytes(out), False


def _printf(fmt: str, args: builtins.list[str]) -> bytes:
    out = bytearray()
    args = list(args)
    while True:
        consumed = 0
        i = 0
        while i < len(fmt):
            c = fmt[i]
            if c == "\\":
                j = i + 1
                if j < len(fmt) and fmt[j] in "01234567":
                    k = j
                    while k < len(fmt) and k < j + 3 and fmt[k] in "01234567":
                        k += 1
                    out.append(int(fmt[j:k], 8) & 0xFF)
                    i = k
                    continue
                piece, _ = _escape_text(fmt[i : i + 2], octal_needs_zero=False)
                out += piece
                i += 2
                continue
            if c == "%" and i + 1 < len(fmt):
                j = i + 1
                while j < len(fmt) and fmt[j] in "-+ #0123456789.":
                    j += 1
                spec = fmt[i + 1 : j]
                conv = fmt[j] if j < len(fmt) else ""
                i = j + 1
                if conv == "%":
                    out += b"%"
                    continue
                arg = args[consumed] if consumed < len(args) else ""
                consumed += 1
                if conv == "s":
                    out += ("%" + spec + "s").__mod__(arg).encode()
                elif conv == "b":
                    piece, _ = _escape_text(arg, octal_needs_zero=True)
                    out += piece
                elif conv in "dixXo":
                    value = int(arg or "0")
                    out += ("%" + spec + conv).__mod__(value).encode()
                elif conv == "c":
                    out += arg[:1].encode()
                else:
                    raise _Usage(f"printf: %{conv}: invalid directive")
                continue
            out += c.encode()
            i += 1
        args = args[consumed:]
        if not args or consumed == 0:
            return bytes(out)


def _test(args: builtins.list[str], fs: _FS, cwd: str) -> bool:
    if args and args[0] == "!":
        return not _test(args[1:], fs, cwd)
    if not args:
        return False
    if len(args) == 1:
        return args[0] != ""
    if len(args) == 2:
        op, operand = args
        path = posixpath.normpath(posixpath.join(cwd, operand)) if operand else ""
        node = fs.get(path) if path else None
        checks: dict[str, Callable[[], bool]] = {
            "-n": lambda: operand != "",
            "-z": lambda: operand == "",
            "-e": lambda: node is not None,
            "-f": lambda: node is not None and node.kind == "file",
            "-d": lambda: node is not None and node.kind == "dir",
            "-s": lambda: node is not None and len(node.data) > 0,
            "-r": lambda: node is not None,
            "-w": lambda: node is not None,
            "-x": lambda: node is not None and bool(node.mode & 0o111),
        }
        if op not in checks:
            raise _Usage(f"test: unknown operator {op}", 2)
        return checks[op]()
    if len(args) == 3:
        left, op, right = args
        if op == "=" or op == "==":
            return left == right
        if op == "!=":
            return left != right
        numeric = {
            "-eq": int.__eq__,
            "-ne": int.__ne__,
            "-lt": int.__lt__,
            "-le": int.__le__,
            "-gt": int.__gt__,
            "-ge": int.__ge__,
        }
        if op in numeric:
            try:
                return bool(numeric[op](int(left), int(right)))
            except ValueError:
                raise _Usage(f"test: integer expression expected: {left} {right}", 2) from None
    if "-a" in args:
        k = args.index("-a")
        return _test(args[:k], fs, cwd) and _test(args[k + 1 :], fs, cwd)
    if "-o" in args:
        k = args.index("-o")
        return _test(args[:k], fs, cwd) or _test(args[k + 1 :], fs, cwd)
    raise _Usage("test: too many arguments", 2)


def _count_arg(argv: builtins.list[str], flag: str) -> tuple[int | None, builtins.list[str]]:
    """Parse ``-c N``/``-cN``/``-n N``/``-N``; returns (value for ``flag``, remaining args)."""
    value: int | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == flag and i + 1 < len(argv):
            value = int(argv[i + 1].lstrip("+"))
            i += 2
            continue
        if a.startswith(flag) and len(a) > 2:
            value = int(a[2:].lstrip("+"))
        elif a.startswith("-") and a[1:].isdigit():
            value = int(a[1:])
        else:
            rest.append(a)
        i += 1
    return value, rest


# -- the backend ----------------------------------------------------------------------------


class FakeBackend(BaseBackend):
    """An in-memory provider for tests: real behaviour, no processes, no network.

    Sandboxes hold an in-memory filesystem (``/workspace``, ``/tmp``, ``/dev/null``,
    ``/dev/zero``) and run commands through a small built-in shell. Built in: ``sh``, ``true``,
    ``false``, ``:``, ``echo``, ``printf``, ``cat``, ``head``, ``tail``, ``wc``, ``ls``, ``pwd``,
    ``cd``, ``exit``, ``export``, ``unset``, ``env``, ``printenv``, ``test``/``[``, ``command``,
    ``sleep``, ``kill``, ``wait``, ``mkdir``, ``rm``, ``touch``, ``cp``, ``mv``, ``basename``,
    ``dirname``, ``seq``, ``sha256sum``, ``md5sum``. Anything else exits 127 with
    ``command not found`` unless scripted with :meth:`register_command`. ``nc``, ``wget`` and
    ``curl`` are present and always fail: the fake has no network.

    Sandboxes live as long as the Python process (or until destroyed or expired); backends
    built from the same options share them (see :class:`FakeOptions`).
    """

    name: ClassVar[str] = "fake"
    Options: ClassVar[type[ProviderOptions]] = FakeOptions
    capabilities = Capabilities(
        network_none=True,  # there is no network at all, so "none" always holds
        snapshot=True,
        stdin=True,
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

    def _box(self, sandbox_id: str, op: str) -> _Box:
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
            fs = _FS(workdir)
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
        self._world.boxes[sandbox_id] = _Box(info=info, env=dict(spec.env), fs=fs)
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
            for proc in builtins.list(box.procs.values()):
                if proc.scope is not None:
                    proc.signal = 9
                    proc.scope.cancel()

    async def snapshot(self, sandbox_id: str) -> str:
        """Copy the filesystem; create from it with ``SandboxSpec(snapshot=id)``."""
        box = self._box(sandbox_id, "snapshot")
        snap = "fakesnap-" + uuid.uuid4().hex[:12]
        self._world.snapshots[snap] = copy.deepcopy(box.fs)
        return snap

    # -- files -------------------------------------------------------------------------------

    def _fs_call(self, sandbox_id: str, op: str, func: Callable[[_FS], Any]) -> Any:
        box = self._box(sandbox_id, op)
        try:
            return func(box.fs)
        except (FileNotFound, IsADirectory, InvalidPath) as exc:
            exc.provider, exc.op, exc.sandbox_id = self.name, op, sandbox_id
            raise

    @staticmethod
    def _check(path: str) -> str:
        if not path.startswith("/") or "\x00" in path:
            raise InvalidPath(f"backend paths must be absolute: {path!r}")
        return posixpath.normpath(path)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        """Bytes of a file. Raises ``FileNotFound``, ``IsADirectory``."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        data: bytes = self._fs_call(sandbox_id, "read_file", lambda fs: fs.read(p))
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

        def entries(fs: _FS) -> builtins.list[FileInfo]:
            node = fs.lookup(p)
            if node.kind != "dir":
                raise InvalidPath(f"not a directory: {p}")
            return [fs.info(posixpath.join(p, n), c) for n, c in sorted(node.children.items())]

        result: builtins.list[FileInfo] = self._fs_call(sandbox_id, "list_dir", entries)
        return result

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a tree with ``recursive``. Raises ``FileNotFound``."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        self._fs_call(sandbox_id, "remove", lambda fs: fs.remove(p, recursive=recursive))

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its parents."""
        await anyio.lowlevel.checkpoint()
        p = self._check(path)
        self._fs_call(sandbox_id, "mkdir", lambda fs: fs.mkdir(p))

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
        from ..backend import _untar_into

        await anyio.to_thread.run_sync(_untar_into, buffer.getvalue(), Path(local_dir))

    # -- commands ----------------------------------------------------------------------------

    async def exec_stream(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> AsyncIterator[ExecEvent]:
        """Run a command in the fake shell, streaming its output, then one ``exit`` event.

        Raises ``SandboxNotFound`` and ``CommandTimeout`` (the command and everything it
        started in the background are stopped).
        """
        box = self._box(sandbox_id, "exec")
        argv = argv_of(command)
        if options.user is not None:
            raise self._unsupported("running as another user")
        send, receive = anyio.create_memory_object_stream[ExecEvent | BaseException](64)
        runner = _Runner(self, box, argv, options, send)
        await runner.start()
        try:
            async with receive:
                async for item in receive:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            await runner.stop()

    async def _in_proc(
        self, box: _Box, proc: _Proc, work: Awaitable[int]
    ) -> tuple[int, int | None]:
        """Run ``work`` as process ``proc``: ``kill`` cancels it and sets its signal."""
        try:
            with anyio.CancelScope() as scope:
                proc.scope = scope
                code = await work
            if proc.signal is not None:
                return 128 + proc.signal, proc.signal
            if scope.cancelled_caught:
                return 137, 9
            return code, None
        finally:
            box.procs.pop(proc.pid, None)
            if inspect.iscoroutine(work):
                work.close()

    async def _run_utility(
        self, shell: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
    ) -> int:
        name = _command_name(argv[0])
        if "/" in name:
            node = shell.box.fs.get(shell.abspath(name))
            if node is not None and node.kind == "file":
                return await _u_sh(self, shell, ["sh", *argv], env, io_)
            await io_.stderr(f"sh: {name}: not found\n".encode())
            return 127
        try:
            builtin = _SHELL_BUILTINS.get(name)
            if builtin is not None:
                return await builtin(self, shell, argv, env, io_)
            handler = self._commands.get(name)
            if handler is not None:
                ctx = CommandContext(
                    argv=argv,
                    env=env,
                    cwd=shell.cwd,
                    sandbox_id=shell.box.info.id,
                    _stdin=io_.stdin,
                    _stdout=io_.stdout,
                    _stderr=io_.stderr,
                    _fs=shell.box.fs,
                )
                result = handler(ctx)
                if inspect.isawaitable(result):
                    result = await result
                return 0 if result is None else int(result)
            utility = _UTILITIES.get(name)
            if utility is not None:
                return await utility(self, shell, argv, env, io_)
            await io_.stderr(f"sh: {name}: command not found\n".encode())
            return 127
        except _Usage as exc:
            await io_.stderr(exc.message.encode() + b"\n")
            return exc.code
        except (FileNotFound, IsADirectory, InvalidPath) as exc:
            await io_.stderr(f"{name}: {_describe(exc)}\n".encode())
            return 1

    def _known(self, name: str) -> bool:
        return name in _SHELL_BUILTINS or name in self._commands or name in _UTILITIES


def _command_name(name: str) -> str:
    """``/bin/cat`` and ``/usr/bin/cat`` are ``cat``."""
    for prefix in ("/bin/", "/usr/bin/", "/usr/local/bin/", "/sbin/", "/usr/sbin/"):
        if name.startswith(prefix) and "/" not in name[len(prefix) :]:
            return name[len(prefix) :]
    return name


def _describe(exc: Exception) -> str:
    if isinstance(exc, FileNotFound):
        return str(exc).replace("no such file or directory: ", "") + ": No such file or directory"
    if isinstance(exc, IsADirectory):
        return str(exc).replace("is a directory: ", "") + ": Is a directory"
    return str(exc)


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


def _add_tree(tar: tarfile.TarFile, node: _Node, name: str) -> None:
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


class _Runner:
    """Runs one exec in a task of its own, so the stream holds no cancel scope across yields
    (which lets any task, e.g. the sync twin's portal, iterate it)."""

    def __init__(
        self,
        backend: FakeBackend,
        box: _Box,
        argv: builtins.list[str],
        options: ExecOptions,
        send: MemoryObjectSendStream[ExecEvent | BaseException],
    ) -> None:
        self.backend = backend
        self.box = box
        self.argv = argv
        self.options = options
        self.send = send
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()

    async def start(self) -> None:
        _spawn(self.main)
        await anyio.lowlevel.checkpoint()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()

    async def main(self) -> None:
        try:
            with self.scope:
                async with self.send:
                    try:
                        await self._run()
                    except anyio.BrokenResourceError:
                        pass  # the consumer stopped listening
                    except Exception as exc:
                        with contextlib.suppress(anyio.BrokenResourceError):
                            await self.send.send(exc)
        finally:
            self.done.set()

    async def _run(self) -> None:
        box, options = self.box, self.options

        def writer(kind: Literal["stdout", "stderr"]) -> Writer:
            async def write(data: bytes) -> None:
                for start in range(0, len(data), CHUNK):
                    await self.send.send(
                        ExecEvent(kind=kind, data=bytes(data[start : start + CHUNK]))
                    )
                await anyio.lowlevel.checkpoint()

            return write

        env = {**box.env, **options.env}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("HOME", "/root")
        cwd = posixpath.normpath(options.cwd or box.info.workdir)
        node = box.fs.get(cwd)
        io_ = _IO(_Input(options.stdin or b""), writer("stdout"), writer("stderr"))
        if node is None or node.kind != "dir":
            await io_.stderr(f"sh: cd: can't cd to {cwd}: No such file or directory\n".encode())
            await self.send.send(ExecEvent(kind="exit", exit_code=2))
            return
        proc = box.new_proc()
        shell = _Shell(self.backend, box, proc, env, cwd, [])
        if _command_name(self.argv[0]) == "sh":
            work = _sh_main(shell, self.argv, io_)
        else:
            work = self.backend._run_utility(shell, self.argv, env, io_)
        timed_out = False
        with anyio.move_on_after(options.timeout) as deadline:
            code, signal = await self.backend._in_proc(box, proc, work)
        if deadline.cancelled_caught:
            timed_out = True
        if timed_out:
            await self.send.send(
                CommandTimeout(
                    f"command timed out after {options.timeout} s",
                    timeout=options.timeout,
                    provider=self.backend.name,
                    op="exec",
                    sandbox_id=box.info.id,
                )
            )
            return
        await self.send.send(ExecEvent(kind="exit", exit_code=code, signal=signal))


def _spawn(func: Callable[[], Awaitable[None]]) -> None:
    """Start ``func`` as a task that belongs to no task group of the caller."""
    try:
        import asyncio

        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio  # type: ignore[import-not-found,unused-ignore]

        trio.lowlevel.spawn_system_task(func)
        return
    task: asyncio.Task[None] = loop.create_task(func())  # type: ignore[arg-type]
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


_TASKS: set[Any] = set()


# -- utilities ----------------------------------------------------------------------------------

Utility = Callable[[FakeBackend, _Shell, builtins.list[str], dict[str, str], _IO], Awaitable[int]]


async def _sh_main(shell: _Shell, argv: builtins.list[str], io_: _IO) -> int:
    """``sh -c SCRIPT [NAME ARGS...]`` or ``sh FILE [ARGS...]`` or ``sh`` reading stdin."""
    args = argv[1:]
    while args and args[0] in ("-e", "-u", "-eu", "-x"):
        args = args[1:]
    if args and args[0] == "-c":
        if len(args) < 2:
            raise _Usage("sh: -c requires an argument", 2)
        script = args[1]
        shell.name = args[2] if len(args) > 2 else "sh"
        shell.args = args[3:]
    elif args:
        try:
            script = shell.box.fs.read(shell.abspath(args[0])).decode("utf-8", "replace")
        except (FileNotFound, IsADirectory) as exc:
            await io_.stderr(f"sh: 0: cannot open {args[0]}: {_describe(exc)}\n".encode())
            return 2
        shell.name = args[0]
        shell.args = args[1:]
    else:
        script = io_.stdin.read().decode("utf-8", "replace")
    try:
        node = _shell.parse(script)
    except _shell.ShellSyntaxError as exc:
        await io_.stderr(f"sh: {exc}\n".encode())
        return 2
    return await shell.run_script(node, io_)


async def _u_sh(
    backend: FakeBackend, shell: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    proc = shell.box.new_proc()
    sub = _Shell(backend, shell.box, proc, env, shell.cwd, [])
    code, _ = await backend._in_proc(shell.box, proc, _sh_main(sub, argv, io_))
    return code


async def _b_true(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    await anyio.lowlevel.checkpoint()
    return 0


async def _b_false(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    await anyio.lowlevel.checkpoint()
    return 1


async def _b_exit(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    try:
        code = int(argv[1]) & 0xFF if len(argv) > 1 else s.status
    except ValueError:
        raise _Usage(f"sh: exit: Illegal number: {argv[1]}", 2) from None
    raise _ExitShell(code)


async def _b_cd(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    target = s.abspath(argv[1] if len(argv) > 1 else env.get("HOME", "/"))
    node = s.box.fs.get(target)
    if node is None or node.kind != "dir":
        raise _Usage(f"sh: cd: can't cd to {argv[1] if len(argv) > 1 else target}", 2)
    s.cwd = target
    s.vars["PWD"] = target
    return 0


async def _b_export(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    for arg in argv[1:]:
        name, sep, value = arg.partition("=")
        if sep:
            s.vars[name] = value
    return 0


async def _b_unset(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    for name in argv[1:]:
        s.vars.pop(name, None)
    return 0


async def _b_command(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    if len(argv) >= 3 and argv[1] in ("-v", "-V"):
        found = [n for n in argv[2:] if b._known(n)]
        for n in found:
            await io_.stdout(f"{n if n in _SHELL_BUILTINS else '/usr/bin/' + n}\n".encode())
        return 0 if len(found) == len(argv) - 2 else 1
    if len(argv) >= 2:
        return await b._run_utility(s, argv[1:], env, io_)
    return 0


async def _b_kill(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    args = argv[1:]
    sig = 15
    if args and args[0] == "-s" and len(args) > 1:
        args = [f"-{args[1]}", *args[2:]]
    if args and args[0].startswith("-") and args[0] != "--":
        name = args[0][1:].upper().removeprefix("SIG")
        sig = int(name) if name.isdigit() else _SIGNALS.get(name, -1)
        if sig < 0:
            raise _Usage(f"kill: invalid signal {args[0]}", 2)
        args = args[1:]
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise _Usage("kill: usage: kill [-s sigspec | -signum] pid", 2)
    status = 0
    for target in args:
        try:
            pid = int(target)
        except ValueError:
            raise _Usage(f"kill: illegal pid: {target}", 2) from None
        proc = s.box.procs.get(pid)
        if proc is None:
            await io_.stderr(f"kill: ({pid}) - No such process\n".encode())
            status = 1
            continue
        if sig != 0 and proc.scope is not None:
            proc.signal = sig
            proc.scope.cancel()
    await anyio.lowlevel.checkpoint()
    return status


async def _b_exec(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    if len(argv) < 2:
        return 0
    raise _ExitShell(await b._run_utility(s, argv[1:], env, io_))


async def _b_wait(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    pids = [int(a) for a in argv[1:]] if len(argv) > 1 else builtins.list(s.job_done)
    for pid in pids:
        event = s.job_done.get(pid)
        if event is not None:
            await event.wait()
    return 0


async def _b_read(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    data = io_.stdin.read()
    line, newline, rest = data.partition(b"\n")
    io_.stdin._data = rest
    names = [a for a in argv[1:] if not a.startswith("-")] or ["REPLY"]
    fields = line.decode("utf-8", "replace").split(None, len(names) - 1)
    for i, name in enumerate(names):
        s.vars[name] = fields[i] if i < len(fields) else ""
    return 0 if newline or line else 1


async def _u_echo(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    args = argv[1:]
    newline = True
    escapes = False
    while args and args[0] in ("-n", "-e", "-E", "-ne", "-en"):
        newline = newline and "n" not in args[0]
        escapes = "e" in args[0]
        args = args[1:]
    text = " ".join(args)
    data = _escape_text(text, octal_needs_zero=True)[0] if escapes else text.encode()
    await io_.stdout(data + (b"\n" if newline else b""))
    return 0


async def _u_printf(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    if len(argv) < 2:
        raise _Usage("printf: usage: printf format [arguments]", 2)
    await io_.stdout(_printf(argv[1], argv[2:]))
    return 0


async def _inputs(
    s: _Shell, files: builtins.list[str], io_: _IO
) -> AsyncIterator[tuple[str, Iterator[bytes] | None]]:
    """Each named file's chunks (``-`` or none: stdin); ``None`` after an error was reported."""
    if not files:
        files = ["-"]
    for name in files:
        if name == "-":
            yield name, iter([io_.stdin.read()])
            continue
        try:
            chunks: Iterator[bytes] | None = s.box.fs.chunks(s.abspath(name))
        except (FileNotFound, IsADirectory, InvalidPath) as exc:
            await io_.stderr(f"{name}: {_describe(exc)}\n".encode())
            chunks = None
        yield name, chunks


async def _u_cat(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    status = 0
    async for _name, chunks in _inputs(s, [a for a in argv[1:] if a != "-u"], io_):
        if chunks is None:
            status = 1
            continue
        try:
            for chunk in chunks:
                await io_.stdout(chunk)
        except (IsADirectory, FileNotFound) as exc:
            await io_.stderr(f"cat: {_describe(exc)}\n".encode())
            status = 1
    return status


async def _u_head(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    count, rest = _count_arg(argv[1:], "-c")
    lines, rest = _count_arg(rest, "-n") if count is None else (None, rest)
    if count is None and lines is None:
        lines = 10
    status = 0
    async for _name, chunks in _inputs(s, rest, io_):
        if chunks is None:
            status = 1
            continue
        if count is not None:
            left = count
            for chunk in chunks:
                if left <= 0:
                    break
                await io_.stdout(chunk[:left])
                left -= len(chunk[:left])
        else:
            assert lines is not None
            left = lines
            for chunk in chunks:
                if left <= 0:
                    break
                out = bytearray()
                for line in chunk.splitlines(keepends=True):
                    if left <= 0:
                        break
                    out += line
                    if line.endswith(b"\n"):
                        left -= 1
                await io_.stdout(bytes(out))
    return status


async def _u_tail(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    count, rest = _count_arg(argv[1:], "-c")
    lines, rest = _count_arg(rest, "-n") if count is None else (None, rest)
    status = 0
    async for _name, chunks in _inputs(s, rest, io_):
        if chunks is None:
            status = 1
            continue
        data = b"".join(chunks)
        if count is not None:
            await io_.stdout(data[-count:] if count else b"")
        else:
            keep = 10 if lines is None else lines
            parts = data.splitlines(keepends=True)
            await io_.stdout(b"".join(parts[-keep:]) if keep else b"")
    return status


async def _u_wc(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    flags = "".join(a[1:] for a in argv[1:] if a.startswith("-") and a != "-") or "lwc"
    files = [a for a in argv[1:] if not a.startswith("-") or a == "-"]
    status = 0
    async for name, chunks in _inputs(s, files, io_):
        if chunks is None:
            status = 1
            continue
        n_lines = n_words = n_bytes = 0
        for chunk in chunks:
            n_bytes += len(chunk)
            n_lines += chunk.count(b"\n")
            n_words += len(chunk.split())
        values = [str(v) for f, v in (("l", n_lines), ("w", n_words), ("c", n_bytes)) if f in flags]
        label = "" if name == "-" else f" {name}"
        await io_.stdout((" ".join(values) + label + "\n").encode())
    return status


async def _u_digest(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    algo = "sha256" if argv[0] == "sha256sum" else "md5"
    status = 0
    async for name, chunks in _inputs(
        s, [a for a in argv[1:] if not a.startswith("-") or a == "-"], io_
    ):
        if chunks is None:
            status = 1
            continue
        h = hashlib.new(algo)
        for chunk in chunks:
            h.update(chunk)
            await anyio.lowlevel.checkpoint()
        await io_.stdout(f"{h.hexdigest()}  {name}\n".encode())
    return status


async def _u_pwd(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    await io_.stdout(s.cwd.encode() + b"\n")
    return 0


async def _u_ls(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    flags = "".join(a[1:] for a in argv[1:] if a.startswith("-"))
    targets = [a for a in argv[1:] if not a.startswith("-")] or ["."]
    status = 0
    for target in targets:
        path = s.abspath(target)
        try:
            node = s.box.fs.lookup(path)
        except (FileNotFound, InvalidPath):
            await io_.stderr(f"ls: cannot access '{target}': No such file or directory\n".encode())
            status = 2
            continue
        if node.kind != "dir":
            await io_.stdout(target.encode() + b"\n")
            continue
        if len(targets) > 1:
            await io_.stdout(f"{target}:\n".encode())
        names = sorted(node.children)
        if "a" in flags:
            names = [".", "..", *names]
        for n in names:
            child = node.children.get(n)
            suffix = "/" if "F" in flags and child is not None and child.kind == "dir" else ""
            await io_.stdout(f"{n}{suffix}\n".encode())
    return status


async def _u_mkdir(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    parents = any(a.startswith("-") and "p" in a for a in argv[1:])
    for target in [a for a in argv[1:] if not a.startswith("-")]:
        path = s.abspath(target)
        if not parents:
            if s.box.fs.get(path) is not None:
                raise _Usage(f"mkdir: cannot create directory '{target}': File exists")
            s.box.fs.parent_of(path, create=False)
        s.box.fs.mkdir(path)
    return 0


async def _u_rm(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    flags = "".join(a[1:] for a in argv[1:] if a.startswith("-") and a != "--")
    status = 0
    for target in [a for a in argv[1:] if not a.startswith("-")]:
        path = s.abspath(target)
        node = s.box.fs.get(path)
        if node is None:
            if "f" not in flags:
                await io_.stderr(
                    f"rm: cannot remove '{target}': No such file or directory\n".encode()
                )
                status = 1
            continue
        if node.kind == "dir" and not ({"r", "R"} & set(flags)):
            await io_.stderr(f"rm: cannot remove '{target}': Is a directory\n".encode())
            status = 1
            continue
        s.box.fs.remove(path, recursive=True)
    return status


async def _u_touch(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    for target in [a for a in argv[1:] if not a.startswith("-")]:
        path = s.abspath(target)
        node = s.box.fs.get(path)
        if node is None:
            s.box.fs.write(path, b"")
        else:
            node.mtime = time.time()
    return 0


async def _u_cp_mv(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    names = [a for a in argv[1:] if not a.startswith("-")]
    if len(names) < 2:
        raise _Usage(f"{argv[0]}: missing file operand", 1)
    *sources, dest = names
    fs = s.box.fs
    dest_path = s.abspath(dest)
    dest_node = fs.get(dest_path)
    for src in sources:
        src_path = s.abspath(src)
        node = fs.lookup(src_path)
        target = (
            posixpath.join(dest_path, posixpath.basename(src_path))
            if dest_node is not None and dest_node.kind == "dir"
            else dest_path
        )
        parent, name = fs.parent_of(target, create=False)
        if argv[0] == "mv":
            fs.remove(src_path, recursive=True)
            parent.children[name] = node
        else:
            if node.kind == "dir" and not any(
                "r" in a.lower() for a in argv[1:] if a.startswith("-")
            ):
                raise _Usage(f"cp: -r not specified; omitting directory '{src}'")
            parent.children[name] = copy.deepcopy(node)
    return 0


async def _u_env(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    args = argv[1:]
    extra: dict[str, str] = {}
    while args and "=" in args[0]:
        k, _, v = args[0].partition("=")
        extra[k] = v
        args = args[1:]
    merged = {**env, **extra}
    if args:
        return await b._run_utility(s, args, merged, io_)
    await io_.stdout("".join(f"{k}={v}\n" for k, v in sorted(merged.items())).encode())
    return 0


async def _u_printenv(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    if len(argv) == 1:
        return await _u_env(b, s, ["env"], env, io_)
    status = 0
    for name in argv[1:]:
        if name in env:
            await io_.stdout(env[name].encode() + b"\n")
        else:
            status = 1
    return status


async def _u_test(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    args = argv[1:]
    if argv[0] == "[":
        if not args or args[-1] != "]":
            raise _Usage("[: missing ]", 2)
        args = args[:-1]
    return 0 if _test(args, s.box.fs, s.cwd) else 1


async def _u_sleep(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    total = 0.0
    for arg in argv[1:]:
        try:
            total += float("inf") if arg in ("inf", "infinity") else float(arg.rstrip("s"))
        except ValueError:
            raise _Usage(f"sleep: invalid time interval '{arg}'") from None
    await anyio.sleep(total)
    return 0


async def _u_basename(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    if len(argv) < 2:
        raise _Usage("basename: missing operand")
    name = posixpath.basename(argv[1].rstrip("/")) or "/"
    if len(argv) > 2 and name.endswith(argv[2]) and name != argv[2]:
        name = name[: -len(argv[2])]
    await io_.stdout(name.encode() + b"\n")
    return 0


async def _u_dirname(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    if len(argv) < 2:
        raise _Usage("dirname: missing operand")
    await io_.stdout((posixpath.dirname(argv[1].rstrip("/")) or ".").encode() + b"\n")
    return 0


async def _u_seq(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    try:
        nums = [int(a) for a in argv[1:]]
    except ValueError:
        raise _Usage("seq: invalid integer argument") from None
    if len(nums) == 1:
        first, step, last = 1, 1, nums[0]
    elif len(nums) == 2:
        first, step, last = nums[0], 1, nums[1]
    elif len(nums) == 3:
        first, step, last = nums
    else:
        raise _Usage("seq: missing operand")
    await io_.stdout(
        "".join(f"{i}\n" for i in range(first, last + (1 if step > 0 else -1), step)).encode()
    )
    return 0


async def _u_no_network(
    b: FakeBackend, s: _Shell, argv: builtins.list[str], env: dict[str, str], io_: _IO
) -> int:
    await io_.stderr(f"{argv[0]}: network is unreachable (FakeBackend has no network)\n".encode())
    return 1


_SHELL_BUILTINS: dict[str, Utility] = {
    "exit": _b_exit,
    "cd": _b_cd,
    "export": _b_export,
    "unset": _b_unset,
    "command": _b_command,
    "kill": _b_kill,
    "wait": _b_wait,
    "exec": _b_exec,
    "read": _b_read,
    ":": _b_true,
    "true": _b_true,
    "false": _b_false,
}

_UTILITIES: dict[str, Utility] = {
    "sh": _u_sh,
    "echo": _u_echo,
    "printf": _u_printf,
    "cat": _u_cat,
    "head": _u_head,
    "tail": _u_tail,
    "wc": _u_wc,
    "sha256sum": _u_digest,
    "md5sum": _u_digest,
    "pwd": _u_pwd,
    "ls": _u_ls,
    "mkdir": _u_mkdir,
    "rm": _u_rm,
    "touch": _u_touch,
    "cp": _u_cp_mv,
    "mv": _u_cp_mv,
    "env": _u_env,
    "printenv": _u_printenv,
    "test": _u_test,
    "[": _u_test,
    "sleep": _u_sleep,
    "basename": _u_basename,
    "dirname": _u_dirname,
    "seq": _u_seq,
    "nc": _u_no_network,
    "wget": _u_no_network,
    "curl": _u_no_network,
}
