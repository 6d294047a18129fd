"""Glob patterns (``*``, ``?``, ``[...]``, ``{a,b}``, ``**``) matched on the host against paths a
sandbox listed, so the glob tool behaves the same on every provider."""

from __future__ import annotations

import re
from functools import lru_cache

_MAGIC = re.compile(r"[*?\[{]")


def has_magic(text: str) -> bool:
    """True when ``text`` contains glob syntax."""
    return _MAGIC.search(text) is not None


def split_static_prefix(pattern: str) -> tuple[str, str]:
    """Split ``pattern`` into its leading literal directories and the rest.

    ``"/src/app/**/*.py"`` gives ``("/src/app", "**/*.py")``; ``"*.py"`` gives ``("", "*.py")``.
    """
    parts = pattern.split("/")
    static: list[str] = []
    for index, part in enumerate(parts[:-1]):
        if has_magic(part):
            return "/".join(static), "/".join(parts[index:])
        static.append(part)
    return "/".join(static), parts[-1]


def _expand_braces(pattern: str) -> list[str]:
    depth = 0
    start = -1
    for index, char in enumerate(pattern):
        if char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                options: list[str] = []
                level = 0
                piece_start = start + 1
                for j in range(start + 1, index):
                    if pattern[j] == "{":
                        level += 1
                    elif pattern[j] == "}":
                        level -= 1
                    elif pattern[j] == "," and level == 0:
                        options.append(pattern[piece_start:j])
                        piece_start = j + 1
                options.append(pattern[piece_start:index])
                if len(options) == 1:
                    continue
                head, tail = pattern[:start], pattern[index + 1 :]
                expanded: list[str] = []
                for option in options:
                    expanded.extend(_expand_braces(head + option + tail))
                return expanded
    return [pattern]


def _segment_regex(segment: str) -> str:
    out = []
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = segment.find(
                "]", index + 2 if segment[index + 1 : index + 2] in ("!", "^") else index + 1
            )
            if end == -1:
                out.append(re.escape(char))
            else:
                body = segment[index + 1 : end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def _single_regex(pattern: str) -> str:
    parts = pattern.split("/")
    out = ""
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            # zero or more whole directories (or, at the end, anything below)
            out += ".*" if last else "(?:[^/]+/)*"
        else:
            out += _segment_regex(part) + ("" if last else "/")
    return out


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regex matching relative paths (``/``-separated) against ``pattern``.

    ``*`` and ``?`` never cross ``/``; ``**`` as a whole segment matches any number of
    directories; ``{a,b}`` alternates. Hidden files are matched like any other.
    """
    alternatives = [_single_regex(p) for p in _expand_braces(pattern)]
    return re.compile("(?:" + "|".join(alternatives) + r")\Z")
