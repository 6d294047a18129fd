"""The interpreter of :class:`~agent_sandbox.testing.FakeBackend`'s shell.

It runs the trees of :mod:`._shell` on a sandbox's in-memory filesystem. A process is a cancel
scope registered under a pid: ``kill`` cancels it with a signal, and whatever it started
(background jobs, pipeline members, child shells) runs inside it, so the whole tree dies with
it. Pipes are bounded: a writer waits for its reader, and dies of SIGPIPE (141) once the reader
is gone. Text is UTF-8, undecodable bytes carried through as surrogates.
"""

from __future__ import annotations

import builtins
import copy
import inspect
import posixpath
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ..errors import IsADirectory, SandboxError
from ..models import SandboxInfo
from ._fs import CHUNK, FS
from ._shell import (
    AndOr,
    Command,
    Incomplete,
    Pipeline,
    Redir,
    Script,
    ShellSyntaxError,
    Word,
    parse,
)

PIPE_SIZE = 64 * 1024
FILE_LIMIT = 256 * 1024 * 1024  # what one redirection may write: the fake's "disk"
LINE_LIMIT = 16 * 1024 * 1024  # the longest line read (by read, head -n, a shell from stdin)
MAX_DEPTH = 50  # scripts within scripts (eval, $(...), sh, groups): well within Python's stack
SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "PIPE": 13, "TERM": 15}


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class BrokenPipe(Exception):
    """Written to a pipe whose reader is gone."""


class Usage(Exception):
    """A command failed in a way its message explains; ``code`` is its exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Exit(Exception):
    """``exit``, on its way to the end of its shell."""

    def __init__(self, code: int) -> None:
        self.code = code


class Pipe:
    """A bounded pipe; also what reads a file or the client's stdin."""

    def __init__(self, data: bytes = b"", *, closed: bool = False) -> None:
        self.buf = bytearray(data)
        self.closed = closed  # the writer is done: end of file after the buffer
        self.gone = False  # the reader is done: writes fail
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.gone or self.closed:
                raise BrokenPipe()
            if (room := PIPE_SIZE - len(self.buf)) <= 0:
                await self._changed.wait()
                continue
            self.buf += view[:room]
            view = view[room:]
            self._notify()
        await anyio.lowlevel.checkpoint()

    async def _fill(self) -> bool:
        """Wait for data to read: ``False`` at the end of input."""
        while not self.buf and not self.closed:
            await self._changed.wait()
        return bool(self.buf)

    async def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes, waiting for at least one; ``b""`` at the end."""
        await self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        self._notify()
        await anyio.lowlevel.checkpoint()
        return data

    async def readline(self, limit: int = LINE_LIMIT) -> bytes:
        """One line with its newline (none at the end of input), cut at ``limit`` bytes."""
        line = bytearray()
        while not line.endswith(b"\n") and len(line) < limit and await self._fill():
            size = self.buf.find(b"\n") + 1 or len(self.buf)
            line += await self.read(min(size, limit - len(line)))
        return bytes(line)

    def close(self) -> None:
        self.closed = True
        self._notify()

    def hang_up(self) -> None:
        self.gone = True
        self.buf.clear()
        self._notify()


class _Zero(Pipe):
    """``/dev/zero`` read: zeros without end."""

    async def _fill(self) -> bool:
        self.buf += bytes(CHUNK - len(self.buf))
        return True


@dataclass
class Proc:
    """A fake process: what ``kill`` reaches."""

    pid: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    signal: int | None = None

    def kill(self, signal: int = 9) -> None:
        self.signal = self.signal or signal
        self.scope.cancel()


@dataclass
class Box:
    """One sandbox: its description, environment, filesystem and processes."""

    info: SandboxInfo
    env: dict[str, str]
    fs: FS
    procs: dict[int, Proc] = field(default_factory=dict)
    last_pid: int = 100

    def new_proc(self) -> Proc:
        self.last_pid += 1
        proc = self.procs[self.last_pid] = Proc(self.last_pid)
        return proc


async def run_proc(box: Box, proc: Proc, body: Awaitable[int]) -> tuple[int, int | None]:
    """Run ``body`` as the process ``proc``: its exit status and the signal that killed it."""
    code = 0
    try:
        with proc.scope:
            code = await body
    except BrokenPipe:
        proc.signal = proc.signal or 13
    finally:
        box.procs.pop(proc.pid, None)
    return (code, None) if proc.signal is None else (128 + proc.signal, proc.signal)


@dataclass
class CommandContext:
    """What a command scripted with :meth:`FakeBackend.register_command` gets.

    Attributes:
        argv: the command and its arguments, expanded.
        env: the environment of the command (exported variables and ``NAME=value`` prefixes).
        cwd: the absolute working directory.
        sandbox_id: the sandbox it runs in.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str
    sandbox_id: str
    _fds: dict[int, Any]
    _sh: Shell

    async def read_stdin(self) -> bytes:
        """All of stdin, up to its end (a pipe's writer closing, or the client's
        ``close_stdin``)."""
        data = bytearray()
        while chunk := await self._fds[0].read():
            data += chunk
        return bytes(data)

    async def write_stdout(self, data: bytes | str) -> None:
        """Write to stdout."""
        await self._fds[1](encode(data) if isinstance(data, str) else data)

    async def write_stderr(self, data: bytes | str) -> None:
        """Write to stderr."""
        await self._fds[2](encode(data) if isinstance(data, str) else data)

    def path(self, path: str) -> str:
        """``path`` made absolute against ``cwd``."""
        return posixpath.normpath(posixpath.join(self.cwd, path))

    def read_file(self, path: str) -> bytes:
        """A file of the sandbox. Raises ``FileNotFound``, ``IsADirectory``."""
        return self._sh.fs.read(self.path(path))

    def write_file(self, path: str, data: bytes | str) -> None:
        """Create or replace a file of the sandbox (parents created)."""
        payload = encode(data) if isinstance(data, str) else data
        self._sh.fs.write(self.path(path), payload, create_parents=True)


Handler = Callable[[CommandContext], "int | Awaitable[int | None] | None"]


class Shell:
    """One shell: variables, working directory, positional parameters, background jobs."""

    def __init__(
        self, box: Box, commands: dict[str, Handler], env: dict[str, str], cwd: str
    ) -> None:
        self.box, self.fs, self.commands = box, box.fs, commands
        self.vars = {**env, "PWD": cwd}
        self.exported = set(self.vars)
        self.cwd = cwd
        self.args = ["sh"]
        self.pid = 0
        self.status = self.subst_status = 0
        self.last_job = ""
        self.jobs: dict[int, tuple[anyio.Event, list[int]]] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self.depth = 0  # the scripts running within one another, here and in parent shells

    def sub(self) -> Shell:
        """A subshell: a copy whose changes stay its own."""
        sub = copy.copy(self)
        sub.vars, sub.exported, sub.args = dict(self.vars), set(self.exported), list(self.args)
        return sub

    def env(self) -> dict[str, str]:
        return {k: v for k, v in self.vars.items() if k in self.exported}

    def abspath(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.cwd, path))

    # -- running ------------------------------------------------------------------------------

    async def main(self, src: str | None, fds: dict[int, Any]) -> int:
        """Run a script (``None``: read it from stdin as it comes) as this shell's process:
        its background jobs end with it."""
        error: Exception | None = None
        async with anyio.create_task_group() as self.tg:
            try:
                if src is not None:
                    status = await self.run(parse(src), fds)
                else:
                    status = 0
                    while (script := await self._next_input(fds)) is not None:
                        status = await self.run(script, fds)
            except _Exit as exit_:
                status = exit_.code
            except ShellSyntaxError as exc:
                await fds[2](encode(f"sh: {exc}\n"))
                status = 2
            except Exception as exc:  # re-raised outside the task group, not in a group
                error = exc
            self.tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return status

    async def _next_input(self, fds: dict[int, Any]) -> Script | None:
        text = ""
        while line := await fds[0].readline():
            try:
                return parse(text := text + decode(line))
            except Incomplete:
                continue
        return parse(text) if text.strip() else None

    async def body(self, script: Script, fds: dict[int, Any]) -> int:
        """Run ``script`` as a subshell's whole body: ``exit`` ends it."""
        try:
            return await self.run(script, fds)
        except _Exit as exit_:
            return exit_.code

    async def run(self, script: Script, fds: dict[int, Any]) -> int:
        if self.depth >= MAX_DEPTH:  # x='eval "$x"'; eval "$x" ends here, as a failure
            raise Usage("nested too deeply", 2)
        self.depth += 1
        try:
            for and_or, background in script:
                if background:
                    self.background(and_or, fds)
                else:
                    self.status = await self.and_or(and_or, fds)
            return self.status
        finally:
            self.depth -= 1

    async def and_or(self, items: AndOr, fds: dict[int, Any]) -> int:
        status = 0
        for op, pipeline in items:
            if not op or (op == "&&") == (status == 0):
                status = self.status = await self.pipeline(pipeline, fds)
        return status

    def background(self, and_or: AndOr, fds: dict[int, Any]) -> None:
        sub, proc, done, status = self.sub(), self.box.new_proc(), anyio.Event(), [0]
        quiet = {**fds, 0: Pipe(closed=True)}  # a job does not read the shell's stdin
        sub.pid = proc.pid

        async def job() -> None:
            try:
                status[0], _ = await run_proc(self.box, proc, sub.body([(and_or, False)], quiet))
            finally:
                done.set()

        assert self.tg is not None
        self.tg.start_soon(job)
        self.last_job = str(proc.pid)
        self.jobs[proc.pid] = (done, status)

    async def pipeline(self, pipeline: Pipeline, fds: dict[int, Any]) -> int:
        negate, commands = pipeline
        statuses, errors = [0] * len(commands), []

        async def member(i: int, src: Pipe | None, dst: Pipe | None) -> None:
            io = {**fds, **({0: src} if src else {}), **({1: dst.write} if dst else {})}
            try:
                statuses[i] = await self.sub().command(commands[i], io)
            except _Exit as exit_:
                statuses[i] = exit_.code
            except BrokenPipe:
                statuses[i] = 141
            except Exception as exc:
                errors.append(exc)
            finally:
                if dst is not None:
                    dst.close()
                if src is not None:
                    src.hang_up()

        if len(commands) == 1:
            status = await self.command(commands[0], fds)
        else:
            async with anyio.create_task_group() as tg:
                src = None
                for i in range(len(commands)):
                    dst = Pipe() if i < len(commands) - 1 else None
                    tg.start_soon(member, i, src, dst)
                    src = dst
            if errors:
                raise errors[0]
            status = statuses[-1]
        return int(not status) if negate else status

    async def command(self, node: Command, fds: dict[int, Any]) -> int:
        await anyio.lowlevel.checkpoint()  # a busy loop (while :; do :; done) stays killable
        try:
            if node.kind == "simple":
                return await self.simple(node, fds)
            return await self.compound(node, await self.redirect(node.redirs, fds))
        except (Usage, SandboxError) as exc:
            await fds[2](encode(f"sh: {exc}\n"))
            return exc.code if isinstance(exc, Usage) else 1

    async def compound(self, node: Command, fds: dict[int, Any]) -> int:
        kind, parts, status = node.kind, node.parts, 0
        if kind == "group":
            return await self.run(parts[0], fds)
        if kind == "subshell":
            return await self.sub().body(parts[0], fds)
        if kind == "if":
            for i in range(0, len(parts) - 1, 2):
                if await self.run(parts[i], fds) == 0:
                    return await self.run(parts[i + 1], fds)
            return await self.run(parts[-1], fds) if len(parts) % 2 else 0
        if kind == "for":
            for item in self.args[1:] if node.each_arg else await self.expand_all(node.words, fds):
                self.vars[node.name] = item
                status = await self.run(parts[0], fds)
            return status
        while (await self.run(parts[0], fds) == 0) == (kind == "while"):
            status = await self.run(parts[1], fds)
        return status

    async def simple(self, node: Command, fds: dict[int, Any]) -> int:
        self.subst_status = 0
        argv = await self.expand_all(node.words, fds)
        assigns = {name: await self.expand_one(value, fds) for name, value in node.assigns}
        inner = await self.redirect(node.redirs, fds)
        if not argv:
            self.vars.update(assigns)
            return self.subst_status
        if argv == ["exec"]:
            fds.update(inner)  # the redirections stay, for the rest of the shell
            return 0
        return await self.call(argv, inner, {**self.env(), **assigns})

    async def call(self, argv: list[str], fds: dict[int, Any], env: dict[str, str]) -> int:
        """Run one command: a shell builtin, a command (registered or a utility) or a script
        file, in that order."""
        name = argv[0]
        node = self.fs.get(self.abspath(name)) if "/" in name else None
        if node is not None and node.kind == "file":  # a script: run by sh, whatever its #!
            if not node.mode & 0o111:
                await fds[2](encode(f"sh: {name}: Permission denied\n"))
                return 126
            name, argv = "sh", ["sh", *argv]
        elif node is None and name.startswith("/"):  # /bin/cat is cat
            name = posixpath.basename(name)
        handler = BUILTINS.get(name) or self.commands.get(name)
        if handler is None:
            await fds[2](encode(f"sh: {argv[0]}: command not found\n"))
            return 127
        try:
            result = handler(CommandContext(argv, env, self.cwd, self.box.info.id, fds, self))
            code = await result if inspect.isawaitable(result) else result
        except (Usage, SandboxError) as exc:
            await fds[2](encode(f"{'sh: ' if name in BUILTINS else ''}{name}: {exc}\n"))
            return exc.code if isinstance(exc, Usage) else 1
        return 0 if code is None else int(code)

    # -- redirections -------------------------------------------------------------------------

    async def redirect(self, redirs: list[Redir], fds: dict[int, Any]) -> dict[int, Any]:
        fds = dict(fds)
        for r in redirs:
            target = await self.expand_one(r.target, fds)
            if r.op in (">&", "<&"):
                if not target.isdigit() or int(target) not in fds:
                    raise Usage(f"{target}: bad file descriptor")
                fds[r.fd] = fds[int(target)]
            elif r.op == "<":
                fds[r.fd] = self.reader(target)
            else:
                fds[r.fd] = self.writer(target, append=r.op == ">>")
        return fds

    def reader(self, path: str) -> Pipe:
        node = self.fs.lookup(self.abspath(path))
        if node.kind == "dir":
            raise IsADirectory(f"{path}: Is a directory")
        return _Zero() if node.kind == "zero" else Pipe(bytes(node.data), closed=True)

    def writer(self, path: str, *, append: bool) -> Callable[[bytes], Awaitable[None]]:
        self.fs.write(self.abspath(path), b"", append=append)
        node = self.fs.lookup(self.abspath(path))

        async def write(data: bytes) -> None:
            if node.kind == "file":
                if len(node.data) + len(data) > FILE_LIMIT:
                    raise Usage(f"{path}: No space left on device")
                node.data += data
                node.mtime = time.time()
            await anyio.lowlevel.checkpoint()

        return write

    # -- expansion ----------------------------------------------------------------------------

    async def expand_all(self, words: list[Word], fds: dict[int, Any]) -> list[str]:
        return [field for word in words for field in await self.expand(word, fds)]

    async def expand_one(self, word: Word, fds: dict[int, Any]) -> str:
        return " ".join(await self.expand(word, fds, split=False))

    async def expand(self, word: Word, fds: dict[int, Any], *, split: bool = True) -> list[str]:
        """The fields of ``word``: parameters and commands substituted, unquoted results split
        at blanks (no pathname expansion)."""
        fields: list[str] = []
        text, live = "", False
        for kind, value, quoted in word:
            if kind == "v" and value[:2] == ("@", "") and quoted:
                for i, arg in enumerate(self.args[1:]):
                    if i:
                        fields.append(text)
                    text, live = (text if not i else "") + arg, True
                continue
            if kind == "s":
                result = value
            elif kind == "v":
                result = await self.param(*value, fds=fds)
            else:
                result = await self.substitute(value, fds)
            if quoted or not split or kind == "s":
                text, live = text + result, live or quoted or bool(result)
                continue
            for i, piece in enumerate(re.split(r"[ \t\n]+", result)):
                if i and live:
                    fields.append(text)
                    text, live = "", False
                text, live = text + piece, live or bool(piece)
        if live or not split:
            fields.append(text)
        return [" ".join(fields)] if not split else fields

    def lookup(self, name: str) -> str | None:
        if name in ("@", "*"):
            return " ".join(self.args[1:])
        if name.isdigit():
            return self.args[int(name)] if int(name) < len(self.args) else None
        special = {"$": str(self.pid), "?": str(self.status), "#": str(len(self.args) - 1)}
        special |= {"!": self.last_job, "-": ""}
        return special[name] if name in special else self.vars.get(name)

    async def param(self, name: str, op: str, arg: Word | None, *, fds: dict[int, Any]) -> str:
        value = self.lookup(name)
        unset = value is None or (op.startswith(":") and not value)
        if op in (":-", "-", ":=", "=") and unset:
            word = "" if arg is None else await self.expand_one(arg, fds)
            if "=" in op:
                self.vars[name] = word
            return word
        if op in (":+", "+"):
            return "" if unset or arg is None else await self.expand_one(arg, fds)
        return value or ""

    async def substitute(self, script: Script, fds: dict[int, Any]) -> str:
        """The output of ``$(script)``, trailing newlines removed (at most ``FILE_LIMIT``)."""
        out = bytearray()

        async def capture(data: bytes) -> None:
            if len(out) + len(data) > FILE_LIMIT:
                raise Usage("command substitution: output too large")
            out.extend(data)
            await anyio.lowlevel.checkpoint()

        self.subst_status = await self.sub().body(script, {**fds, 1: capture})
        return decode(bytes(out)).rstrip("\n")


# -- builtins: commands that act on the shell itself ---------------------------------------------


def number(text: str, what: str = "number") -> int:
    if not re.fullmatch(r"\s*-?\d+\s*", text):
        raise Usage(f"invalid {what}: {text!r}", 2)
    return int(text)


async def _cd(ctx: CommandContext) -> int:
    sh, args = ctx._sh, [a for a in ctx.argv[1:] if a != "--"]
    target = sh.abspath(args[0] if args else sh.vars.get("HOME", "/"))
    if (node := sh.fs.get(target)) is None or node.kind != "dir":
        raise Usage(f"can't cd to {args[0] if args else target}: No such file or directory", 2)
    sh.cwd = sh.vars["PWD"] = target
    return 0


async def _exit(ctx: CommandContext) -> int:
    raise _Exit(number(ctx.argv[1]) & 255 if ctx.argv[1:] else ctx._sh.status)


async def _export(ctx: CommandContext) -> int:
    for arg in ctx.argv[1:]:
        name, eq, value = arg.partition("=")
        if eq:
            ctx._sh.vars[name] = value
        ctx._sh.exported.add(name)
    return 0


async def _unset(ctx: CommandContext) -> int:
    for name in ctx.argv[1:]:
        ctx._sh.vars.pop(name, None)
    return 0


async def _eval(ctx: CommandContext) -> int:
    try:
        script = parse(" ".join(ctx.argv[1:]))
    except ShellSyntaxError as exc:
        raise Usage(str(exc), 2) from None
    return await ctx._sh.run(script, ctx._fds)


async def _exec(ctx: CommandContext) -> int:
    raise _Exit(await ctx._sh.call(ctx.argv[1:], ctx._fds, ctx.env))


async def _command(ctx: CommandContext) -> int:
    args, sh = ctx.argv[1:], ctx._sh
    if args[:1] != ["-v"]:
        return await sh.call(args, ctx._fds, ctx.env) if args else 0
    status = 0
    for name in args[1:]:
        if name in BUILTINS or ("/" in name and sh.fs.get(sh.abspath(name))):
            await ctx.write_stdout(name + "\n")
        elif name in sh.commands:
            await ctx.write_stdout(f"/usr/bin/{name}\n")
        else:
            status = 1
    return status


async def _read(ctx: CommandContext) -> int:
    names = [a for a in ctx.argv[1:] if not a.startswith("-")] or ["REPLY"]
    line = await ctx._fds[0].readline()
    ifs = ctx.env.get("IFS", ctx._sh.vars.get("IFS", " \t\n"))
    text = decode(line).removesuffix("\n").strip(ifs)
    words = (
        re.split(f"[{re.escape(ifs)}]+", text, maxsplit=len(names) - 1) if ifs and text else [text]
    )
    for i, name in enumerate(names):
        ctx._sh.vars[name] = words[i] if i < len(words) else ""
    return 0 if line.endswith(b"\n") else 1


async def _wait(ctx: CommandContext) -> int:
    jobs, status = ctx._sh.jobs, 0
    for pid in [number(a, "pid") for a in ctx.argv[1:]] or builtins.list(jobs):
        if pid not in jobs:
            status = 127
            continue
        done, result = jobs.pop(pid)
        await done.wait()
        status = result[0]
    return status if len(ctx.argv) > 1 else 0


async def _kill(ctx: CommandContext) -> int:
    args, signal = ctx.argv[1:], 15
    if args[:1] == ["-s"] and len(args) > 1:
        args = ["-" + args[1], *args[2:]]
    if args and args[0].startswith("-") and args[0] != "--":
        name = args.pop(0)[1:].upper().removeprefix("SIG")
        signal = int(name) if name.isdigit() else SIGNALS.get(name, -1)
        if not 0 <= signal <= 64:
            raise Usage(f"invalid signal {name}", 2)
    if not (args := args[1:] if args[:1] == ["--"] else args):
        raise Usage("usage: kill [-s SIGNAL | -SIGNAL] pid...", 2)
    status = 0
    for pid in args:
        if (proc := ctx._sh.box.procs.get(int(pid)) if pid.isdigit() else None) is None:
            await ctx.write_stderr(f"kill: ({pid}) - No such process\n")
            status = 1
        elif signal:
            proc.kill(signal)
    await anyio.lowlevel.checkpoint()  # a process that killed itself ends here
    return status


async def _true(ctx: CommandContext) -> int:
    return 0


BUILTINS: dict[str, Callable[[CommandContext], Awaitable[int]]] = {
    "cd": _cd, "exit": _exit, "export": _export, "unset": _unset, "eval": _eval, "exec": _exec,
    "command": _command, "read": _read, "wait": _wait, "kill": _kill, ":": _true,
}  # fmt: skip
