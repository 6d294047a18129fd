"""The ``glob`` tool: find files by name."""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from ..errors import FileNotFound, InvalidPath
from ._glob import compile_glob, split_static_prefix
from ._inputs import GlobInput
from ._schema import ToolResult
from ._text import MAX_RESULTS, SEARCH_LIMIT

if TYPE_CHECKING:
    from .toolkit import ToolKit

DESCRIPTION = """Find files by name with a glob pattern such as '**/*.py' or 'src/*.{ts,tsx}'.
Returns matching file paths, sorted. '.git' directories are skipped."""


def search_base(path: str | None, pattern: str) -> tuple[str, str]:
    """Where a glob searches and what it matches there: the pattern's literal leading
    directories (absolute or ``..`` ones included) move the search base, so the policy and the
    workdir check see the directory actually listed."""
    pattern = pattern.strip()
    static, rest = split_static_prefix(pattern)
    if pattern.startswith("/"):
        return static or "/", rest
    base = path or "."
    return (posixpath.join(base, static), rest) if static else (base, pattern)


async def run(kit: ToolKit, args: GlobInput) -> ToolResult:
    """The ``glob`` tool."""
    if not args.pattern.strip():
        return ToolResult("empty pattern", is_error=True)
    base_raw, pattern = search_base(args.path, args.pattern)
    base = await kit.resolve(base_raw)
    try:
        found = await kit.sandbox.find(base, limit=SEARCH_LIMIT)
    except FileNotFound:
        return ToolResult(f"directory not found: {base}", is_error=True)
    except InvalidPath:
        return ToolResult(f"{base} is not a directory", is_error=True)
    regex = compile_glob(pattern)
    prefix = base.rstrip("/") + "/"
    matches = [p for p in found.paths if p.startswith(prefix) and regex.match(p[len(prefix) :])]
    if not matches:
        return ToolResult(f"no files match {args.pattern!r} in {base}")
    text = "\n".join(matches[:MAX_RESULTS])
    if len(matches) > MAX_RESULTS:
        text += f"\n[{len(matches) - MAX_RESULTS} more matches not shown; narrow the pattern]"
    elif found.truncated:
        text += "\n[the file listing was too long and was cut; results may be incomplete]"
    return ToolResult(text)
