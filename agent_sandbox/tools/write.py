"""The ``write`` tool: create or overwrite a file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import IsADirectory, PermissionDenied
from ._inputs import WriteInput
from ._schema import ToolResult

if TYPE_CHECKING:
    from .toolkit import ToolKit

DESCRIPTION = """Create a file, or overwrite it, with the given content.
Parent directories are created as needed. To change part of an existing file, prefer edit."""


async def run(kit: ToolKit, args: WriteInput) -> ToolResult:
    """The ``write`` tool."""
    path = await kit.resolve(args.file_path)
    try:
        await kit.sandbox.write_file(path, args.content)
    except IsADirectory:
        return ToolResult(f"{path} is a directory; cannot write a file there", True)
    except PermissionDenied as exc:
        return ToolResult(f"permission denied writing {path}: {exc}", is_error=True)
    size = len(args.content.encode())
    lines = args.content.count("\n") + (0 if args.content.endswith("\n") or not args.content else 1)
    return ToolResult(f"wrote {size} bytes ({lines} lines) to {path}")
