"""What the command prints: human lines by default, JSON with ``--json``.

JSON keeps every byte: a command's output that is not valid UTF-8 is given twice, as text (invalid
bytes replaced) and as ``<name>_base64`` holding the exact bytes.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models import ExecResult, SandboxInfo


def emit(as_json: bool, data: Any, human: str) -> None:
    """Print ``data`` as JSON, or ``human`` (nothing when empty)."""
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    elif human:
        print(human)


def error_line(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"agent-sandbox: {message}", file=sys.stderr)


def bytes_fields(name: str, data: bytes) -> dict[str, str]:
    """``{name: text}``, plus ``{name}_base64`` with the exact bytes when they are not UTF-8."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            name: data.decode("utf-8", errors="replace"),
            f"{name}_base64": base64.b64encode(data).decode("ascii"),
        }


def result_dict(result: ExecResult) -> dict[str, Any]:
    """An :class:`ExecResult` as JSON-ready data."""
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        **bytes_fields("stdout", result.stdout_bytes),
        **bytes_fields("stderr", result.stderr_bytes),
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "duration_s": round(result.duration_s, 4),
    }


def info_dict(info: SandboxInfo) -> dict[str, Any]:
    """A :class:`SandboxInfo` as JSON-ready data."""
    return info.model_dump(mode="json")


def info_row(info: SandboxInfo) -> str:
    """One line of ``agent-sandbox ls``."""
    expires = info.expires_at.isoformat(timespec="seconds") if info.expires_at else "-"
    return f"{info.id}\t{info.provider}\t{info.state}\t{info.image or '-'}\texpires {expires}"


def size(n: float) -> str:
    """``n`` bytes for a person: ``512 B``, ``1.5 MB`` (powers of 1000, as transfer rates are)."""
    units = ("B", "kB", "MB", "GB", "TB")
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n /= 1000
        step += 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"
