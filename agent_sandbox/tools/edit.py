"""The ``edit`` tool: replace an exact string in a file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FileNotFound, IsADirectory
from ._inputs import EditInput
from ._schema import ToolResult
from ._text import snippet, text_or_none

if TYPE_CHECKING:
    from .toolkit import ToolKit

DESCRIPTION = """Replace an exact string in a file.
old_string must match the file exactly (whitespace and indentation included) and occur exactly \
once, unless replace_all is true; otherwise the edit fails and says how many matches were \
found. Read the file first to copy the text exactly."""


async def run(kit: ToolKit, args: EditInput) -> ToolResult:
    """The ``edit`` tool."""
    path = await kit.resolve(args.file_path)
    if not args.old_string:
        return ToolResult("old_string is empty; give the exact text to replace", True)
    if args.old_string == args.new_string:
        return ToolResult("old_string and new_string are identical; nothing to change", True)
    try:
        data = await kit.sandbox.read_file(path, max_bytes=kit.max_read_bytes)
    except FileNotFound:
        return ToolResult(f"file not found: {path} (use write to create a file)", True)
    except IsADirectory:
        return ToolResult(f"{path} is a directory, not a file", is_error=True)
    text = text_or_none(data)
    if text is None:
        return ToolResult(f"{path} is a binary file ({len(data)} bytes); cannot edit it", True)
    count = text.count(args.old_string)
    if count == 0:
        return ToolResult(
            f"old_string was not found in {path}; no change made. It must match exactly, "
            "whitespace and indentation included: read the file and copy the text.",
            is_error=True,
        )
    if count > 1 and not args.replace_all:
        return ToolResult(
            f"old_string occurs {count} times in {path}; no change made. Include more "
            "surrounding context to make it unique, or set replace_all to true.",
            is_error=True,
        )
    first = text.index(args.old_string)
    new_text = text.replace(args.old_string, args.new_string, -1 if args.replace_all else 1)
    await kit.sandbox.write_file(path, new_text)
    line = text.count("\n", 0, first) + 1
    shown = snippet(new_text, line, args.new_string.count("\n") + 1)
    what = f"{count} occurrences" if count > 1 else "1 occurrence"
    return ToolResult(f"edited {path}: replaced {what}.\n{shown}")
