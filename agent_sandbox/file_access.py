"""File operations as the sandbox's default user, derived from that user's own commands.

The rule every provider follows: a file operation acts as the sandbox's default user. What that
user's own command would be refused (reading a file it may not read, replacing a read-only file,
creating a file in a directory it may not write) raises ``PermissionDenied``; replacing a file
keeps its mode; a directory is never replaced by a file (``IsADirectory``); ``read_file`` reads
regular files only (a FIFO or device is ``InvalidPath``, never a blocked read) and at most
``max_bytes`` (``FileTooLarge``).

A provider whose native file API runs as a more privileged user (the Docker engine's archive API,
E2B's envd and Daytona's toolbox all act as root) uses this module: it either moves the bytes
through a command of the sandbox's user (:func:`read_as_user`, :func:`write_as_user`) or asks such
a command first and then moves them natively (:func:`check_read`, :func:`check_write`). The
commands are POSIX ``sh`` with ``head``, ``cat``, ``mkdir`` and ``stat`` (coreutils or busybox);
paths travel as arguments, never spliced into the script.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any

from .errors import (
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    SandboxError,
)
from .models import ExecOptions, ExecResult

if TYPE_CHECKING:
    from .backend import BaseBackend

_DENIED = 13
_MISSING = 44
_DIRECTORY = 46
_NOT_REGULAR = 47

# $1 the file, $2 "size" (print its size) or the most bytes to print.
_READ = f"""
p=$1
if [ -d "$p" ]; then exit {_DIRECTORY}; fi
if [ -e "$p" ]; then
  [ -f "$p" ] || exit {_NOT_REGULAR}
  [ -r "$p" ] || exit {_DENIED}
elif [ -L "$p" ]; then
  exit {_MISSING}
else
  exec head -c 0 -- "$p"
fi
if [ "$2" = size ]; then exec stat -L -c %s -- "$p"; fi
exec head -c "$2" -- "$p"
"""

# $1 the file, $2 its directory, $3 "check" (print the file's mode, or "new") or "write" (stdin).
_WRITE = f"""
p=$1
if [ -d "$p" ]; then exit {_DIRECTORY}; fi
if [ -e "$p" ]; then
  [ -f "$p" ] || exit {_NOT_REGULAR}
  if [ "$3" = check ]; then
    [ -w "$p" ] || exit {_DENIED}
    exec stat -L -c %a -- "$p"
  fi
else
  mkdir -p -- "$2" || exit 1
  if [ "$3" = check ]; then
    [ -w "$2" ] && [ -x "$2" ] || exit {_DENIED}
    echo new
    exit 0
  fi
fi
exec cat > "$p"
"""

_SMALL = 64 * 1024


async def read_as_user(backend: BaseBackend, sandbox_id: str, path: str, max_bytes: int) -> bytes:
    """The content of ``path``, read by a command of the sandbox's default user (at most
    ``max_bytes`` + 1 bytes ever cross the wire)."""
    options = ExecOptions(cwd="/", output_limit=max_bytes + 1)
    result = await _run(backend, sandbox_id, [_READ, path, str(max_bytes + 1)], options)
    _raise_for(result, backend, sandbox_id, "read_file", path)
    if len(result.stdout_bytes) > max_bytes:
        raise _too_large(backend, sandbox_id, path, max_bytes)
    return result.stdout_bytes


async def write_as_user(backend: BaseBackend, sandbox_id: str, path: str, data: bytes) -> None:
    """Create or replace ``path`` in place with a command of the sandbox's default user."""
    options = ExecOptions(cwd="/", stdin=data, output_limit=_SMALL)
    argv = [_WRITE, path, _parent(path), "write"]
    result = await _run(backend, sandbox_id, argv, options)
    _raise_for(result, backend, sandbox_id, "write_file", path)


async def check_read(backend: BaseBackend, sandbox_id: str, path: str, max_bytes: int) -> int:
    """The size of ``path`` if the sandbox's default user may read it as a regular file of at
    most ``max_bytes``; the typed error otherwise."""
    options = ExecOptions(cwd="/", output_limit=_SMALL)
    result = await _run(backend, sandbox_id, [_READ, path, "size"], options)
    _raise_for(result, backend, sandbox_id, "read_file", path)
    size = result.stdout.strip()
    if not size.isdigit():
        raise FileNotFound(f"no such file or directory: {path}", **_where(backend, sandbox_id))
    if int(size) > max_bytes:
        raise _too_large(backend, sandbox_id, path, max_bytes)
    return int(size)


async def check_write(backend: BaseBackend, sandbox_id: str, path: str) -> int | None:
    """The mode of ``path`` if the sandbox's default user may replace it, ``None`` if it is new
    and may be created (its parent directories are created as that user); the typed error
    otherwise."""
    options = ExecOptions(cwd="/", output_limit=_SMALL)
    argv = [_WRITE, path, _parent(path), "check"]
    result = await _run(backend, sandbox_id, argv, options)
    _raise_for(result, backend, sandbox_id, "write_file", path)
    answer = result.stdout.strip()
    if answer == "new":
        return None
    try:
        return int(answer, 8)
    except ValueError:
        raise ProviderError(
            f"write_file {path}: unexpected answer from the sandbox: {answer[:80]!r}",
            **_where(backend, sandbox_id),
        ) from None


def _parent(path: str) -> str:
    return posixpath.dirname(posixpath.normpath(path)) or "/"


async def _run(
    backend: BaseBackend, sandbox_id: str, args: list[str], options: ExecOptions
) -> ExecResult:
    return await backend.exec(sandbox_id, ["sh", "-c", args[0], "sh", *args[1:]], options)


def _where(backend: BaseBackend, sandbox_id: str) -> dict[str, Any]:
    return {"provider": backend.name, "sandbox_id": sandbox_id}


def _too_large(backend: BaseBackend, sandbox_id: str, path: str, max_bytes: int) -> FileTooLarge:
    return FileTooLarge(
        f"read_file {path}: larger than max_bytes={max_bytes}; pass a larger max_bytes or "
        "use download()",
        op="read_file",
        **_where(backend, sandbox_id),
    )


def _raise_for(
    result: ExecResult, backend: BaseBackend, sandbox_id: str, op: str, path: str
) -> None:
    """Raise the typed error a failed file command stands for."""
    if result.ok:
        return
    raise error_for(result.exit_code, result.stderr, op, path, **_where(backend, sandbox_id))


def error_for(code: int, stderr: str, op: str, path: str, **where: Any) -> SandboxError:
    """The typed error of a file command that exited with ``code`` printing ``stderr``."""
    where["op"] = op
    message = stderr.strip()[:500]
    if code == _DIRECTORY:
        return IsADirectory(f"is a directory: {path}", **where)
    if code == _NOT_REGULAR:
        return InvalidPath(f"{op} {path}: not a regular file (a FIFO, device or socket)", **where)
    if code == _DENIED or "ermission denied" in message or "Read-only file system" in message:
        return PermissionDenied(f"{op} {path}: permission denied", **where)
    if code == _MISSING or "No such file" in message or "Not a directory" in message:
        return FileNotFound(f"no such file or directory: {path}", **where)
    if "File exists" in message:
        return InvalidPath(f"{op} {path}: a parent is not a directory", **where)
    if "No space left" in message or "Disk quota" in message:
        return QuotaExceeded(f"{op} {path}: {message}", **where)
    return ProviderError(f"{op} {path} failed: {message or f'exit status {code}'}", **where)
