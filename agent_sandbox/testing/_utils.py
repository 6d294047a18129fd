"""The utilities of :class:`~agent_sandbox.testing.FakeBackend`'s shell (``sh``, ``cat``, ...).

Each takes a :class:`~._interp.CommandContext`, as a registered command does, and returns its
exit status; a :class:`~._interp.Usage` or a file error becomes ``name: message`` on stderr.
"""

from __future__ import annotations

import hashlib
import operator
import posixpath
import re
from collections.abc import Awaitable, Callable

import anyio

from ..errors import FileNotFound, SandboxError
from ._interp import BUILTINS, CommandContext, Pipe, Proc, Shell, Usage, decode, number, run_proc


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
    args, src = ctx.argv[1:], None
    child = Shell(ctx._sh.box, ctx._sh.commands, ctx.env, ctx.cwd)
    child.depth = ctx._sh.depth
    if args[:1] == ["-c"]:
        if len(args) < 2:
            raise Usage("-c requires an argument", 2)
        src, child.args = args[1], args[2:] or ["sh"]
    elif args and args[0].startswith("-"):
        raise Usage(f"unsupported option {args[0]}", 2)
    elif args:
        try:
            src = decode(ctx.read_file(args[0]))
        except SandboxError:
            raise Usage(f"can't open '{args[0]}'", 2) from None
        child.args = args
    if proc is not None:
        child.pid = proc.pid
        return await child.main(src, ctx._fds)
    child.pid = (proc := ctx._sh.box.new_proc()).pid
    return (await run_proc(ctx._sh.box, proc, child.main(src, ctx._fds)))[0]


async def _each_input(ctx: CommandContext, names: list[str]) -> list[tuple[str, Pipe]]:
    """A reader for each of ``names`` (none, or ``-``: stdin); a missing one fails the command
    once the others are done (see :func:`_status`)."""
    found = []
    for name in names or ["-"]:
        try:
            found.append((name, ctx._fds[0] if name == "-" else ctx._sh.reader(name)))
        except SandboxError as exc:
            await ctx.write_stderr(f"{ctx.argv[0]}: {exc}\n")
    return found


def _status(inputs: list[tuple[str, Pipe]], names: list[str]) -> int:
    return int(len(inputs) < len(names or ["-"]))


async def _cat(ctx: CommandContext) -> int:
    names = _options(ctx.argv[1:], "u")[1]
    for _, src in (inputs := await _each_input(ctx, names)):
        while chunk := await src.read():
            await ctx._fds[1](chunk)
    return _status(inputs, names)


async def _head(ctx: CommandContext) -> int:
    """``head [-n N | -c N | -N] [file...]``."""
    args, unit, count = ctx.argv[1:], "n", 10
    while args and (m := re.fullmatch(r"-(\d+)|-([nc])(\d*)", args[0])):
        value = m.group(1) or m.group(3) or (args[1] if len(args) > 1 else "")
        unit, count = m.group(2) or "n", number(value)
        args = args[1 if m.group(1) or m.group(3) else 2 :]
    for _, src in (inputs := await _each_input(ctx, args)):
        left = count
        while left and (
            data := await (src.read(min(left, 65536)) if unit == "c" else src.readline())
        ):
            await ctx._fds[1](data)
            left -= len(data) if unit == "c" else 1
    return _status(inputs, args)


async def _wc(ctx: CommandContext) -> int:
    flags, names = _options(ctx.argv[1:], "lwc")
    for name, src in (inputs := await _each_input(ctx, names)):
        counts, in_word = {"l": 0, "w": 0, "c": 0}, False
        while chunk := await src.read():
            counts["l"] += chunk.count(b"\n")
            counts["c"] += len(chunk)
            counts["w"] += len(re.findall(rb"\S+", chunk)) - (in_word and not chunk[:1].isspace())
            in_word = not chunk[-1:].isspace()
        shown = [str(counts[f]) for f in "lwc" if f in (flags or "lwc")]
        await ctx.write_stdout(" ".join(shown + ([name] if names else [])) + "\n")
    return _status(inputs, names)


async def _sha256sum(ctx: CommandContext) -> int:
    names = _options(ctx.argv[1:], "b")[1]
    for name, src in (inputs := await _each_input(ctx, names)):
        digest = hashlib.sha256()
        while chunk := await src.read():
            digest.update(chunk)
        await ctx.write_stdout(f"{digest.hexdigest()}  {name}\n")
    return _status(inputs, names)


_ESCAPE = r"\\([0-7]{1,3}|.)"
_FORMAT = re.compile(r"%([-+ #0]*\d*(?:\.\d*)?)([sbcdiouxX%])|" + _ESCAPE, re.S)


def _unescape(seq: str) -> str:
    if seq[0] in "01234567":
        return decode(bytes([int(seq, 8) & 255]))
    return {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}.get(seq, "\\" + seq)


async def _printf(ctx: CommandContext) -> int:
    """``printf format [arguments...]``: ``%s %b %c %d %i %u %o %x %X %%`` with flags, width
    and precision, the escapes ``\\n \\t \\r \\\\ \\NNN``; the format reused for arguments
    left over."""
    if len(ctx.argv) < 2:
        raise Usage("usage: printf format [arguments...]", 2)
    fmt, args, out = ctx.argv[1], ctx.argv[2:], []

    def convert(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            return _unescape(m.group(3))
        if (kind := m.group(2)) == "%":
            return "%"
        used.append(arg := args[len(used)] if len(used) < len(args) else "")
        if kind in "sbc":
            text = re.sub(_ESCAPE, lambda e: _unescape(e.group(1)), arg) if kind == "b" else arg
            return f"%{m.group(1)}s" % (text[:1] if kind == "c" else text)
        return f"%{m.group(1)}{kind.replace('u', 'd').replace('i', 'd')}" % number(arg or "0")

    while True:
        used: list[str] = []
        out.append(_FORMAT.sub(convert, fmt))
        if not (args := args[len(used) :]) or not used:
            break
    await ctx.write_stdout("".join(out))
    return 0


async def _echo(ctx: CommandContext) -> int:
    args, newline = ctx.argv[1:], ctx.argv[1:2] != ["-n"]
    await ctx.write_stdout(" ".join(args[0 if newline else 1 :]) + "\n" * newline)
    return 0


async def _test(ctx: CommandContext) -> int:
    """``test``/``[``: ``! expr``, ``-n -z -e -f -d -s -x -r -w``, ``= != -eq -ne -lt -le -gt
    -ge``."""
    args = ctx.argv[1:]
    if ctx.argv[0] == "[":
        if args[-1:] != ["]"]:
            raise Usage("missing ]", 2)
        args = args[:-1]
    negate = args[:1] == ["!"]
    args = args[negate:]
    if len(args) == 2 and args[0] in ("-n", "-z"):
        result = (args[1] == "") == (args[0] == "-z")
    elif len(args) == 2 and re.fullmatch("-[efdsxrw]", args[0]):
        node, test = ctx._sh.fs.get(ctx.path(args[1])), args[0][1]
        result = node is not None and {
            "f": node.kind == "file",
            "d": node.kind == "dir",
            "s": len(node.data) > 0,
            "x": node.mode & 0o111 > 0,
        }.get(test, True)
    elif len(args) == 3 and args[1] in ("=", "==", "!="):
        result = (args[0] == args[2]) == (args[1] != "!=")
    elif len(args) == 3 and args[1] in ("-eq", "-ne", "-lt", "-le", "-gt", "-ge"):
        a, b = number(args[0], "integer"), number(args[2], "integer")
        result = getattr(operator, args[1][1:])(a, b)
    elif len(args) <= 1:
        result = bool(args and args[0])
    else:
        raise Usage(f"{' '.join(args)}: unsupported test", 2)
    return int(result == negate)


async def _ls(ctx: CommandContext) -> int:
    """``ls [-1aA] [path...]``: names, one a line (no long format)."""
    flags, names = _options(ctx.argv[1:], "1aA")
    status = 0
    for name in names or ["."]:
        if (node := ctx._sh.fs.get(ctx.path(name))) is None:
            await ctx.write_stderr(f"ls: cannot access '{name}': No such file or directory\n")
            status = 2
        elif node.kind != "dir":
            await ctx.write_stdout(name + "\n")
        else:
            shown = [".", ".."] * ("a" in flags) + sorted(node.children)
            hidden = flags & {"a", "A"}
            await ctx.write_stdout("".join(f"{n}\n" for n in shown if hidden or n[0] != "."))
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
    flags, names = _options(ctx.argv[1:], "rRf")
    for name in names:
        try:
            if ctx._sh.fs.lookup(ctx.path(name)).kind == "dir" and not flags & {"r", "R"}:
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
        if not (m := re.fullmatch(r"([ugoa]*)([-+=])([rwx]*)", clause)):
            raise Usage(f"invalid mode: '{spec}'")
        who = sum({"u": 0o700, "g": 0o070, "o": 0o007, "a": 0o777}[w] for w in set(m[1] or "a"))
        bits = sum({"r": 0o444, "w": 0o222, "x": 0o111}[p] for p in set(m[3])) & who
        mode = {"+": mode | bits, "-": mode & ~bits, "=": mode & ~who | bits}[m[2]]
    return mode


async def _chmod(ctx: CommandContext) -> int:
    if len(args := _options(ctx.argv[1:], "R")[1]) < 2:
        raise Usage("missing operand", 1)
    for name in args[1:]:
        node = ctx._sh.fs.lookup(ctx.path(name))
        node.mode = chmod_mode(args[0], node.mode)
    return 0


async def _sleep(ctx: CommandContext) -> int:
    seconds = 0.0
    for arg in ctx.argv[1:]:
        if not (m := re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([smh]?)", arg)):
            raise Usage(f"invalid time interval '{arg}'")
        seconds += float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]
    await anyio.sleep(seconds)
    return 0


async def _env(ctx: CommandContext) -> int:
    flags, args = _options(ctx.argv[1:], "i")
    env = {} if "i" in flags else dict(ctx.env)
    while args and re.match(r"[A-Za-z_]\w*=", args[0]):
        name, _, value = args.pop(0).partition("=")
        env[name] = value
    if args:
        return await ctx._sh.call(args, ctx._fds, env)
    await ctx.write_stdout("".join(f"{k}={v}\n" for k, v in env.items()))
    return 0


async def _pwd(ctx: CommandContext) -> int:
    await ctx.write_stdout(ctx.cwd + "\n")
    return 0


async def _id(ctx: CommandContext) -> int:
    flags = _options(ctx.argv[1:], "ugn")[0]
    name = "root" if "n" in flags else "0"
    await ctx.write_stdout(f"{name}\n" if flags else "uid=0(root) gid=0(root) groups=0(root)\n")
    return 0


async def _no_network(ctx: CommandContext) -> int:
    await ctx.write_stderr(f"{ctx.argv[0]}: network is unreachable (FakeBackend has no network)\n")
    return 1


async def _false(ctx: CommandContext) -> int:
    return 1


UTILITIES: dict[str, Callable[[CommandContext], Awaitable[int]]] = {
    "sh": run_sh, "true": BUILTINS[":"], "false": _false, "echo": _echo, "printf": _printf,
    "cat": _cat, "head": _head, "wc": _wc, "sha256sum": _sha256sum, "test": _test, "[": _test,
    "ls": _ls, "mkdir": _mkdir, "rm": _rm, "touch": _touch, "chmod": _chmod, "sleep": _sleep,
    "env": _env, "pwd": _pwd, "id": _id, "nc": _no_network, "wget": _no_network,
    "curl": _no_network,
}  # fmt: skip
