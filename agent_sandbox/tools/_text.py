"""Text helpers shared by the file tools: binary detection and line shaping for the model."""

from __future__ import annotations

MAX_LINE_CHARS = 2_000
MAX_RESULTS = 1_000
"""Most paths or matching lines a search tool returns."""
SEARCH_LIMIT = 8 * 1024 * 1024
"""Bytes of answer the sandbox may send back for one search (glob, grep)."""


def text_or_none(data: bytes) -> str | None:
    """``data`` as text, or None when it looks binary (a NUL byte, or not UTF-8)."""
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def cut_line(line: str, limit: int = MAX_LINE_CHARS) -> str:
    """``line``, cut at ``limit`` characters with a note."""
    if len(line) <= limit:
        return line
    return line[:limit] + f"... [line cut: {len(line)} characters]"


def numbered(lines: list[str], start: int) -> str:
    """Lines as ``cat -n`` shows them, numbered from ``start``."""
    return "\n".join(f"{number:6}\t{cut_line(line)}" for number, line in enumerate(lines, start))


def snippet(text: str, line: int, span: int, context: int = 3) -> str:
    """The lines ``line`` .. ``line + span - 1`` of ``text`` with some context, numbered."""
    lines = text.splitlines()
    first = max(line - context, 1)
    last = min(line + span - 1 + context, len(lines))
    return numbered(lines[first - 1 : last], first)
