"""``agent-sandbox cp``: a file or a tree into a sandbox or out of it.

One side is written ``ID:PATH`` (inside the sandbox, relative to its workdir), the other is a local
path. A file is streamed (it never sits whole in memory) and a download lands under a temporary
name first, so a failed copy leaves no half-written file behind. A local side that is missing or
cannot be written is a one-line error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anyio

from ..errors import ConfigError, FileNotFound, PermissionDenied, SandboxError
from ..sandbox import Sandbox
from .commands import connect
from .output import emit, size
from .progress import Progress, progress, wanted


def split_remote(value: str) -> tuple[str | None, str]:
    """``("ID", "PATH")`` for ``ID:PATH``; ``(None, value)`` for a local path."""
    head, sep, tail = value.partition(":")
    if sep and head and "/" not in head and not os.path.exists(value):
        return head, tail or "."
    return None, value


def _local_error(exc: OSError, path: Path, op: str) -> SandboxError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        return FileNotFound(f"{path}: {reason}", op=op)
    if isinstance(exc, PermissionError):
        return PermissionDenied(f"{path}: {reason}", op=op)
    return SandboxError(f"{path}: {reason}", op=op)


def _tree_size(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # vanished while counting: the copy itself reports what matters
    return total


async def _upload(sb: Sandbox, local: Path, remote: str, shown: Progress) -> int:
    try:
        is_dir = await anyio.Path(local).is_dir()
        if is_dir:
            total = await anyio.to_thread.run_sync(_tree_size, local)
        else:
            total = (await anyio.Path(local).stat()).st_size
    except OSError as exc:
        raise _local_error(exc, local, "cp") from exc
    shown.total = total
    if is_dir:
        await sb.upload(local, remote)
        return total
    target = remote.rstrip("/") + "/" + local.name if remote.endswith("/") else remote

    def sent(done: int) -> None:
        shown.done = done

    try:
        await sb.upload_file(local, target, on_progress=sent)
    except OSError as exc:
        raise _local_error(exc, local, "cp") from exc
    return total


async def _download(sb: Sandbox, remote: str, local: Path, shown: Progress) -> int:
    info = await sb.stat(remote)
    if info.type == "dir":
        try:
            await anyio.Path(local).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _local_error(exc, local, "cp") from exc
        await sb.download(remote, local)
        return await anyio.to_thread.run_sync(_tree_size, local)
    target = local / info.name if await anyio.Path(local).is_dir() else local
    if not await anyio.Path(target.parent).is_dir():
        raise FileNotFound(
            f"{target}: cannot write there, {target.parent} is not a directory", op="cp"
        )
    shown.total = info.size

    def received(done: int) -> None:
        shown.done = done

    try:
        await sb.download_file(remote, target, on_progress=received)
    except OSError as exc:
        raise _local_error(exc, target, "cp") from exc
    return shown.done


async def cmd_cp(args: argparse.Namespace) -> int:
    """``cp SRC ID:DST`` or ``cp ID:SRC DST``."""
    src_id, src = split_remote(args.src)
    dst_id, dst = split_remote(args.dst)
    if (src_id is None) == (dst_id is None):
        raise ConfigError("cp needs exactly one side written SANDBOX_ID:PATH")
    sandbox_id = src_id or dst_id
    assert sandbox_id is not None
    sb = await connect(args, sandbox_id)
    try:
        label = f"copying {args.src} to {args.dst}"
        async with progress(label, enabled=wanted(args.json)) as shown:
            if dst_id is not None:
                copied = await _upload(sb, Path(src), dst, shown)
            else:
                copied = await _download(sb, src, Path(dst), shown)
            elapsed = shown.elapsed
        rate = f"{size(copied / elapsed)}/s" if elapsed > 0 else "-"
        shown.report(f"copied {size(copied)} in {elapsed:.1f} s ({rate})")
    finally:
        await sb.close()
    emit(args.json, {"copied": args.src, "to": args.dst, "bytes": copied}, "")
    return 0
