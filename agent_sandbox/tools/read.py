"""The ``read`` tool: a text file with line numbers, or the lines asked for of a large one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FileNotFound, IsADirectory, PermissionDenied
from ._inputs import ReadInput
from ._schema import ToolResult
from ._text import cut_line, numbered, text_or_none

if TYPE_CHECKING:
    from .toolkit import ToolKit

DESCRIPTION = """Read a text file from the sandbox, with line numbers (like cat -n).
Use view_range [start, end] (1-based, inclusive; end -1 = end of file) to read part of a long \
file. Binary files are not shown; their size is reported instead."""

MAX_READ_BYTES = 16 * 1024 * 1024
"""Files larger than this are not loaded whole: the lines asked for are cut out in the sandbox."""


def _is_directory(path: str) -> ToolResult:
    return ToolResult(
        f"{path} is a directory, not a file; use glob, or ls in bash, to list it", True
    )


async def run(kit: ToolKit, args: ReadInput) -> ToolResult:
    """The ``read`` tool."""
    path = await kit.resolve(args.file_path)
    try:
        info = await kit.sandbox.stat(path)
    except FileNotFound:
        return ToolResult(f"file not found: {path}", is_error=True)
    if info.type == "dir":
        return _is_directory(path)
    if info.type == "file" and info.size > kit.max_read_bytes:
        return await _read_large(kit, path, info.size, args.view_range)
    try:
        data = await kit.sandbox.read_file(path, max_bytes=kit.max_read_bytes)
    except FileNotFound:
        return ToolResult(f"file not found: {path}", is_error=True)
    except IsADirectory:
        return _is_directory(path)
    except PermissionDenied as exc:
        return ToolResult(f"permission denied reading {path}: {exc}", is_error=True)
    text = text_or_none(data)
    if text is None:
        return ToolResult(
            f"{path} is a binary file ({len(data)} bytes); its content is not shown. Inspect "
            "it with bash (file, xxd | head, ...)."
        )
    if not text:
        return ToolResult(f"{path} is empty (0 bytes).")
    lines = text.splitlines()
    start, end = 1, len(lines)
    if args.view_range is not None:
        start = args.view_range[0]
        end = len(lines) if args.view_range[1] == -1 else min(args.view_range[1], len(lines))
        if start > len(lines):
            return ToolResult(
                f"view_range starts at line {start}, but {path} has {len(lines)} lines", True
            )
    body = numbered(lines[start - 1 : end], start)
    if args.view_range is not None and (start > 1 or end < len(lines)):
        body = f"[lines {start}-{end} of {len(lines)}]\n" + body
    return ToolResult(body)


async def _read_large(
    kit: ToolKit, path: str, size: int, view_range: list[int] | None
) -> ToolResult:
    """Part of a file too large to load whole: at most one budget's worth of bytes comes back."""
    start, end = view_range if view_range is not None else (1, -1)
    limit = kit.output_budget
    data = await kit.sandbox.read_lines(path, start, None if end == -1 else end, max_bytes=limit)
    if b"\x00" in data[:8192]:
        return ToolResult(f"{path} is a binary file ({size} bytes); its content is not shown.")
    if not data:
        return ToolResult(f"view_range starts at line {start}, past the end of {path}", True)
    lines = data.decode("utf-8", errors="replace").splitlines()
    whole = len(data) < limit  # everything asked for arrived
    if not whole and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut mid-way
    shown: list[str] = []
    room = kit.output_budget - 300 - len(path)
    for number, line in enumerate(lines, start=start):
        row = f"{number:6}\t{cut_line(line)}"
        if shown and room - len(row) - 1 < 0:
            whole = False
            break
        shown.append(row)
        room -= len(row) + 1
    last = start + len(shown) - 1
    header = f"[{path} is {size} bytes, too large to read whole; lines {start}-{last}"
    if not whole:
        header += f"; continue with view_range [{last + 1}, ...]"
    return ToolResult(header + "]\n" + "\n".join(shown))
