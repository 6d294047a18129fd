"""The local provider's file operations, done host-side on the sandbox's directories.

In a jail, a path is resolved the way the jail would resolve it (component by component,
symlinks followed with the jail's idea of ``/``), so a symlink planted in the workspace cannot
lead a host-side read or write out of it; every opened file is checked once more through
``/proc/self/fd``. ``stat`` and ``list_dir`` of a jail place backed by no host directory return
``None``: the backend then answers through a command, as the jail sees it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shutil
import stat
from typing import Any

import anyio.to_thread

from ..errors import FileNotFound, InvalidPath, IsADirectory, PermissionDenied, ProviderError
from ..models import FileInfo, FileType
from . import _jail
from ._store import PROVIDER, Box, Store

_SMALL_FILE = 256 * 1024
_WRITE_CHUNK = 1024 * 1024


class Files:
    """Host-side file operations on the sandboxes of a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _error(self, exc: BaseException, op: str, box: Box, path: str) -> Exception:
        where: dict[str, Any] = {"provider": PROVIDER, "op": op, "sandbox_id": box.id}
        if isinstance(exc, _jail.JailPathError):
            if exc.kind == "missing":
                return FileNotFound(f"no such file or directory: {path}", **where)
            if exc.kind == "loop":
                return InvalidPath(str(exc), **where)
            return PermissionDenied(f"{op} {path}: {exc}", **where)
        if isinstance(exc, IsADirectoryError):
            return IsADirectory(f"is a directory: {path}", **where)
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            return FileNotFound(f"no such file or directory: {path}", **where)
        if isinstance(exc, PermissionError):
            return PermissionDenied(f"{op} {path}: permission denied", **where)
        if isinstance(exc, FileExistsError):
            return InvalidPath(f"{op} {path}: a parent is not a directory", **where)
        if isinstance(exc, OSError) and exc.errno == 30:  # EROFS
            return PermissionDenied(f"{op} {path}: read-only file system", **where)
        return ProviderError(f"{op} {path} failed: {exc}", **where)

    def _locate(self, box: Box, path: str, op: str) -> tuple[str, _jail.Mount | None]:
        """Host path for a sandbox path, and (in a jail) the mount it must stay inside."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidPath(
                f"invalid path: {path!r}", provider=PROVIDER, op=op, sandbox_id=box.id
            )
        if box.fs is None:
            return path, None
        fs = box.fs
        resolved = fs.resolve(_jail.normalise(path))
        located = fs.host_of(resolved)
        if located is None:
            if resolved == "/":
                raise IsADirectoryError(path)
            top = "/" + resolved.split("/")[1]
            if top in ("/proc", "/dev"):
                raise _jail.JailPathError("denied", "not reachable through file operations")
            if op == "write_file":
                raise _jail.JailPathError("denied", "read-only file system")
            raise FileNotFoundError(path)
        mount, host = located
        if op == "write_file" and not mount.writable:
            raise _jail.JailPathError("denied", "read-only file system")
        return host, mount

    def _host(
        self, box: Box, path: str, op: str, *, follow: bool = True, write: bool = False
    ) -> tuple[str, _jail.Mount | None] | None:
        """Host path of a sandbox path for the native file operations, with the mount it must
        stay in; ``None`` for jail places outside every mount (the derived, exec-based
        operation then answers as the jail sees it)."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidPath(
                f"invalid path: {path!r}", provider=PROVIDER, op=op, sandbox_id=box.id
            )
        if box.fs is None:
            return path, None
        fs = box.fs
        located = fs.host_of(fs.resolve(_jail.normalise(path), follow_final=follow))
        if located is None:
            if write:
                raise _jail.JailPathError("denied", "read-only file system")
            return None
        if write and not located[0].writable:
            raise _jail.JailPathError("denied", "read-only file system")
        return located[1], located[0]

    def _open_checked(self, host: str, mount: _jail.Mount | None, flags: int) -> int:
        fd = os.open(host, flags | os.O_CLOEXEC)
        if mount is not None:
            try:
                _jail.check_inside(fd, mount)
            except BaseException:
                os.close(fd)
                raise
        return fd

    async def stat(self, sandbox_id: str, path: str) -> FileInfo | None:
        """Describe one path (not following a final symlink). Raises ``FileNotFound``."""
        box = self.store.live(sandbox_id, "stat")
        try:
            located = self._host(box, path, "stat", follow=False)
            if located is None:
                return None
            fd = self._open_checked(*located, os.O_PATH | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, "stat", box, path) from exc
        return _file_info(path, st)

    async def list_dir(self, sandbox_id: str, path: str) -> list[FileInfo] | None:
        """Entries of a directory, sorted by name. Raises ``FileNotFound``, ``InvalidPath``."""
        box = self.store.live(sandbox_id, "list_dir")
        try:
            located = self._host(box, path, "list_dir")
            if located is None:
                return None
            fd = self._open_checked(*located, os.O_RDONLY | os.O_DIRECTORY)
        except NotADirectoryError as exc:
            raise InvalidPath(
                f"not a directory: {path}", provider=PROVIDER, op="list_dir", sandbox_id=box.id
            ) from exc
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, "list_dir", box, path) from exc
        try:
            return _list_fd(fd, path)
        finally:
            os.close(fd)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its missing parents; an existing directory is fine."""
        box = self.store.live(sandbox_id, "mkdir")
        try:
            located = self._host(box, path, "mkdir", write=True)
            assert located is not None
            host, mount = located
            os.makedirs(host, exist_ok=True)
            os.close(self._open_checked(host, mount, os.O_RDONLY | os.O_DIRECTORY))
        except NotADirectoryError as exc:
            raise InvalidPath(
                f"a parent is not a directory: {path}",
                provider=PROVIDER,
                op="mkdir",
                sandbox_id=box.id,
            ) from exc
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, "mkdir", box, path) from exc

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """Delete a file, or a directory tree with ``recursive``. Raises ``FileNotFound``;
        ``IsADirectory`` for a directory without ``recursive``."""
        box = self.store.live(sandbox_id, "remove")
        try:
            located = self._host(box, path, "remove", follow=False, write=True)
            assert located is not None
            host, mount = located
            if mount is not None and host == mount.host:
                raise _jail.JailPathError("denied", f"{mount.jail} itself cannot be removed")
            parent, name = os.path.split(host)
            dir_fd = self._open_checked(parent, mount, os.O_RDONLY | os.O_DIRECTORY)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, "remove", box, path) from exc
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dir_fd)
            elif not recursive:
                raise IsADirectoryError(path)
            else:
                # Through the checked parent's descriptor, so a swapped path cannot redirect it;
                # rmtree itself works on descriptors below and never follows a symlink.
                tree = f"/proc/self/fd/{dir_fd}/{name}"
                await anyio.to_thread.run_sync(shutil.rmtree, tree)
        except OSError as exc:
            raise self._error(exc, "remove", box, path) from exc
        finally:
            os.close(dir_fd)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        """Whole content of a file. Raises ``FileNotFound``, ``IsADirectory``, ``PermissionDenied``."""
        box = self.store.live(sandbox_id, "read_file")
        try:
            host, mount = self._locate(box, path, "read_file")
            fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, "read_file", box, path) from exc
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(
                    f"is a directory: {path}", provider=PROVIDER, op="read_file", sandbox_id=box.id
                )
            if mount is not None:
                try:
                    _jail.check_inside(fd, mount)
                except _jail.JailPathError as exc:
                    raise self._error(exc, "read_file", box, path) from exc
                if not mount.writable and not _jail.jail_may_read(st):
                    raise PermissionDenied(
                        f"read_file {path}: permission denied",
                        provider=PROVIDER,
                        op="read_file",
                        sandbox_id=box.id,
                    )
            if st.st_size <= _SMALL_FILE:
                return _read_all(fd, st.st_size)
            return await anyio.to_thread.run_sync(_read_all, fd, st.st_size)
        finally:
            os.close(fd)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file atomically (temp file + rename), creating parent directories.

        In a jail, only ``/workspace`` and ``/tmp`` are writable (else ``PermissionDenied``).
        """
        box = self.store.live(sandbox_id, "write_file")
        try:
            host, mount = self._locate(box, path, "write_file")
            if mount is not None and host == mount.host:
                raise IsADirectoryError(path)
            parent, name = os.path.split(host)
            os.makedirs(parent, exist_ok=True)
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, "write_file", box, path) from exc
        try:
            if mount is not None:
                _jail.check_inside(dir_fd, mount)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    raise IsADirectoryError(path)
            if len(data) <= _SMALL_FILE:
                _write_atomic(dir_fd, name, data)
            else:
                await anyio.to_thread.run_sync(_write_atomic, dir_fd, name, data)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, "write_file", box, path) from exc
        finally:
            os.close(dir_fd)


_KINDS: dict[int, FileType] = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
}


def _file_info(path: str, st: os.stat_result) -> FileInfo:
    return FileInfo(
        path=path,
        name=posixpath.basename(path.rstrip("/")) or "/",
        type=_KINDS.get(stat.S_IFMT(st.st_mode), "other"),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime=st.st_mtime,
    )


def _list_fd(dir_fd: int, path: str) -> list[FileInfo]:
    base = path.rstrip("/")
    entries = []
    with os.scandir(dir_fd) as listing:
        for entry in listing:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while listing
                continue
            entries.append(_file_info(f"{base}/{entry.name}", st))
    return sorted(entries, key=lambda e: e.name)


def _read_all(fd: int, size_hint: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, max(size_hint, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _write_atomic(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``name`` in chunks, then rename it into place."""
    tmp = f".{name}.{secrets.token_hex(4)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        with contextlib.suppress(FileNotFoundError):
            # Replacing a file keeps its permission bits (an executable stays executable).
            os.fchmod(fd, stat.S_IMODE(os.stat(name, dir_fd=dir_fd).st_mode))
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:_WRITE_CHUNK])
            view = view[written:]
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
