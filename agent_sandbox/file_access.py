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
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from . import _scripts
from .derived import error_for
from .errors import (
    FileNotFound,
    FileTooLarge,
    ProviderError,
)
from .models import ExecOptions, ExecResult

if TYPE_CHECKING:
    from .backend import BaseBackend


_SMALL = 64 * 1024
UPLOAD_CHUNK = 1 << 20


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    """``data`` in 1 MiB chunks, for a provider's streamed upload."""
    for start in range(0, len(data), UPLOAD_CHUNK):
        yield data[start : start + UPLOAD_CHUNK]


async def read_stream(chunks: AsyncIterable[bytes], path: str, max_bytes: int) -> bytes:
    """A provider's streamed download of ``path``, stopped with ``FileTooLarge`` past
    ``max_bytes`` (the file grew after its size was checked)."""
    data, total = [], 0
    async for chunk in chunks:
        data.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FileTooLarge(f"read_file {path}: larger than max_bytes={max_bytes}")
    return b"".join(data)


async def read_as_user(backend: BaseBackend, sandbox_id: str, path: str, max_bytes: int) -> bytes:
    """The content of ``path``, read by a command of the sandbox's default user (at most
    ``max_bytes`` + 1 bytes ever cross the wire)."""
    options = ExecOptions(cwd="/", output_limit=max_bytes + 1)
    result = await _run(
        backend, sandbox_id, [_scripts.READ_FILE, path, str(max_bytes + 1)], options
    )
    _raise_for(result, backend, sandbox_id, "read_file", path)
    if len(result.stdout_bytes) > max_bytes:
        raise _too_large(backend, sandbox_id, path, max_bytes)
    return result.stdout_bytes


async def write_as_user(backend: BaseBackend, sandbox_id: str, path: str, data: bytes) -> None:
    """Create or replace ``path`` in place with a command of the sandbox's default user."""
    options = ExecOptions(cwd="/", stdin=data, output_limit=_SMALL)
    argv = [_scripts.WRITE_FILE, path, _parent(path), "write"]
    result = await _run(backend, sandbox_id, argv, options)
    _raise_for(result, backend, sandbox_id, "write_file", path)


async def check_read(backend: BaseBackend, sandbox_id: str, path: str, max_bytes: int) -> int:
    """The size of ``path`` if the sandbox's default user may read it as a regular file of at
    most ``max_bytes``; the typed error otherwise."""
    options = ExecOptions(cwd="/", output_limit=_SMALL)
    result = await _run(backend, sandbox_id, [_scripts.READ_FILE, path, "size"], options)
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
    argv = [_scripts.WRITE_FILE, path, _parent(path), "check"]
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
