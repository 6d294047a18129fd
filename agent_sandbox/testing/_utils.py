"""The utilities of :class:`~agent_sandbox.testing.FakeBackend`'s shell (``sh``, ``cat``, ...).

Each takes a :class:`~._interp.CommandContext`, as a registered command does, and returns its
exit status; a :class:`~._interp.Usage` or a file error becomes ``name: message`` on stderr.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Awaitable, Callable
from datetime import datetime

import anyio

from ..errors import FileNotFound, SandboxError
from ._fs import Node
from ._interp import CommandContext, Pipe, Proc, Shell, Usage, decode, run_proc

Utility = Callable[[CommandContext], Awaitable[int]]


def _options(args: list[str], flags: str) -> tuple[set[str], list[str]]:
    """Leading single-letter ``flags`` (``-rf`` as well as ``-r -f``) and the operands."""
    seen: set[str] = set()
    while args and args[0].startswith("-") and len(args[0]) > 1 and args[0] != "--":
        if not set(args[0][1:]) <= set(flags):
            raise Usage(f"unsupported option {args[0]}", 2)
        seen |= set(args[0][1:])
        args = args[1:]
    return seen, args[1:] if args[:1] == ["--"] else args


async def run_sh(ctx: CommandContext, proc: Proc | None = None) -> int:
    """``sh -c script [name args...]``, ``sh file [args...]``, or ``sh`` reading its script from
    stdin as it comes; a new process, or ``proc``."""
    args = ctx.argv[1:]
    if args[:1] != ["-c"] and args[:1] != ["-"] and args[0:1] and args[0].startswith("-"):
        raise Usage(f"unsupported option {args[0]}", 2)
    child = Shell(ctx._sh.box, ctx._sh.commands, ctx.env, ctx.cwd)
    if args[:1] == ["-c"]:
        if len(args) < 2:
            raise Usage("-c requires an argument", 2)
        src: str | None = args[1]
        child.args = args[2:] or ["sh"]
    elif args:
        try:
            src = decode(ctx.read_file(args[0]))
        except SandboxError:
            raise Usage(f"can't open '{args[0]}'", 2) from None
        child.args = args
    else:
        src = None
    if proc is not None:
        child.pid = proc.pid
        return await child.main(src, ctx._fds)
    proc = ctx._sh.box.new_proc()
    child.pid = proc.pid
    code, _ = await run_proc(ctx._sh.box, proc, child.main(src, ctx._fds))
    return code


async def _inputs(ctx: CommandContext, names: list[str]) -> list[tuple[str, Pipe]]:
    """A reader for each of ``names`` (none, or ``-``: stdin); errors said on stderr."""
    found = []
    for name in names or ["-"]:
        try:
            found.append((name, ctx._fds[0] if name == "-" else ctx._sh.reader(name)))
        except SandboxError as exc:
            await ctx.write_stderr(f"{ctx.argv[0]}: {exc}\n")
    return found


async def _copy(src: Pipe, write: Callable[[bytes], Awaitable[None]], limit: int = -1) -> None:
    while limit and (chunk := await src.read(limit if 0 < limit < 65536 else 65536)):
        await write(chunk)
        limit -= len(chunk) if limit > 0 else 0


async def _cat(ctx: CommandContext) -> int:
    _, names = _options(ctx.argv[1:], "u")
    inputs = await _inputs(ctx, names)
    for _, src in inputs:
        await _copy(src, ctx._fds[1])
    return int(len(inputs) < len(names or ["-"]))


def _count(args: list[str]) -> tuple[str, int, list[str]]:
    """``-n N``, ``-c N`` or ``-N`` of head and tail: (unit, count, operands)."""
    unit, count = "n", 10
    while args and re.fullmatch(r"-[nc]|-\d+|-[nc]\d+", args[0]):
        if args[0][1:].isdigit():
            count, args = int(args[0][1:]), args[1:]
            continue
        value = args[0][2:] or (args[1] if len(args) > 1 else "")
        if not value.lstrip("+").isdigit():
            raise Usage(f"invalid number: {value!r}", 1)
        unit, count, args = args[0][1], int(value), args[1 if args[0][2:] else 2 :]
    return unit, count, args


async def _head(ctx: CommandContext) -> int:
    unit, count, names = _count(ctx.argv[1:])
    inputs = await _inputs(ctx, names)
    for _, src in inputs:
        if unit == "c":
            await _copy(src, ctx._fds[1], count)
            continue
        for _ in range(count):
            if not (line := await src.readline()):
                break
            await ctx.write_stdout(line)
    return int(len(inputs) < len(names or ["-"]))


async def _tail(ctx: CommandContext) -> int:
    unit, count, names = _count(ctx.argv[1:])
    inputs = await _inputs(ctx, names)
    for _, src in inputs:
        kept = bytearray()
        while chunk := await src.read():
            kept += chunk
            if unit == "c":
                del kept[: max(len(kept) - count, 0)]
            elif kept.count(b"\n") > count + 1:
                kept = bytearray(b"".join(kept.splitlines(keepends=True)[-count - 1 :]))
        lines = kept.splitlines(keepends=True)
        await ctx.write_stdout(
            bytes(kept) if unit == "c" else b"".join(lines[-count:] if count else [])
        )
    return int(len(inputs) < len(names or ["-"]))


async def _wc(ctx: CommandContext) -> int:
    flags, names = _options(ctx.argv[1:], "lwc")
    inputs = await _inputs(ctx, names)
    for name, src in inputs:
        counts, in_word = {"l": 0, "w": 0, "c": 0}, False
        while chunk := await src.read():
            counts["l"] += chunk.count(b"\n")
            counts["c"] += len(chunk)
            counts["w"] += len(re.findall(rb"\S+", chunk)) - (in_word and not chunk[:1].isspace())
            in_word = not chunk[-1:].isspace()
        shown = [str(counts[f]) for f in "lwc" if f in (flags or "lwc")]
        await ctx.write_stdout(" ".join(shown + ([name] if names else [])) + "\n")
    return int(len(inputs) < len(names or ["-"]))


async def _digest(ctx: CommandContext) -> int:
    _, names = _options(ctx.argv[1:], "b")
    inputs = await _inputs(ctx, names)
    for name, src in inputs:
        digest = hashlib.new(ctx.argv[0].removesuffix("sum"))
        while chunk := await src.read():
            digest.update(chunk)
        await ctx.write_stdout(f"{digest.hexdigest()}  {name}\n")
    return int(len(inputs) < len(names or ["-"]))


_ESCAPE = r"\\([0-7]{1,3}|.)"
_FORMAT = re.compile(r"%([-+ #0]*)(\d*)(?:\.(\d*))?([sbcdiouxX%])|" + _ESCAPE, re.S)
_CHARS = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(seq: str) -> str:
    if seq[0] in "01234567":
        return decode(bytes([int(seq, 8) & 255]))
    return _CHARS.get(seq, seq if seq in "\\\"'" else "\\" + seq)


async def _printf(ctx: CommandContext) -> int:
    if len(ctx.argv) < 2:
        raise Usage("usage: printf format [arguments...]", 2)
    fmt, args, out, used = ctx.argv[1], ctx.argv[2:], [], 0

    def convert(m: re.Match[str]) -> str:
        nonlocal used
        if m.group(5) is not None:
            return _unescape(m.group(5))
        flags, width, precision, kind = m.group(1, 2, 3, 4)
        if kind == "%":
            return "%"
        arg = args[used] if used < len(args) else ""
        used += 1
        spec = "%" + flags + width + ("." + precision if precision is not None else "")
        if kind in "sb":
            text = re.sub(_ESCAPE, lambda e: _unescape(e.group(1)), arg) if kind == "b" else arg
            return (spec + "s") % text
        if kind == "c":
            return (spec + "s") % arg[:1]
        number = ord(arg[1]) if arg[:1] in ("'", '"') and len(arg) > 1 else arg or "0"
        try:
            return (spec + kind.replace("u", "d").replace("i", "d")) % int(number)
        except ValueError:
            raise Usage(f"invalid number: {arg!r}") from None

    while True:
        used = 0
        out.append(_FORMAT.sub(convert, fmt))
        args = args[used:]
        if not args or not used:
            break
    await ctx.write_stdout("".join(out))
    return 0


async def _echo(ctx: CommandContext) -> int:
    args = ctx.argv[1:]
    newline = args[:1] != ["-n"]
    await ctx.write_stdout(" ".join(args[0 if newline else 1 :]) + ("\n" if newline else ""))
    return 0


def _test(ctx: CommandContext, args: list[str]) -> bool:
    if args[:1] == ["!"]:
        return not _test(ctx, args[1:])
    if len(args) == 2:
        op, operand = args
        if op in ("-n", "-z"):
            return (operand == "") == (op == "-z")
        node = ctx._sh.fs.get(ctx.path(operand))
        tests = {"e": True, "f": node and node.kind == "file", "d": node and node.kind == "dir"}
        tests |= {"s": node and len(node.data) > 0, "x": node and node.mode & 0o111 > 0}
        if op[:1] != "-" or op[1:] not in tests | {"r": 1, "w": 1}:
            raise Usage(f"{op}: unknown operand", 2)
        return node is not None and bool(tests.get(op[1:], True))
    if len(args) == 3:
        a, op, b = args
        if op in ("=", "==", "!="):
            return (a == b) == (op != "!=")
        ops = {"-eq": int.__eq__, "-ne": int.__ne__, "-lt": int.__lt__, "-le": int.__le__}
        ops |= {"-gt": int.__gt__, "-ge": int.__ge__}
        if op not in ops:
            raise Usage(f"{op}: unknown operand", 2)
        return bool(ops[op](_int(a), _int(b)))
    if len(args) > 3:
        raise Usage("too many arguments", 2)
    return bool(args and args[0])


def _int(text: str) -> int:
    if not re.fullmatch(r"\s*-?\d+\s*", text):
        raise Usage(f"{text}: integer expected", 2)
    return int(text)


async def _test_cmd(ctx: CommandContext) -> int:
    args = ctx.argv[1:]
    if ctx.argv[0] == "[":
        if args[-1:] != ["]"]:
            raise Usage("missing ]", 2)
        args = args[:-1]
    return int(not _test(ctx, args))


def _mode_string(node: Node) -> str:
    bits = "".join(c if node.mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return ("d" if node.kind == "dir" else "c" if node.kind in ("null", "zero") else "-") + bits


async def _ls(ctx: CommandContext) -> int:
    flags, names = _options(ctx.argv[1:], "1alAdF")
    status, fs = 0, ctx._sh.fs
    for i, name in enumerate(names or ["."]):
        node = fs.get(ctx.path(name))
        if node is None:
            await ctx.write_stderr(f"ls: cannot access '{name}': No such file or directory\n")
            status = 2
            continue
        if node.kind == "dir" and "d" not in flags:
            entries = sorted(node.children.items())
            if "a" in flags:
                entries = [(".", node), ("..", node), *entries]
            entries = [(n, c) for n, c in entries if "a" in flags or "A" in flags or n[0] != "."]
            header = f"{'' if i == 0 else chr(10)}{name}:\n" if len(names) > 1 else ""
        else:
            entries, header = [(name, node)], ""
        lines = [header] if header else []
        for entry, child in entries:
            if "l" in flags:
                when = datetime.fromtimestamp(child.mtime).strftime("%b %d %H:%M")
                size = len(child.data) if child.kind == "file" else 4096
                entry = f"{_mode_string(child)} 1 root root {size:>8} {when} {entry}"
            lines.append(entry + "\n")
        await ctx.write_stdout("".join(lines))
    return status


async def _mkdir(ctx: CommandContext) -> int:
    flags, names = _options(ctx.argv[1:], "p")
    for name in names:
        path, fs = ctx.path(name), ctx._sh.fs
        if fs.get(path) is not None and "p" not in flags:
            raise Usage(f"cannot create directory '{name}': File exists")
        if "p" not in flags:
            fs.lookup(posixpath.dirname(path))
        fs.mkdir(path)
    return 0


async def _rm(ctx: CommandContext) -> int:
    flags, names = _options(ctx.argv[1:], "rRfv")
    for name in names:
        try:
            node = ctx._sh.fs.lookup(ctx.path(name))
            if node.kind == "dir" and not flags & {"r", "R"}:
                raise Usage(f"cannot remove '{name}': Is a directory")
            ctx._sh.fs.remove(ctx.path(name), recursive=True)
        except FileNotFound:
            if "f" not in flags:
                raise
    return 0


async def _touch(ctx: CommandContext) -> int:
    for name in _options(ctx.argv[1:], "c")[1]:
        ctx._sh.fs.write(ctx.path(name), b"", append=True)
    return 0


def chmod_mode(spec: str, mode: int) -> int:
    """``mode`` changed by ``spec``: octal, or ``[ugoa]*[-+=][rwx]*`` clauses joined by commas."""
    if re.fullmatch(r"[0-7]{1,4}", spec):
        return int(spec, 8)
    for clause in spec.split(","):
        m = re.fullmatch(r"([ugoa]*)([-+=])([rwx]*)", clause)
        if m is None:
            raise Usage(f"invalid mode: '{spec}'")
        who = sum({"u": 0o700, "g": 0o070, "o": 0o007}[w] for w in set(m.group(1) or "a") - {"a"})
        who = who if m.group(1).strip("a") else 0o777
        bits = sum({"r": 0o444, "w": 0o222, "x": 0o111}[p] for p in set(m.group(3))) & who
        mode = (
            mode | bits
            if m.group(2) == "+"
            else mode & ~bits
            if m.group(2) == "-"
            else mode & ~who | bits
        )
    return mode


async def _chmod(ctx: CommandContext) -> int:
    _, args = _options(ctx.argv[1:], "R")
    if len(args) < 2:
        raise Usage("missing operand", 1)
    for name in args[1:]:
        node = ctx._sh.fs.lookup(ctx.path(name))
        node.mode = chmod_mode(args[0], node.mode)
    return 0


async def _sleep(ctx: CommandContext) -> int:
    seconds = 0.0
    for arg in ctx.argv[1:]:
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)", arg)
        if m is None:
            raise Usage(f"invalid time interval '{arg}'")
        seconds += float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    await anyio.sleep(seconds)
    return 0


async def _env(ctx: CommandContext) -> int:
    flags, args = _options(ctx.argv[1:], "i")
    env = {} if "i" in flags else dict(ctx.env)
    while args and re.match(r"[A-Za-z_]\w*=", args[0]):
        name, _, value = args.pop(0).partition("=")
        env[name] = value
    if args:
        return await ctx._sh.call(args, ctx._fds, env, functions=False)
    await ctx.write_stdout("".join(f"{k}={v}\n" for k, v in env.items()))
    return 0


async def _pwd(ctx: CommandContext) -> int:
    await ctx.write_stdout(ctx.cwd + "\n")
    return 0


async def _id(ctx: CommandContext) -> int:
    flags, _ = _options(ctx.argv[1:], "ugn")
    name = "n" in flags
    await ctx.write_stdout(
        ("root" if name else "0") + "\n"
        if flags - {"n"}
        else "uid=0(root) gid=0(root) groups=0(root)\n"
    )
    return 0


async def _no_network(ctx: CommandContext) -> int:
    await ctx.write_stderr(f"{ctx.argv[0]}: network is unreachable (FakeBackend has no network)\n")
    return 1


async def _status(ctx: CommandContext) -> int:
    return int(ctx.argv[0] == "false")


UTILITIES: dict[str, Utility] = {
    "sh": run_sh, "true": _status, "false": _status, "echo": _echo, "printf": _printf,
    "cat": _cat, "head": _head, "tail": _tail, "wc": _wc, "sha256sum": _digest,
    "md5sum": _digest, "test": _test_cmd, "[": _test_cmd, "ls": _ls, "mkdir": _mkdir,
    "rm": _rm, "touch": _touch, "chmod": _chmod, "sleep": _sleep, "env": _env, "pwd": _pwd,
    "id": _id, "nc": _no_network, "wget": _no_network, "curl": _no_network,
}  # fmt: skip
