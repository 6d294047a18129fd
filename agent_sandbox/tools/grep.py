"""The ``grep`` tool: search file contents."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, FileNotFound
from ._inputs import GrepInput
from ._schema import ToolResult
from ._text import MAX_RESULTS, SEARCH_LIMIT, cut_line

if TYPE_CHECKING:
    from .toolkit import ToolKit

DESCRIPTION = """Search file contents with a regular expression (extended syntax).
Returns matching lines as path:line_number:text, sorted by path and line. Binary files and '.git' \
directories are skipped."""


async def run(kit: ToolKit, args: GrepInput) -> ToolResult:
    """The ``grep`` tool."""
    if not args.pattern:
        return ToolResult("empty pattern", is_error=True)
    target = await kit.resolve(args.path or ".")
    try:
        found = await kit.sandbox.grep(args.pattern, target, limit=SEARCH_LIMIT)
    except FileNotFound:
        return ToolResult(f"path not found: {target}", is_error=True)
    except ConfigError as exc:
        return ToolResult(f"grep failed: {exc}", is_error=True)
    if not found.matches:
        return ToolResult(f"no matches for {args.pattern!r} in {target}")
    shown = found.matches[:MAX_RESULTS]
    text = "\n".join(f"{m.path}:{m.line}:{cut_line(m.text, 500)}" for m in shown)
    if len(found.matches) > MAX_RESULTS:
        text += (
            f"\n[{len(found.matches) - MAX_RESULTS} more matching lines not shown; "
            "narrow the search]"
        )
    elif found.truncated:
        text += "\n[the search output was too long and was cut; results may be incomplete]"
    return ToolResult(text)
