"""The interpreter of :class:`~agent_sandbox.testing.FakeBackend`: shell semantics and utilities.

Runs the trees of :mod:`agent_sandbox.testing._shell` against a sandbox's in-memory filesystem.
A "process" is a cancel scope: ``kill`` cancels it, a timeout cancels the whole exec, and
background jobs live in the task group of the shell that started them, so they die with it.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import fnmatch
import hashlib
import inspect
import operator
import posixpath
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import anyio
import anyio.abc
import anyio.lowlevel

from ..errors import FileNotFound, InvalidPath, IsADirectory
from ..models import SandboxInfo
from . import _shell
from ._fs import FS, Node

# -- processes and sandboxes ----------------------------------------------------------------


@dataclass
class Proc:
    """A fake process: what ``kill`` reaches."""

    pid: int
    scope: anyio.CancelScope | None = None
    signal: int | None = None


@dataclass
class Box:
    """One sandbox: its description, environment, filesystem and processes."""

    info: SandboxInfo
    env: dict[str, str]
    fs: FS
    procs: dict[int, Proc] = field(default_factory=dict)
    next_pid: int = 100

    def new_proc(self) -> Proc:
        self.next_pid += 1
        proc = Proc(self.next_pid)
        self.procs[proc.pid] = proc
        return proc


async def run_as_proc(box: Box, proc: Proc, work: Awaitable[int]) -> tuple[int, int | None]:
    """Run ``work`` as process ``proc``; returns (exit status, killing signal or ``None``)."""
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


def kill_all(box: Box, signal: int = 9) -> None:
    """Kill every process of ``box``."""
    for proc in builtins.list(box.procs.values()):
        if proc.scope is not None:
            proc.signal = signal
            proc.scope.cancel()


# -- what a command sees --------------------------------------------------------------------


class Input:
    """A command's stdin: bytes consumed by whoever reads first (like a pipe)."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def read(self) -> bytes:
        """All that is left."""
        data, self.data = self.data, b""
        return data

    def readline(self) -> bytes:
        """One line with its newline (or what is left)."""
        line, sep, rest = self.data.partition(b"\n")
        self.data = rest
        return line + sep


Writer = Callable[[bytes], Awaitable[None]]


async def discard(data: bytes) -> None:
    """A writer that drops everything."""
    await anyio.lowlevel.checkpoint()


@dataclass
class IO:
    """A command's three standard streams."""

    stdin: Input
    stdout: Writer
    stderr: Writer


@dataclass
class CommandContext:
    """What a command scripted with :meth:`FakeBackend.register_command` gets.

    Attributes:
        argv: the command and its arguments, expanded.
        env: the (exported) environment of the command.
        cwd: the absolute working directory.
        sandbox_id: the sandbox it runs in.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str
    sandbox_id: str
    _io: IO
    _fs: FS

    def read_stdin(self) -> bytes:
        """All of stdin (later reads get nothing)."""
        return self._io.stdin.read()

    async def write_stdout(self, data: bytes | str) -> None:
        """Write to stdout."""
        await self._io.stdout(data.encode() if isinstance(data, str) else data)

    async def write_stderr(self, data: bytes | str) -> None:
        """Write to stderr."""
        await self._io.stderr(data.encode() if isinstance(data, str) else data)

    def path(self, path: str) -> str:
        """``path`` made absolute against ``cwd``."""
        return posixpath.normpath(posixpath.join(self.cwd, path))

    def read_file(self, path: str) -> bytes:
        """A file of the sandbox. Raises ``FileNotFound``, ``IsADirectory``."""
        return self._fs.read(self.path(path))

    def write_file(self, path: str, data: bytes | str) -> None:
        """Create or replace a file of the sandbox (parents created)."""
        payload = data.encode() if isinstance(data, str) else data
        self._fs.write(self.path(path), payload, create_parents=True)


Handler = Callable[[CommandContext], "int | Awaitable[int | None] | None"]


class ExitShell(Exception):
    """``exit N``: leaves the current shell (or subshell)."""

    def __init__(self, code: int) -> None:
        self.code = code


class _Return(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Loop(Exception):
    def __init__(self, kind: str, levels: int) -> None:
        self.kind = kind
        self.levels = levels


class Usage(Exception):
    """A utility was called wrongly: ``message`` goes to stderr, ``code`` is the status."""

    def __init__(self, message: str, code: int = 1) -> None:
        self.message = message
        self.code = code


SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15}


def command_name(name: str) -> str:
    """``/bin/cat`` and ``/usr/bin/cat`` are ``cat``."""
    for prefix in ("/bin/", "/usr/bin/", "/usr/local/bin/", "/sbin/", "/usr/sbin/"):
        if name.startswith(prefix) and "/" not in name[len(prefix) :]:
            return name[len(prefix) :]
    return name


def describe(exc: Exception) -> str:
    """``path: No such file or directory`` and the like, from our typed errors."""
    if isinstance(exc, FileNotFound):
        return str(exc).replace("no such file or directory: ", "") + ": No such file or directory"
    if isinstance(exc, IsADirectory):
        return str(exc).replace("is a directory: ", "") + ": Is a directory"
    return str(exc)


def shell_quote(value: str) -> str:
    """``value`` single-quoted for sh."""
    return "'" + value.replace("'", "'\\''") + "'"


# -- arithmetic -----------------------------------------------------------------------------

_BINARY: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_COMPARE: dict[type, Callable[[int, int], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _c_div(a: int, b: int, mod: bool) -> int:
    if b == 0:
        raise Usage("sh: arithmetic: division by zero", 2)
    q = abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1)
    return a - q * b if mod else q


def _arith_eval(node: ast.AST) -> int:
    if isinstance(node, ast.Expression):
        return _arith_eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return int(node.value)
    if isinstance(node, ast.UnaryOp):
        value = _arith_eval(node.operand)
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.UAdd):
            return value
        if isinstance(node.op, ast.Not):
            return int(not value)
        if isinstance(node.op, ast.Invert):
            return ~value
    if isinstance(node, ast.BinOp):
        left, right = _arith_eval(node.left), _arith_eval(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv)):
            return _c_div(left, right, mod=False)
        if isinstance(node.op, ast.Mod):
            return _c_div(left, right, mod=True)
        func = _BINARY.get(type(node.op))
        if func is not None:
            return func(left, right)
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        test = _COMPARE.get(type(node.ops[0]))
        if test is not None:
            return int(test(_arith_eval(node.left), _arith_eval(node.comparators[0])))
    if isinstance(node, ast.BoolOp):
        values = [_arith_eval(v) for v in node.values]
        return int(all(values) if isinstance(node.op, ast.And) else any(values))
    raise Usage("sh: arithmetic: unsupported expression", 2)


def arithmetic(expr: str, lookup: Callable[[str], str | None]) -> int:
    """Evaluate a ``$((...))`` expression (integers, variables, C operators)."""
    text = re.sub(
        r"[A-Za-z_][A-Za-z0-9_]*",
        lambda m: str(int((lookup(m.group()) or "0").strip() or "0")),
        expr,
    )
    text = text.replace("&&", " and ").replace("||", " or ").replace("/", "//")
    text = re.sub(r"!(?!=)", " not ", text)
    try:
        return _arith_eval(ast.parse(text.strip() or "0", mode="eval"))
    except (SyntaxError, ValueError):
        raise Usage(f"sh: arithmetic syntax error: {expr}", 2) from None


# -- parameter expansion ----------------------------------------------------------------------

_SIMPLE_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9$?!#@*-]")
_OPS = (":-", ":=", ":+", ":?", "%%", "##", "-", "=", "+", "?", "%", "#")


def _strip(value: str, pattern: str, op: str) -> str:
    sizes = range(len(value) + 1)
    if op in ("#", "##"):
        order = sizes if op == "#" else reversed(sizes)
        for k in order:
            if fnmatch.fnmatchcase(value[:k], pattern):
                return value[k:]
    else:
        order = reversed(sizes) if op == "%" else sizes
        for k in order:
            if fnmatch.fnmatchcase(value[k:], pattern):
                return value[:k]
    return value


# -- the shell ------------------------------------------------------------------------------


class Shell:
    """The state of one shell process: variables, exported names, functions, cwd, jobs."""

    def __init__(
        self,
        box: Box,
        proc: Proc,
        commands: dict[str, Handler],
        env: dict[str, str],
        cwd: str,
        args: builtins.list[str],
        name: str = "sh",
    ) -> None:
        self.box = box
        self.proc = proc
        self.commands = commands
        self.vars = dict(env)
        self.exported = set(env)
        self.functions: dict[str, _shell.ListNode] = {}
        self.traps: dict[str, str] = {}
        self.cwd = cwd
        self.args = args
        self.name = name
        self.status = 0
        self.subst_status: int | None = None
        self.last_bg: int | None = None
        self.jobs: anyio.abc.TaskGroup | None = None
        self.job_done: dict[int, anyio.Event] = {}
        self.io_override: IO | None = None

    def child(self, proc: Proc) -> Shell:
        """A subshell: a copy of this shell's state."""
        sub = Shell(self.box, proc, self.commands, {}, self.cwd, list(self.args), self.name)
        sub.vars = dict(self.vars)
        sub.exported = set(self.exported)
        sub.functions = dict(self.functions)
        sub.status = self.status
        sub.jobs = self.jobs
        sub.io_override = self.io_override
        return sub

    def env(self) -> dict[str, str]:
        """The exported variables."""
        return {k: v for k, v in self.vars.items() if k in self.exported}

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
        if name == "-":
            return ""
        if name.isdigit():
            index = int(name)
            if index == 0:
                return self.name
            return self.args[index - 1] if index <= len(self.args) else None
        return self.vars.get(name)

    def abspath(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.cwd, path)) if path else self.cwd

    # -- expansion -------------------------------------------------------------------------

    def expand_params(self, text: str) -> str:
        """``$NAME``, ``${NAME}`` and ``${NAME<op>word}`` (nested) in ``text``."""
        out: list[str] = []
        i = 0
        while i < len(text):
            c = text[i]
            if c != "$" or i + 1 >= len(text):
                out.append(c)
                i += 1
                continue
            if text[i + 1] == "{":
                depth, j = 0, i + 1
                while j < len(text):
                    if text[j] == "{":
                        depth += 1
                    elif text[j] == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                if j >= len(text):
                    raise Usage(f"sh: bad substitution: {text[i:]}", 2)
                out.append(self._braced(text[i + 2 : j]))
                i = j + 1
                continue
            m = _SIMPLE_PARAM.match(text, i + 1)
            if m is None:
                out.append(c)
                i += 1
                continue
            out.append(self.lookup(m.group()) or "")
            i = m.end()
        return "".join(out)

    def _braced(self, inner: str) -> str:
        """The value of ``${inner}``."""
        if inner.startswith("#") and len(inner) > 1:
            return str(len(self.lookup(inner[1:]) or ""))
        name_m = re.match(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[$?!#@*-]", inner)
        if name_m is None:
            raise Usage(f"sh: bad substitution: ${{{inner}}}", 2)
        name, rest = name_m.group(), inner[name_m.end() :]
        value = self.lookup(name)
        if not rest:
            return value or ""
        op = next((o for o in _OPS if rest.startswith(o)), None)
        if op is None:
            raise Usage(f"sh: bad substitution: ${{{inner}}}", 2)
        word = self.expand_params(rest[len(op) :])
        unset = value is None or (op.startswith(":") and value == "")
        if op in (":-", "-"):
            return word if unset else (value or "")
        if op in (":=", "="):
            if unset:
                self.vars[name] = word
                return word
            return value or ""
        if op in (":+", "+"):
            return "" if unset else word
        if op in (":?", "?"):
            if unset:
                raise Usage(f"sh: {name}: {word or 'parameter not set'}", 2)
            return value or ""
        return _strip(value or "", word, op)

    async def substitute(self, src: str, io_: IO) -> str:
        """The output of ``$(src)``, trailing newlines removed."""
        out = bytearray()

        async def capture(data: bytes) -> None:
            out.extend(data)
            await anyio.lowlevel.checkpoint()

        sub = self.child(self.proc)
        sub.io_override = None
        try:
            status = await sub.run_list(_shell.parse(src), IO(io_.stdin, capture, io_.stderr))
        except ExitShell as exc:
            status = exc.code
        except _shell.ShellSyntaxError as exc:
            await io_.stderr(f"sh: {exc}\n".encode())
            status = 2
        self.subst_status = status
        return out.decode("utf-8", "replace").rstrip("\n")

    async def expand(self, word: _shell.Word, io_: IO, *, split: bool = True) -> builtins.list[str]:
        """The fields ``word`` expands to (one when ``split`` is false)."""
        if word.segments in ([("bare", "$@")], [("dq", "$@")]):
            return list(self.args)
        fields: list[str] = []
        cur = ""
        live = False
        pattern = False
        ifs = self.vars.get("IFS", " \t\n")
        for kind, text in word.segments:
            if kind == "lit":
                cur += text
                live = True
                continue
            if kind == "dq":
                cur += self.expand_params(text)
                live = True
                continue
            if kind == "dqcmd":
                cur += await self.substitute(text, io_)
                live = True
                continue
            if kind == "arith":
                cur += str(arithmetic(self.expand_params(text), self.lookup))
                live = True
                continue
            if kind == "bare":
                value = self.expand_params(text)
                if any(ch in text for ch in "*?["):
                    pattern = True
                if "$" not in text:
                    cur += value
                    live = live or bool(value)
                    continue
            else:  # cmd
                value = await self.substitute(text, io_)
            if not split or not ifs:
                cur += value
                live = live or bool(value)
                continue
            for index, piece in enumerate(re.split(f"[{re.escape(ifs)}]+", value)):
                if index > 0:
                    if live:
                        fields.append(cur)
                    cur, live = "", False
                if piece:
                    cur += piece
                    live = True
        if live:
            fields.append(cur)
        if not split:
            return ["".join(fields)]
        if pattern:
            globbed: list[str] = []
            for f in fields:
                globbed.extend(self.glob(f) or [f])
            return globbed
        return fields

    async def expand_words(self, words: builtins.list[_shell.Word], io_: IO) -> builtins.list[str]:
        out: list[str] = []
        for w in words:
            out.extend(await self.expand(w, io_))
        return out

    async def expand_one(self, word: _shell.Word, io_: IO) -> str:
        return (await self.expand(word, io_, split=False))[0]

    def glob(self, pattern: str) -> builtins.list[str]:
        """Paths matching ``pattern`` (``*``, ``?``, ``[...]``), sorted; empty when none."""
        if not any(ch in pattern for ch in "*?["):
            return []
        absolute = pattern.startswith("/")
        parts = [p for p in pattern.split("/") if p]
        found: list[tuple[str, Node]] = [("/" if absolute else "", self.box.fs.root)]
        if not absolute:
            start = self.box.fs.get(self.cwd)
            if start is None:
                return []
            found = [("", start)]
        for part in parts:
            nxt: list[tuple[str, Node]] = []
            for shown, node in found:
                if node.kind != "dir":
                    continue
                if part in (".", ".."):
                    nxt.append((posixpath.join(shown, part), node))  # resolved later
                    continue
                if any(ch in part for ch in "*?["):
                    for child_name in sorted(node.children):
                        if child_name.startswith(".") and not part.startswith("."):
                            continue
                        if fnmatch.fnmatchcase(child_name, part):
                            nxt.append(
                                (posixpath.join(shown, child_name), node.children[child_name])
                            )
                elif part in node.children:
                    nxt.append((posixpath.join(shown, part), node.children[part]))
            found = nxt
        return sorted(shown for shown, _ in found)

    # -- running -------------------------------------------------------------------------

    async def run_script(self, node: _shell.ListNode, io_: IO) -> int:
        """Run a whole script as this shell's body (jobs, ``exit``, the EXIT trap)."""
        try:
            async with anyio.create_task_group() as jobs:
                self.jobs = jobs
                try:
                    status = await self.run_list(node, io_)
                except ExitShell as exc:
                    status = exc.code
                except _Return as ret:
                    status = ret.code
                except _Loop:
                    status = self.status
                status = await self.run_exit_trap(status, io_)
                jobs.cancel_scope.cancel()  # background jobs end with their shell
        finally:
            self.jobs = None
        return status

    async def run_exit_trap(self, status: int, io_: IO) -> int:
        action = self.traps.pop("EXIT", None)
        if not action:
            return status
        self.status = status
        try:
            await self.run_list(_shell.parse(action), self.io_override or io_)
        except ExitShell as exc:
            return exc.code
        except _shell.ShellSyntaxError:
            pass
        return status

    async def run_list(self, node: _shell.ListNode, io_: IO) -> int:
        for and_or, background in node.items:
            current = self.io_override or io_
            if background:
                await self.start_job(and_or, current)
                self.status = 0
            else:
                self.status = await self.run_and_or(and_or, current)
        return self.status

    async def start_job(self, and_or: _shell.AndOr, io_: IO) -> None:
        proc = self.box.new_proc()
        sub = self.child(proc)
        done = anyio.Event()
        self.job_done[proc.pid] = done
        self.last_bg = proc.pid

        async def job() -> None:
            try:
                script = _shell.ListNode([(and_or, False)])
                await run_as_proc(self.box, proc, sub.run_script(script, io_))
            finally:
                done.set()

        if self.jobs is None:
            raise Usage("sh: background jobs need a running shell", 2)
        self.jobs.start_soon(job)
        await anyio.lowlevel.checkpoint()

    async def run_and_or(self, node: _shell.AndOr, io_: IO) -> int:
        status = await self.run_pipeline(node.first, io_)
        for op, pipeline in node.rest:
            self.status = status
            if (op == "&&" and status == 0) or (op == "||" and status != 0):
                status = await self.run_pipeline(pipeline, io_)
        return status

    async def run_pipeline(self, node: _shell.Pipeline, io_: IO) -> int:
        stdin = io_.stdin
        status = 0
        for index, command in enumerate(node.commands):
            if index == len(node.commands) - 1:
                status = await self.run_command(command, IO(stdin, io_.stdout, io_.stderr))
            else:
                captured = bytearray()

                async def capture(data: bytes, sink: bytearray = captured) -> None:
                    sink.extend(data)
                    await anyio.lowlevel.checkpoint()

                # Each side of a pipe is a subshell: state changes do not leak out.
                sub = self.child(self.proc)
                with contextlib.suppress(ExitShell):
                    await sub.run_command(command, IO(stdin, capture, io_.stderr))
                stdin = Input(bytes(captured))
        if node.negate:
            status = 0 if status else 1
        return status

    async def run_command(self, node: _shell.Command, io_: IO) -> int:
        try:
            io_ = await self.redirect(node.redirs, io_)
        except (FileNotFound, IsADirectory, InvalidPath) as exc:
            await io_.stderr(f"sh: {describe(exc)}\n".encode())
            return 1
        except Usage as exc:
            await io_.stderr(exc.message.encode() + b"\n")
            return exc.code
        if isinstance(node, _shell.Simple):
            return await self.run_simple(node, io_)
        kind = node.kind
        if kind == "group":
            return await self.run_list(node.parts[0], io_)
        if kind == "subshell":
            sub = self.child(self.proc)
            try:
                return await sub.run_list(node.parts[0], io_)
            except ExitShell as exc:
                return exc.code
        if kind == "function":
            self.functions[node.name] = node.parts[0]
            return 0
        if kind == "if":
            parts = node.parts
            for i in range(0, len(parts) - 1, 2):
                if await self.run_list(parts[i], io_) == 0:
                    return await self.run_list(parts[i + 1], io_)
            if len(parts) % 2 == 1:
                return await self.run_list(parts[-1], io_)
            return 0
        if kind == "case":
            assert node.items is not None
            subject = await self.expand_one(node.items[0], io_)
            for patterns, body in zip(node.patterns, node.parts, strict=True):
                for p in patterns:
                    if fnmatch.fnmatchcase(subject, await self.expand_one(p, io_)):
                        return await self.run_list(body, io_)
            return 0
        if kind in ("while", "until"):
            status = 0
            while True:
                try:
                    cond = await self.run_list(node.parts[0], io_)
                    if (cond == 0) != (kind == "while"):
                        return status
                    status = await self.run_list(node.parts[1], io_)
                except _Loop as loop:
                    if loop.levels > 1:
                        raise _Loop(loop.kind, loop.levels - 1) from None
                    if loop.kind == "break":
                        return 0
                await anyio.lowlevel.checkpoint()
        if kind == "for":
            if node.items is None:
                items = list(self.args)
            else:
                items = await self.expand_words(node.items, io_)
            status = 0
            for item in items:
                self.vars[node.name] = item
                try:
                    status = await self.run_list(node.parts[0], io_)
                except _Loop as loop:
                    if loop.levels > 1:
                        raise _Loop(loop.kind, loop.levels - 1) from None
                    if loop.kind == "break":
                        return 0
            return status
        raise AssertionError(kind)

    async def redirect(self, redirs: builtins.list[_shell.Redir], io_: IO) -> IO:
        stdin, out, err = io_.stdin, io_.stdout, io_.stderr
        for r in redirs:
            target = await self.expand_one(r.target, io_)
            if r.op == ">&":
                if target not in ("1", "2"):
                    raise Usage(f"sh: {target}: bad file descriptor", 2)
                writer = out if target == "1" else err
                if r.fd == 1:
                    out = writer
                elif r.fd == 2:
                    err = writer
                continue
            path = self.abspath(target)
            fs = self.box.fs
            if r.op == "<":
                node = fs.lookup(path)
                if node.kind == "dir":
                    raise IsADirectory(f"is a directory: {target}")
                if r.fd == 0:
                    stdin = Input(bytes(node.data) if node.kind == "file" else b"")
                continue
            fs.write(path, b"", append=r.op == ">>")

            async def to_file(data: bytes, path: str = path, fs: FS = fs) -> None:
                fs.write(path, data, append=True)
                await anyio.lowlevel.checkpoint()

            if r.fd == 1:
                out = to_file
            elif r.fd == 2:
                err = to_file
        return IO(stdin, out, err)

    async def run_simple(self, node: _shell.Simple, io_: IO) -> int:
        self.subst_status = None
        argv = await self.expand_words(node.words, io_)
        assigned = {name: await self.expand_one(value, io_) for name, value in node.assigns}
        if not argv:
            self.vars.update(assigned)
            if node.redirs and not node.assigns:
                return 0
            return self.subst_status or 0
        if argv[0] == "exec" and len(argv) == 1:
            self.io_override = io_  # `exec >file 2>&1`: the redirections stay
            return 0
        function = self.functions.get(argv[0])
        if function is not None:
            saved = self.args
            self.args = argv[1:]
            try:
                return await self.run_list(function, io_)
            except _Return as ret:
                return ret.code
            finally:
                self.args = saved
        return await self.run_utility(argv, {**self.env(), **assigned}, io_, assigned)

    async def run_utility(
        self,
        argv: builtins.list[str],
        env: dict[str, str],
        io_: IO,
        assigned: dict[str, str] | None = None,
    ) -> int:
        """Run a builtin, a registered command or a utility (exit 127 when none is known)."""
        name = command_name(argv[0])
        try:
            builtin = SHELL_BUILTINS.get(name)
            if builtin is not None:
                return await builtin(self, argv, env, io_)
            handler = self.commands.get(name)
            if handler is not None:
                ctx = CommandContext(argv, env, self.cwd, self.box.info.id, io_, self.box.fs)
                result = handler(ctx)
                if inspect.isawaitable(result):
                    result = await result
                return 0 if result is None else int(result)
            utility = UTILITIES.get(name)
            if utility is not None:
                return await utility(self, argv, env, io_)
            if "/" in name:
                node = self.box.fs.get(self.abspath(name))
                if node is not None and node.kind == "file":
                    return await _u_sh(self, ["sh", *argv], env, io_)
                await io_.stderr(f"sh: {name}: not found\n".encode())
                return 127
            await io_.stderr(f"sh: {name}: command not found\n".encode())
            return 127
        except Usage as exc:
            await io_.stderr(exc.message.encode() + b"\n")
            return exc.code
        except (FileNotFound, IsADirectory, InvalidPath) as exc:
            await io_.stderr(f"{name}: {describe(exc)}\n".encode())
            return 1

    def knows(self, name: str) -> bool:
        return (
            name in SHELL_BUILTINS
            or name in self.commands
            or name in UTILITIES
            or name in self.functions
        )


async def sh_main(shell: Shell, argv: builtins.list[str], io_: IO) -> int:
    """``sh -c SCRIPT [NAME ARGS...]``, ``sh FILE [ARGS...]`` or ``sh`` reading stdin."""
    args = argv[1:]
    while args and re.fullmatch(r"[-+][euxvfn]+", args[0]):
        args = args[1:]
    if args and args[0] == "--":
        args = args[1:]
    if args and args[0] == "-c":
        if len(args) < 2:
            raise Usage("sh: -c requires an argument", 2)
        script = args[1]
        shell.name = args[2] if len(args) > 2 else "sh"
        shell.args = args[3:]
    elif args:
        try:
            script = shell.box.fs.read(shell.abspath(args[0])).decode("utf-8", "replace")
        except (FileNotFound, IsADirectory) as exc:
            await io_.stderr(f"sh: 0: cannot open {args[0]}: {describe(exc)}\n".encode())
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


# -- helpers of the utilities -------------------------------------------------------------------


def escape_text(text: str, *, octal_needs_zero: bool) -> tuple[bytes, bool]:
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


def printf_format(fmt: str, args: builtins.list[str]) -> bytes:
    """What ``printf FORMAT ARGS...`` prints (the format is reused while arguments remain)."""
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
                piece, stop = escape_text(fmt[i : i + 2], octal_needs_zero=False)
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
                    piece, stop = escape_text(arg, octal_needs_zero=True)
                    out += piece
                    if stop:
                        return bytes(out)
                elif conv in "dixXo":
                    try:
                        value = int(arg or "0", 0) if arg[:2].lower() == "0x" else int(arg or "0")
                    except ValueError:
                        raise Usage(f"printf: {arg}: invalid number") from None
                    out += ("%" + spec + conv.replace("i", "d")).__mod__(value).encode()
                elif conv in "feEgG":
                    out += ("%" + spec + conv).__mod__(float(arg or "0")).encode()
                elif conv == "c":
                    out += arg[:1].encode()
                else:
                    raise Usage(f"printf: %{conv}: invalid directive")
                continue
            out += c.encode()
            i += 1
        args = args[consumed:]
        if not args or consumed == 0:
            return bytes(out)


def test_expression(args: builtins.list[str], fs: FS, cwd: str) -> bool:
    """The truth of a ``test``/``[`` expression."""
    if args and args[0] == "!":
        return not test_expression(args[1:], fs, cwd)
    if not args:
        return False
    if "-o" in args[1:-1]:
        k = args.index("-o", 1)
        return test_expression(args[:k], fs, cwd) or test_expression(args[k + 1 :], fs, cwd)
    if "-a" in args[1:-1]:
        k = args.index("-a", 1)
        return test_expression(args[:k], fs, cwd) and test_expression(args[k + 1 :], fs, cwd)
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
            "-c": lambda: node is not None and node.kind in ("null", "zero"),
            "-s": lambda: node is not None and len(node.data) > 0,
            "-r": lambda: node is not None,
            "-w": lambda: node is not None,
            "-x": lambda: node is not None and bool(node.mode & 0o111),
            "-L": lambda: False,
            "-h": lambda: False,
            "-p": lambda: False,
            "-S": lambda: False,
            "-t": lambda: False,
        }
        if op not in checks:
            raise Usage(f"test: {op}: unary operator expected", 2)
        return checks[op]()
    if len(args) == 3:
        left, op, right = args
        if op in ("=", "=="):
            return left == right
        if op == "!=":
            return left != right
        numeric = {
            "-eq": operator.eq,
            "-ne": operator.ne,
            "-lt": operator.lt,
            "-le": operator.le,
            "-gt": operator.gt,
            "-ge": operator.ge,
        }
        if op in numeric:
            try:
                return bool(numeric[op](int(left), int(right)))
            except ValueError:
                raise Usage(f"test: integer expression expected: {left} {right}", 2) from None
    raise Usage("test: too many arguments", 2)


def count_arg(argv: builtins.list[str], flag: str) -> tuple[int | None, builtins.list[str]]:
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


def split_flags(
    argv: builtins.list[str], with_value: str = ""
) -> tuple[set[str], dict[str, builtins.list[str]], builtins.list[str]]:
    """Short options (``-abc``, ``--long``, ``--long=v``), their values, and the operands.

    Letters in ``with_value`` take the next argument (or the rest of the cluster).
    """
    flags: set[str] = set()
    values: dict[str, list[str]] = {}
    operands: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            operands.extend(argv[i:])
            break
        if a.startswith("--"):
            name, sep, value = a[2:].partition("=")
            flags.add("--" + name)
            if sep:
                values.setdefault("--" + name, []).append(value)
            continue
        if a.startswith("-") and len(a) > 1:
            for k, letter in enumerate(a[1:]):
                flags.add(letter)
                if letter in with_value:
                    rest = a[k + 2 :]
                    if rest:
                        values.setdefault(letter, []).append(rest)
                    elif i < len(argv):
                        values.setdefault(letter, []).append(argv[i])
                        i += 1
                    break
            continue
        operands.append(a)
    return flags, values, operands


# -- builtins (they act on the shell itself) ---------------------------------------------------

Utility = Callable[[Shell, builtins.list[str], dict[str, str], IO], Awaitable[int]]


async def _b_true(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    await anyio.lowlevel.checkpoint()
    return 0


async def _b_false(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    await anyio.lowlevel.checkpoint()
    return 1


async def _b_exit(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    try:
        code = int(argv[1]) & 0xFF if len(argv) > 1 else s.status
    except ValueError:
        raise Usage(f"sh: exit: Illegal number: {argv[1]}", 2) from None
    raise ExitShell(code)


async def _b_return(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    raise _Return(int(argv[1]) & 0xFF if len(argv) > 1 else s.status)


async def _b_break(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    raise _Loop(argv[0], int(argv[1]) if len(argv) > 1 else 1)


async def _b_cd(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = [a for a in argv[1:] if a not in ("-L", "-P", "--")]
    if args == ["-"]:
        args = [s.vars.get("OLDPWD", s.cwd)]
    target = s.abspath(args[0] if args else env.get("HOME", "/"))
    node = s.box.fs.get(target)
    if node is None or node.kind != "dir":
        raise Usage(f"sh: cd: can't cd to {args[0] if args else target}", 2)
    s.vars["OLDPWD"] = s.cwd
    s.cwd = target
    s.vars["PWD"] = target
    return 0


async def _b_export(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    names = [a for a in argv[1:] if a != "-p"]
    if not names:
        lines = "".join(f"export {k}={shell_quote(v)}\n" for k, v in sorted(s.env().items()))
        await io_.stdout(lines.encode())
        return 0
    for arg in names:
        name, sep, value = arg.partition("=")
        if sep:
            s.vars[name] = value
        s.exported.add(name)
    return 0


async def _b_local(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    for arg in argv[1:]:
        name, sep, value = arg.partition("=")
        s.vars[name] = value if sep else s.vars.get(name, "")
    return 0


async def _b_unset(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    for name in argv[1:]:
        if name in ("-v", "-f"):
            continue
        s.vars.pop(name, None)
        s.exported.discard(name)
        if "-f" in argv:
            s.functions.pop(name, None)
    return 0


async def _b_set(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = argv[1:]
    if not args:
        text = "".join(f"{k}={shell_quote(v)}\n" for k, v in sorted(s.vars.items()))
        await io_.stdout(text.encode())
        return 0
    while args and re.fullmatch(r"[-+][a-z]+|-o|\+o", args[0]) and args[0] != "--":
        args = args[2:] if args[0] in ("-o", "+o") else args[1:]
    if args and args[0] == "--":
        args = args[1:]
    if args or "--" in argv:
        s.args = list(args)
    return 0


async def _b_shift(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    n = int(argv[1]) if len(argv) > 1 else 1
    if n > len(s.args):
        return 1
    s.args = s.args[n:]
    return 0


async def _b_eval(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    try:
        node = _shell.parse(" ".join(argv[1:]))
    except _shell.ShellSyntaxError as exc:
        raise Usage(f"sh: eval: {exc}", 2) from None
    return await s.run_list(node, io_)


async def _b_source(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    if len(argv) < 2:
        raise Usage(f"sh: {argv[0]}: filename argument required", 2)
    try:
        text = s.box.fs.read(s.abspath(argv[1])).decode("utf-8", "replace")
    except (FileNotFound, IsADirectory):
        raise Usage(f"sh: {argv[0]}: can't open {argv[1]}", 2) from None
    try:
        node = _shell.parse(text)
    except _shell.ShellSyntaxError as exc:
        raise Usage(f"sh: {argv[1]}: {exc}", 2) from None
    try:
        return await s.run_list(node, io_)
    except _Return as ret:
        return ret.code


async def _b_trap(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    if len(argv) < 3:
        return 0
    action = argv[1]
    for sig in argv[2:]:
        key = "EXIT" if sig in ("0", "EXIT") else sig.upper().removeprefix("SIG")
        if action == "-":
            s.traps.pop(key, None)
        else:
            s.traps[key] = action
    return 0


async def _b_command(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    if len(argv) >= 3 and argv[1] in ("-v", "-V"):
        found = [n for n in argv[2:] if s.knows(n)]
        for n in found:
            shown = n if n in SHELL_BUILTINS or n in s.functions else "/usr/bin/" + n
            await io_.stdout(f"{shown}\n".encode())
        return 0 if len(found) == len(argv) - 2 else 1
    if len(argv) >= 2:
        return await s.run_utility(argv[1:], env, io_)
    return 0


async def _b_kill(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = argv[1:]
    sig = 15
    if args and args[0] == "-s" and len(args) > 1:
        args = [f"-{args[1]}", *args[2:]]
    if args and args[0] == "-l":
        await io_.stdout((" ".join(SIGNALS) + "\n").encode())
        return 0
    if args and args[0].startswith("-") and args[0] != "--":
        name = args[0][1:].upper().removeprefix("SIG")
        sig = int(name) if name.isdigit() else SIGNALS.get(name, -1)
        if sig < 0:
            raise Usage(f"kill: invalid signal {args[0]}", 2)
        args = args[1:]
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise Usage("kill: usage: kill [-s sigspec | -signum] pid", 2)
    status = 0
    for target in args:
        try:
            pid = int(target)
        except ValueError:
            raise Usage(f"kill: illegal pid: {target}", 2) from None
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


async def _b_exec(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    if len(argv) < 2:
        return 0
    raise ExitShell(await s.run_utility(argv[1:], env, io_))


async def _b_wait(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    pids = [int(a) for a in argv[1:]] if len(argv) > 1 else builtins.list(s.job_done)
    for pid in pids:
        event = s.job_done.get(pid)
        if event is not None:
            await event.wait()
    return 0


async def _b_read(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    raw = "-r" in argv
    names = [a for a in argv[1:] if not a.startswith("-")] or ["REPLY"]
    data = io_.stdin.readline()
    if not data:
        for name in names:
            s.vars[name] = ""
        return 1
    line = data.decode("utf-8", "replace").removesuffix("\n")
    if not raw:
        line = re.sub(r"\\(.)", r"\1", line)
    ifs = env.get("IFS", s.vars.get("IFS", " \t\n"))
    if not ifs:
        fields = [line]
    else:
        stripped = line.strip(ifs) if ifs.strip() == "" else line
        fields = re.split(f"[{re.escape(ifs)}]+", stripped, maxsplit=len(names) - 1)
    for i, name in enumerate(names):
        s.vars[name] = fields[i] if i < len(fields) else ""
    return 0 if data.endswith(b"\n") or data else 1


SHELL_BUILTINS: dict[str, Utility] = {
    "exit": _b_exit,
    "return": _b_return,
    "break": _b_break,
    "continue": _b_break,
    "cd": _b_cd,
    "export": _b_export,
    "local": _b_local,
    "readonly": _b_local,
    "unset": _b_unset,
    "set": _b_set,
    "shift": _b_shift,
    "eval": _b_eval,
    ".": _b_source,
    "source": _b_source,
    "trap": _b_trap,
    "command": _b_command,
    "kill": _b_kill,
    "wait": _b_wait,
    "read": _b_read,
    "exec": _b_exec,
    ":": _b_true,
    "true": _b_true,
    "false": _b_false,
}


# -- utilities ------------------------------------------------------------------------------


async def _u_sh(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    proc = s.box.new_proc()
    sub = Shell(s.box, proc, s.commands, env, s.cwd, [])
    code, _ = await run_as_proc(s.box, proc, sh_main(sub, argv, io_))
    return code


async def _u_echo(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = argv[1:]
    newline = True
    escapes = False
    while args and re.fullmatch(r"-[neE]+", args[0]):
        newline = newline and "n" not in args[0]
        escapes = "e" in args[0]
        args = args[1:]
    text = " ".join(args)
    if escapes:
        data, stop = escape_text(text, octal_needs_zero=True)
        newline = newline and not stop
    else:
        data = text.encode()
    await io_.stdout(data + (b"\n" if newline else b""))
    return 0


async def _u_printf(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = argv[1:]
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise Usage("printf: usage: printf format [arguments]", 2)
    await io_.stdout(printf_format(args[0], args[1:]))
    return 0


async def _inputs(
    s: Shell, files: builtins.list[str], io_: IO
) -> AsyncIterator[tuple[str, Iterator[bytes] | None]]:
    """Each named file's chunks (``-`` or none: stdin); ``None`` after reporting an error."""
    for name in files or ["-"]:
        if name == "-":
            yield name, iter([io_.stdin.read()])
            continue
        try:
            chunks: Iterator[bytes] | None = s.box.fs.chunks(s.abspath(name))
        except (FileNotFound, IsADirectory, InvalidPath) as exc:
            await io_.stderr(f"{name}: {describe(exc)}\n".encode())
            chunks = None
        yield name, chunks


async def _u_cat(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, files = split_flags(argv[1:])
    status = 0
    number = 1
    async for _name, chunks in _inputs(s, files, io_):
        if chunks is None:
            status = 1
            continue
        if "n" in flags:
            text = b"".join(chunks)
            out = bytearray()
            for line in text.splitlines(keepends=True):
                out += f"{number:6d}\t".encode() + line
                number += 1
            await io_.stdout(bytes(out))
            continue
        for chunk in chunks:
            await io_.stdout(chunk)
    return status


async def _u_head(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    count, rest = count_arg(argv[1:], "-c")
    lines, rest = count_arg(rest, "-n") if count is None else (None, rest)
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
                piece = chunk[:left]
                await io_.stdout(piece)
                left -= len(piece)
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


async def _u_tail(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    count, rest = count_arg(argv[1:], "-c")
    lines, rest = count_arg(rest, "-n") if count is None else (None, rest)
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


async def _u_wc(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, files = split_flags(argv[1:])
    wanted = "".join(f for f in "lwc" if f in flags) or "lwc"
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
        counts = {"l": n_lines, "w": n_words, "c": n_bytes}
        values = [str(counts[f]) for f in "lwc" if f in wanted]
        label = "" if name == "-" else f" {name}"
        await io_.stdout((" ".join(values) + label + "\n").encode())
    return status


async def _u_digest(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    algo = {"sha256sum": "sha256", "md5sum": "md5", "sha1sum": "sha1", "sha512sum": "sha512"}
    h_name = algo[command_name(argv[0])]
    _, _, files = split_flags(argv[1:])
    status = 0
    async for name, chunks in _inputs(s, files, io_):
        if chunks is None:
            status = 1
            continue
        h = hashlib.new(h_name)
        for chunk in chunks:
            h.update(chunk)
            await anyio.lowlevel.checkpoint()
        await io_.stdout(f"{h.hexdigest()}  {name}\n".encode())
    return status


async def _u_pwd(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    await io_.stdout(s.cwd.encode() + b"\n")
    return 0


async def _u_ls(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, targets = split_flags(argv[1:])
    targets = targets or ["."]
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
        names = sorted(
            n for n in node.children if "a" in flags or "A" in flags or not n.startswith(".")
        )
        if "a" in flags:
            names = [".", "..", *names]
        lines = []
        for n in names:
            child = node.children.get(n, node)
            suffix = "/" if "F" in flags and child.kind == "dir" else ""
            if "l" in flags:
                kind = "d" if child.kind == "dir" else "-"
                when = datetime.fromtimestamp(child.mtime, timezone.utc).strftime("%b %d %H:%M")
                lines.append(
                    f"{kind}{_mode_string(child.mode)} 1 root root {len(child.data):8d} {when} {n}{suffix}"
                )
            else:
                lines.append(n + suffix)
        await io_.stdout("".join(line + "\n" for line in lines).encode())
    return status


def _mode_string(mode: int) -> str:
    return "".join(
        ch if mode & bit else "-"
        for ch, bit in zip(
            "rwxrwxrwx", (0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 0o4, 0o2, 0o1), strict=True
        )
    )


async def _u_mkdir(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, targets = split_flags(argv[1:], "m")
    for target in targets:
        path = s.abspath(target)
        if "p" not in flags:
            if s.box.fs.get(path) is not None:
                raise Usage(f"mkdir: cannot create directory '{target}': File exists")
            s.box.fs.parent_of(path, create=False)
        s.box.fs.mkdir(path)
    return 0


async def _u_rm(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, targets = split_flags(argv[1:])
    status = 0
    for target in targets:
        path = s.abspath(target)
        node = s.box.fs.get(path)
        if node is None:
            if "f" not in flags:
                await io_.stderr(
                    f"rm: cannot remove '{target}': No such file or directory\n".encode()
                )
                status = 1
            continue
        if node.kind == "dir" and not ({"r", "R", "--recursive"} & flags):
            await io_.stderr(f"rm: cannot remove '{target}': Is a directory\n".encode())
            status = 1
            continue
        s.box.fs.remove(path, recursive=True)
    return status


async def _u_rmdir(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    _, _, targets = split_flags(argv[1:])
    for target in targets:
        node = s.box.fs.lookup(s.abspath(target))
        if node.kind != "dir" or node.children:
            raise Usage(f"rmdir: failed to remove '{target}': Directory not empty")
        s.box.fs.remove(s.abspath(target), recursive=False)
    return 0


async def _u_touch(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    _, _, targets = split_flags(argv[1:])
    for target in targets:
        path = s.abspath(target)
        node = s.box.fs.get(path)
        if node is None:
            s.box.fs.write(path, b"")
        else:
            node.mtime = time.time()
    return 0


_CHMOD_SYMBOLIC = re.compile(r"([ugoa]*)([-+=])([rwxst]*)")
_CHMOD_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007}
_CHMOD_WHAT = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}


def chmod_mode(spec: str, mode: int) -> int:
    """``mode`` changed by a ``chmod`` mode argument (octal, or ``[ugoa]*[-+=][rwxst]*``, comma
    separated). Raises ``ValueError`` for anything else."""
    if re.fullmatch(r"[0-7]{1,4}", spec):
        return int(spec, 8)
    for clause in spec.split(","):
        match = _CHMOD_SYMBOLIC.fullmatch(clause)
        if match is None:
            raise ValueError(spec)
        who, op, what = match.groups()
        scope = 0
        for w in who or "a":
            scope |= 0o7777 if w == "a" else _CHMOD_WHO[w]
        bits = 0
        for c in what:
            bits |= _CHMOD_WHAT[c]
        bits &= scope
        if op == "+":
            mode |= bits
        elif op == "-":
            mode &= ~bits
        else:
            mode = (mode & ~(scope & 0o777)) | bits
    return mode & 0o7777


async def _u_chmod(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = [a for a in argv[1:] if a != "--"]
    if len(args) < 2:
        raise Usage("chmod: missing operand")
    spec, *targets = args
    for target in targets:
        node = s.box.fs.lookup(s.abspath(target))
        try:
            node.mode = chmod_mode(spec, node.mode)
        except ValueError:
            raise Usage(f"chmod: invalid mode: '{spec}'") from None
    return 0


async def _u_cp_mv(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, names = split_flags(argv[1:])
    if len(names) < 2:
        raise Usage(f"{argv[0]}: missing file operand")
    *sources, dest = names
    fs = s.box.fs
    dest_path = s.abspath(dest)
    dest_node = fs.get(dest_path)
    for src in sources:
        src_path = s.abspath(src)
        node = fs.lookup(src_path)
        if dest_node is not None and dest_node.kind == "dir":
            target = posixpath.join(dest_path, posixpath.basename(src_path))
        else:
            target = dest_path
        parent, name = fs.parent_of(target, create=False)
        if command_name(argv[0]) == "mv":
            fs.remove(src_path, recursive=True)
            parent.children[name] = node
        else:
            if node.kind == "dir" and not ({"r", "R", "a"} & flags):
                raise Usage(f"cp: -r not specified; omitting directory '{src}'")
            parent.children[name] = copy.deepcopy(node)
        parent.mtime = time.time()
    return 0


async def _u_env(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = argv[1:]
    merged = dict(env)
    if args and args[0] in ("-i", "-"):
        merged = {}
        args = args[1:]
    while args and "=" in args[0] and not args[0].startswith("="):
        k, _, v = args[0].partition("=")
        merged[k] = v
        args = args[1:]
    if args:
        sub_env = dict(merged)
        sub = s.child(s.proc)
        sub.vars, sub.exported = dict(sub_env), set(sub_env)
        return await sub.run_utility(args, sub_env, io_)
    await io_.stdout("".join(f"{k}={v}\n" for k, v in sorted(merged.items())).encode())
    return 0


async def _u_printenv(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    if len(argv) == 1:
        return await _u_env(s, ["env"], env, io_)
    status = 0
    for name in argv[1:]:
        if name in env:
            await io_.stdout(env[name].encode() + b"\n")
        else:
            status = 1
    return status


async def _u_test(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = argv[1:]
    if argv[0] == "[":
        if not args or args[-1] != "]":
            raise Usage("[: missing ]", 2)
        args = args[:-1]
    return 0 if test_expression(args, s.box.fs, s.cwd) else 1


async def _u_sleep(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    total = 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    for arg in argv[1:]:
        try:
            if arg in ("inf", "infinity"):
                total = float("inf")
            elif arg and arg[-1] in units:
                total += float(arg[:-1]) * units[arg[-1]]
            else:
                total += float(arg)
        except ValueError:
            raise Usage(f"sleep: invalid time interval '{arg}'") from None
    await anyio.sleep(total)
    return 0


async def _u_basename(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = [a for a in argv[1:] if a != "--"]
    if not args:
        raise Usage("basename: missing operand")
    name = posixpath.basename(args[0].rstrip("/")) or "/"
    if len(args) > 1 and name.endswith(args[1]) and name != args[1]:
        name = name[: -len(args[1])]
    await io_.stdout(name.encode() + b"\n")
    return 0


async def _u_dirname(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = [a for a in argv[1:] if a != "--"]
    if not args:
        raise Usage("dirname: missing operand")
    await io_.stdout((posixpath.dirname(args[0].rstrip("/")) or ".").encode() + b"\n")
    return 0


async def _u_realpath(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, paths = split_flags(argv[1:])
    if command_name(argv[0]) == "readlink" and "f" not in flags and not ({"e", "m"} & flags):
        return 1  # no symlinks in the fake filesystem
    status = 0
    for p in paths:
        path = s.abspath(p)
        must_exist = "e" in flags or (command_name(argv[0]) == "realpath" and "m" not in flags)
        if must_exist and s.box.fs.get(path) is None:
            await io_.stderr(f"{argv[0]}: {p}: No such file or directory\n".encode())
            status = 1
            continue
        await io_.stdout(path.encode() + b"\n")
    return status


async def _u_seq(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    try:
        nums = [int(a) for a in argv[1:]]
    except ValueError:
        raise Usage("seq: invalid integer argument") from None
    if len(nums) == 1:
        first, step, last = 1, 1, nums[0]
    elif len(nums) == 2:
        first, step, last = nums[0], 1, nums[1]
    elif len(nums) == 3:
        first, step, last = nums
    else:
        raise Usage("seq: missing operand")
    numbers = range(first, last + (1 if step > 0 else -1), step)
    await io_.stdout("".join(f"{i}\n" for i in numbers).encode())
    return 0


def _tr_set(spec: str) -> str:
    classes = {
        "[:upper:]": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "[:lower:]": "abcdefghijklmnopqrstuvwxyz",
        "[:digit:]": "0123456789",
        "[:space:]": " \t\n\r\f\v",
        "[:blank:]": " \t",
        "[:alpha:]": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "[:alnum:]": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    }
    for name, chars in classes.items():
        spec = spec.replace(name, chars)
    text = escape_text(spec, octal_needs_zero=False)[0].decode("latin-1")
    out: list[str] = []
    i = 0
    while i < len(text):
        if i + 2 < len(text) and text[i + 1] == "-":
            out.extend(chr(c) for c in range(ord(text[i]), ord(text[i + 2]) + 1))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


async def _u_tr(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, sets = split_flags(argv[1:])
    data = io_.stdin.read().decode("latin-1")
    first = _tr_set(sets[0]) if sets else ""
    if "d" in flags:
        keep = set(first)
        if "c" in flags or "C" in flags:
            out = "".join(ch for ch in data if ch in keep)
        else:
            out = "".join(ch for ch in data if ch not in keep)
    else:
        second = _tr_set(sets[1]) if len(sets) > 1 else ""
        if not second:
            raise Usage("tr: missing operand")
        second = second + second[-1] * max(0, len(first) - len(second))
        out = data.translate(str.maketrans(first, second[: len(first)]))
        if "s" in flags:
            out = re.sub("([" + re.escape(second) + r"])\1+", r"\1", out)
    await io_.stdout(out.encode("latin-1"))
    return 0


async def _u_sort(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, files = split_flags(argv[1:])
    data = b""
    async for _name, chunks in _inputs(s, files, io_):
        if chunks is not None:
            data += b"".join(chunks)
    lines = data.decode("utf-8", "replace").splitlines()
    if "n" in flags:

        def key(line: str) -> float:
            m = re.match(r"\s*(-?\d+(\.\d+)?)", line)
            return float(m.group(1)) if m else 0.0

        lines.sort(key=key, reverse="r" in flags)
    else:
        lines.sort(reverse="r" in flags)
    if "u" in flags:
        lines = list(dict.fromkeys(lines))
    await io_.stdout("".join(line + "\n" for line in lines).encode())
    return 0


async def _u_uniq(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, files = split_flags(argv[1:])
    data = b""
    async for _name, chunks in _inputs(s, files[:1], io_):
        if chunks is not None:
            data += b"".join(chunks)
    out: list[str] = []
    previous: str | None = None
    count = 0
    for line in [*data.decode("utf-8", "replace").splitlines(), None]:
        if line == previous:
            count += 1
            continue
        if previous is not None:
            out.append(f"{count:7d} {previous}" if "c" in flags else previous)
        previous, count = line, 1
    await io_.stdout("".join(line + "\n" for line in out).encode())
    return 0


async def _u_tee(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, _, files = split_flags(argv[1:])
    data = io_.stdin.read()
    for f in files:
        s.box.fs.write(s.abspath(f), data, append="a" in flags)
    await io_.stdout(data)
    return 0


async def _u_date(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    now = datetime.now(timezone.utc)
    fmt = next((a[1:] for a in argv[1:] if a.startswith("+")), "%a %b %d %H:%M:%S UTC %Y")
    await io_.stdout((now.strftime(fmt.replace("%N", "000000000")) + "\n").encode())
    return 0


async def _u_fixed(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    answers = {"whoami": "root", "id": "uid=0(root) gid=0(root) groups=0(root)", "uname": "Linux"}
    name = command_name(argv[0])
    if name == "id" and "-u" in argv:
        text = "0"
    elif name == "hostname":
        text = s.box.info.id
    else:
        text = answers[name]
    await io_.stdout(text.encode() + b"\n")
    return 0


async def _u_no_network(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    await io_.stderr(f"{argv[0]}: network is unreachable (FakeBackend has no network)\n".encode())
    return 1


# -- find and grep ----------------------------------------------------------------------------------

FindTest = Callable[[str, Node, dict[str, bool]], Awaitable[bool]]


class _FindParser:
    def __init__(self, s: Shell, tokens: builtins.list[str], io_: IO, env: dict[str, str]) -> None:
        self.s, self.tokens, self.io, self.env = s, tokens, io_, env
        self.pos = 0
        self.has_action = False
        self.batches: list[tuple[list[str], list[str]]] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise Usage("find: missing argument")
        self.pos += 1
        return tok

    def parse_or(self) -> FindTest:
        left = self.parse_and()
        while self.peek() in ("-o", "-or"):
            self.pos += 1
            right = self.parse_and()
            left = self._or(left, right)
        return left

    @staticmethod
    def _or(a: FindTest, b: FindTest) -> FindTest:
        async def test(p: str, n: Node, ctx: dict[str, bool]) -> bool:
            return await a(p, n, ctx) or await b(p, n, ctx)

        return test

    @staticmethod
    def _and(a: FindTest, b: FindTest) -> FindTest:
        async def test(p: str, n: Node, ctx: dict[str, bool]) -> bool:
            return await a(p, n, ctx) and await b(p, n, ctx)

        return test

    def parse_and(self) -> FindTest:
        left = self.parse_not()
        while self.peek() is not None and self.peek() not in ("-o", "-or", ")"):
            if self.peek() in ("-a", "-and"):
                self.pos += 1
            right = self.parse_not()
            left = self._and(left, right)
        return left

    def parse_not(self) -> FindTest:
        if self.peek() in ("!", "-not"):
            self.pos += 1
            inner = self.parse_not()

            async def negated(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                return not await inner(p, n, ctx)

            return negated
        return self.parse_primary()

    def parse_primary(self) -> FindTest:
        tok = self.take()
        if tok == "(":
            inner = self.parse_or()
            if self.take() != ")":
                raise Usage("find: missing )")
            return inner
        if tok in ("-name", "-iname", "-path", "-wholename"):
            pattern = self.take()

            async def by_name(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                subject = posixpath.basename(p) or p if tok in ("-name", "-iname") else p
                if tok == "-iname":
                    return fnmatch.fnmatchcase(subject.lower(), pattern.lower())
                return fnmatch.fnmatchcase(subject, pattern)

            return by_name
        if tok == "-type":
            wanted = self.take()
            kinds = {"f": "file", "d": "dir", "c": "null"}

            async def by_type(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                if wanted == "c":
                    return n.kind in ("null", "zero")
                return n.kind == kinds.get(wanted, "?")

            return by_type
        if tok == "-empty":

            async def empty(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                return not n.children if n.kind == "dir" else n.kind == "file" and not n.data

            return empty
        if tok in ("-prune",):

            async def prune(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                ctx["prune"] = True
                return True

            return prune
        if tok in ("-print", "-print0"):
            self.has_action = True
            end = b"\0" if tok == "-print0" else b"\n"

            async def show(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                await self.io.stdout(p.encode() + end)
                return True

            return show
        if tok in ("-true", "-false"):

            async def const(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                return tok == "-true"

            return const
        if tok == "-exec":
            self.has_action = True
            command: list[str] = []
            while (part := self.take()) not in (";", "+"):
                command.append(part)
            if part == "+":
                batch: list[str] = []
                self.batches.append((command, batch))

                async def collect(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                    batch.append(p)
                    return True

                return collect

            async def run_each(p: str, n: Node, ctx: dict[str, bool]) -> bool:
                argv = [p if a == "{}" else a.replace("{}", p) for a in command]
                return await self.s.run_utility(argv, self.env, self.io) == 0

            return run_each
        raise Usage(f"find: unknown predicate '{tok}'")


async def _u_find(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    args = argv[1:]
    roots: list[str] = []
    while args and not args[0].startswith("-") and args[0] not in ("(", "!"):
        roots.append(args.pop(0))
    options = {"-maxdepth": 1 << 30, "-mindepth": 0}
    rest: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in options and i + 1 < len(args):
            options[args[i]] = int(args[i + 1])
            i += 2
        else:
            rest.append(args[i])
            i += 1
    parser = _FindParser(s, rest, io_, env)
    expr = parser.parse_or() if rest else None
    if parser.peek() is not None:
        raise Usage(f"find: unexpected '{parser.peek()}'")
    status = 0

    async def visit(shown: str, node: Node, depth: int) -> None:
        ctx = {"prune": False}
        if depth >= options["-mindepth"]:
            matched = True if expr is None else await expr(shown, node, ctx)
            if matched and not parser.has_action:
                await io_.stdout(shown.encode() + b"\n")
        if node.kind == "dir" and not ctx["prune"] and depth < options["-maxdepth"]:
            for name in sorted(node.children):
                await visit(posixpath.join(shown, name), node.children[name], depth + 1)

    for root in roots or ["."]:
        node = s.box.fs.get(s.abspath(root))
        if node is None:
            await io_.stderr(f"find: '{root}': No such file or directory\n".encode())
            status = 1
            continue
        await visit(root, node, 0)
    for command, batch in parser.batches:
        if batch:
            argv2 = [x for a in command for x in (batch if a == "{}" else [a])]
            if await s.run_utility(argv2, env, io_) != 0:
                status = 1
    return status


def _bre_to_python(pattern: str) -> str:
    """Basic regular expression (grep's default) to Python syntax."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            d = pattern[i + 1]
            out.append(d if d in "(){}|+?" else "\\" + d)
            i += 2
            continue
        out.append("\\" + c if c in "(){}|+?" else c)
        i += 1
    return "".join(out)


async def _u_grep(s: Shell, argv: builtins.list[str], env: dict[str, str], io_: IO) -> int:
    flags, values, operands = split_flags(argv[1:], "efmABC")
    patterns = values.get("e", []) + values.get("--regexp", [])
    if not patterns:
        if not operands:
            raise Usage("usage: grep [OPTION]... PATTERNS [FILE]...", 2)
        patterns = [operands.pop(0)]
    patterns = [p for raw in patterns for p in raw.split("\n")]
    fixed = "F" in flags or "--fixed-strings" in flags
    extended = "E" in flags or "--extended-regexp" in flags
    sources = [re.escape(p) if fixed else (p if extended else _bre_to_python(p)) for p in patterns]
    if "w" in flags:
        sources = [rf"\b(?:{p})\b" for p in sources]
    if "x" in flags:
        sources = [rf"^(?:{p})$" for p in sources]
    try:
        regex = re.compile(
            "|".join(f"(?:{p})" for p in sources), re.IGNORECASE if "i" in flags else 0
        )
    except re.error as exc:
        raise Usage(f"grep: invalid regular expression: {exc}", 2) from None
    recursive = bool({"r", "R", "--recursive"} & flags)
    excluded_dirs = values.get("--exclude-dir", [])
    includes = values.get("--include", [])
    excludes = values.get("--exclude", [])
    quiet = bool({"q", "--quiet", "--silent"} & flags)
    null = bool({"Z", "--null"} & flags)
    max_count = int(values["m"][0]) if "m" in values else None
    targets = operands or (["."] if recursive else ["-"])
    show_names = ("H" in flags or recursive or len(targets) > 1) and "h" not in flags
    files: list[tuple[str, bytes | None]] = []

    def walk(shown: str, node: Node) -> None:
        if node.kind == "dir":
            for name in sorted(node.children):
                child = node.children[name]
                if child.kind == "dir" and any(fnmatch.fnmatchcase(name, g) for g in excluded_dirs):
                    continue
                walk(posixpath.join(shown, name), child)
        elif node.kind == "file":
            base = posixpath.basename(shown)
            if includes and not any(fnmatch.fnmatchcase(base, g) for g in includes):
                return
            if any(fnmatch.fnmatchcase(base, g) for g in excludes):
                return
            files.append((shown, bytes(node.data)))

    status_error = False
    for target in targets:
        if target == "-":
            files.append(("(standard input)", io_.stdin.read()))
            continue
        node = s.box.fs.get(s.abspath(target))
        if node is None:
            status_error = True
            if "s" not in flags:
                await io_.stderr(f"grep: {target}: No such file or directory\n".encode())
            continue
        if node.kind == "dir":
            if recursive:
                walk(target, node)
            else:
                if "s" not in flags:
                    await io_.stderr(f"grep: {target}: Is a directory\n".encode())
                status_error = True
            continue
        files.append((target, bytes(node.data) if node.kind == "file" else b""))
    matched_any = False
    for name, data in files:
        assert data is not None
        if "I" in flags and b"\0" in data[:8192]:
            continue
        count = 0
        out = bytearray()
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            hit = regex.search(line) is not None
            if hit == ("v" in flags):
                continue
            count += 1
            if not ({"c", "l", "L"} & flags) and not quiet:
                prefix = ""
                if show_names:
                    prefix = name + ("\0" if null else ":")
                if "n" in flags:
                    prefix += f"{number}:"
                if "o" in flags and "v" not in flags:
                    for m in regex.finditer(line):
                        out += (prefix + m.group() + "\n").encode()
                else:
                    out += (prefix + line + "\n").encode()
            if max_count is not None and count >= max_count:
                break
        if count:
            matched_any = True
        if quiet:
            if matched_any:
                return 0
            continue
        if "c" in flags:
            out = bytearray(((name + ":") if show_names else "").encode() + f"{count}\n".encode())
        elif "l" in flags:
            out = bytearray((name + ("\0" if null else "\n")).encode()) if count else bytearray()
        elif "L" in flags:
            out = bytearray() if count else bytearray((name + "\n").encode())
        await io_.stdout(bytes(out))
    if status_error and not matched_any:
        return 2
    return 0 if matched_any else 1


UTILITIES: dict[str, Utility] = {
    "sh": _u_sh,
    "echo": _u_echo,
    "printf": _u_printf,
    "cat": _u_cat,
    "head": _u_head,
    "tail": _u_tail,
    "wc": _u_wc,
    "sha256sum": _u_digest,
    "sha1sum": _u_digest,
    "sha512sum": _u_digest,
    "md5sum": _u_digest,
    "pwd": _u_pwd,
    "ls": _u_ls,
    "mkdir": _u_mkdir,
    "rm": _u_rm,
    "rmdir": _u_rmdir,
    "touch": _u_touch,
    "chmod": _u_chmod,
    "cp": _u_cp_mv,
    "mv": _u_cp_mv,
    "env": _u_env,
    "printenv": _u_printenv,
    "test": _u_test,
    "[": _u_test,
    "sleep": _u_sleep,
    "basename": _u_basename,
    "dirname": _u_dirname,
    "realpath": _u_realpath,
    "readlink": _u_realpath,
    "seq": _u_seq,
    "tr": _u_tr,
    "sort": _u_sort,
    "uniq": _u_uniq,
    "tee": _u_tee,
    "date": _u_date,
    "whoami": _u_fixed,
    "id": _u_fixed,
    "uname": _u_fixed,
    "hostname": _u_fixed,
    "find": _u_find,
    "grep": _u_grep,
    "nc": _u_no_network,
    "wget": _u_no_network,
    "curl": _u_no_network,
}
