"""The local provider's file operations, done host-side on the sandbox's directories.

In a jail, a path is resolved the way the jail would resolve it (component by component,
symlinks followed with the jail's idea of ``/``), so a symlink planted in the workspace cannot
lead a host-side read or write out of it; every opened file is checked once more through
``/proc/self/fd``. ``stat`` and ``list_dir`` of a jail place backed by no host directory return
``None``: the backend then answers through a command, as the jail sees it.

Every operation acts as the sandbox's user (:mod:`._access`): what that user's command may not
do is refused here too, decided from the opened inode itself. ``read_file`` reads regular files
only, through a descriptor that never blocks, and at most ``max_bytes``; ``write_file`` replaces a
file atomically, keeping its mode and owner.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import secrets
import shutil
import stat
from typing import Any

import anyio.to_thread

from ..errors import (
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    ProviderError,
    SandboxError,
)
from ..models import FileInfo, FileType
from . import _jail
from ._access import READ, SEARCH, WRITE, User, sandbox_user
from ._store import PROVIDER, Box, Store

_SMALL_FILE = 256 * 1024
_WRITE_CHUNK = 1024 * 1024


class Files:
    """Host-side file operations on the sandboxes of a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _error(self, exc: BaseException, op: str, box: Box, path: str) -> Exception:
        where: dict[str, Any] = {"provider": PROVIDER, "op": op, "sandbox_id": box.id}
        if isinstance(exc, SandboxError):
            return exc
        if isinstance(exc, _jail.JailPathError):
            if exc.kind == "missing":
                return FileNotFound(f"no such file or directory: {path}", **where)
            if exc.kind == "loop":
                return InvalidPath(str(exc), **where)
            return PermissionDenied(f"{op} {path}: {exc}", **where)
        if isinstance(exc, IsADirectoryError):
            return IsADirectory(f"is a directory: {path}", **where)
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            if self._behind_closed_door(box, path):
                return PermissionDenied(f"{op} {path}: permission denied", **where)
            return FileNotFound(f"no such file or directory: {path}", **where)
        if isinstance(exc, PermissionError):
            return PermissionDenied(f"{op} {path}: permission denied", **where)
        if isinstance(exc, FileExistsError):
            return InvalidPath(f"{op} {path}: a parent is not a directory", **where)
        if isinstance(exc, OSError) and exc.errno == errno.EROFS:
            return PermissionDenied(f"{op} {path}: read-only file system", **where)
        if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
            return InvalidPath(f"{op} {path}: a symbolic link where a directory was", **where)
        return ProviderError(f"{op} {path} failed: {exc}", **where)

    def _locate(self, box: Box, path: str, op: str) -> tuple[str, _jail.Mount | None]:
        """Host path for a sandbox path, and (in a jail) the mount it must stay inside."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidPath(
                f"invalid path: {path!r}", provider=PROVIDER, op=op, sandbox_id=box.id
            )
        if box.fs is None:
            # unconfined: a write goes through a final symlink, as a command's would
            return (os.path.realpath(path) if op == "write_file" else path), None
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

    def _user(self, box: Box) -> User:
        return sandbox_user(box.isolation, box.confinement.uid)

    def _denied(self, op: str, box: Box, path: str) -> PermissionDenied:
        return PermissionDenied(
            f"{op} {path}: permission denied", provider=PROVIDER, op=op, sandbox_id=box.id
        )

    def _reachable(self, user: User, fd: int, mount: _jail.Mount | None) -> bool:
        """Whether the user may search every directory from the mount (without one, from
        ``/``) down to ``fd``'s parent. Without a mount and as this process's own user, the
        kernel checked that when the path was opened."""
        if mount is None and user.uid == os.geteuid():
            return True
        top = mount.host if mount is not None else "/"
        real = os.readlink(f"/proc/self/fd/{fd}")
        below = real[len(top) :].strip("/").split("/")[:-1]
        directory = top
        for part in ["", *below]:
            directory = os.path.join(directory, part) if part else directory
            if not user.may(os.stat(directory), SEARCH):
                return False
        return True

    def _behind_closed_door(self, box: Box, path: str) -> bool:
        """Whether a missing ``path`` lies below a directory the sandbox's user may not search:
        its own command gets ``EACCES`` there, so the answer must not tell what exists (this
        process, as root, would see through the door)."""
        user = self._user(box)
        if user.uid == os.geteuid():
            return False  # the kernel checked the path as that user
        try:
            located = self._host(box, path, "stat", follow=False)
        except (OSError, SandboxError, _jail.JailPathError):
            return False
        if located is None:
            return False
        host, mount = located
        directory = mount.host if mount is not None else "/"
        for part in ["", *host[len(directory) :].strip("/").split("/")[:-1]]:
            directory = os.path.join(directory, part) if part else directory
            try:
                st = os.stat(directory)
            except OSError:
                return False  # the way ends here: the path is missing indeed
            if not stat.S_ISDIR(st.st_mode):
                return False
            if not user.may(st, SEARCH):
                return True
        return False

    def _open_dir(
        self, user: User, directory: str, mount: _jail.Mount | None, *, create: bool
    ) -> int:
        """A descriptor of ``directory``, its missing directories created as the user (0755,
        the user's) when ``create``. In a jail the walk starts at the mount and follows no
        symlink, each step allowed only where the user may search (and create)."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        if mount is not None:
            top = mount.host
            fd = os.open(top, flags)
        else:
            # Unconfined: the path is followed as a command would, down to what exists; the
            # missing directories are then made as in a jail (owned by the user).
            directory = top = os.path.abspath(directory)
            while create and not os.path.isdir(top):
                top = os.path.dirname(top)
            fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in directory[len(top) :].split("/"):
                if not part:
                    continue
                here = os.fstat(fd)
                if not user.may(here, SEARCH):
                    raise PermissionError(errno.EACCES, "permission denied", directory)
                try:
                    below = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    if not user.may(here, WRITE | SEARCH):
                        raise PermissionError(
                            errno.EACCES, "permission denied", directory
                        ) from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                        owner = user.owns_new_files()
                        if owner is not None:
                            os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                    below = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = below
            if mount is not None:
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
                if not self._reachable(self._user(box), fd, located[1]):
                    raise self._denied("stat", box, path)
            finally:
                os.close(fd)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, "stat", box, path) from exc
        return _file_info(path, st)

    async def list_dir(self, sandbox_id: str, path: str) -> list[FileInfo] | None:
        """Entries of a directory, sorted by name. Raises ``FileNotFound``, ``InvalidPath``,
        ``PermissionDenied`` where the user may not read the directory."""
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
            user = self._user(box)
            if not user.may(os.fstat(fd), READ | SEARCH) or not self._reachable(
                user, fd, located[1]
            ):
                raise self._denied("list_dir", box, path)
            return _list_fd(fd, path)
        finally:
            os.close(fd)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """Create a directory and its missing parents as the user; an existing directory is
        fine."""
        box = self.store.live(sandbox_id, "mkdir")
        try:
            located = self._host(box, path, "mkdir", write=True)
            assert located is not None
            host, mount = located
            os.close(self._open_dir(self._user(box), host, mount, create=True))
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
        ``IsADirectory`` for a directory without ``recursive``; ``PermissionDenied`` where the
        user may not remove entries of the directory holding it."""
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
            user = self._user(box)
            if not user.may_replace(os.fstat(dir_fd), st) or not self._reachable(
                user, dir_fd, mount
            ):
                raise self._denied("remove", box, path)
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

    async def read_file(self, sandbox_id: str, path: str, max_bytes: int) -> bytes:
        """Content of a regular file the user may read, at most ``max_bytes``. Raises
        ``FileNotFound``, ``IsADirectory``, ``PermissionDenied``, ``FileTooLarge``, and
        ``InvalidPath`` for a FIFO, device or socket (never opened for reading)."""
        op = "read_file"
        box = self.store.live(sandbox_id, op)
        try:
            host, mount = self._locate(box, path, op)
            handle = self._open_checked(host, mount, os.O_PATH)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, op, box, path) from exc
        where: dict[str, Any] = {"provider": PROVIDER, "op": op, "sandbox_id": box.id}
        try:
            st = os.fstat(handle)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(f"is a directory: {path}", **where)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidPath(
                    f"{op} {path}: not a regular file (a FIFO, device or socket)", **where
                )
            user = self._user(box)
            if not user.may(st, READ) or not self._reachable(user, handle, mount):
                raise self._denied(op, box, path)
            if st.st_size > max_bytes:
                raise _too_large(path, max_bytes, where)
            # Reopened through the checked descriptor: the very inode judged above.
            fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, op, box, path) from exc
        finally:
            os.close(handle)
        try:
            if st.st_size <= _SMALL_FILE:
                data = _read_at_most(fd, max_bytes + 1)
            else:
                data = await anyio.to_thread.run_sync(_read_at_most, fd, max_bytes + 1)
        except OSError as exc:
            raise self._error(exc, op, box, path) from exc
        finally:
            os.close(fd)
        if len(data) > max_bytes:  # it grew after the check
            raise _too_large(path, max_bytes, where)
        return data

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a file as the user, atomically (temp file + rename), creating
        parent directories. A replaced file keeps its mode and owner.

        In a jail, only ``/workspace`` and ``/tmp`` are writable (else ``PermissionDenied``).
        """
        op = "write_file"
        box = self.store.live(sandbox_id, op)
        user = self._user(box)
        try:
            host, mount = self._locate(box, path, op)
            if mount is not None and host == mount.host:
                raise IsADirectoryError(path)
            parent, name = os.path.split(host)
            dir_fd = self._open_dir(user, parent, mount, create=True)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, op, box, path) from exc
        try:
            directory = os.fstat(dir_fd)
            try:
                old: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is None:
                if not user.may(directory, WRITE | SEARCH):
                    raise self._denied(op, box, path)
                mode, owner = 0o644, user.owns_new_files()
            else:
                if stat.S_ISDIR(old.st_mode):
                    raise IsADirectoryError(path)
                if not stat.S_ISREG(old.st_mode):
                    raise InvalidPath(
                        f"{op} {path}: not a regular file (a FIFO, device, socket or a link "
                        "that appeared meanwhile)",
                        provider=PROVIDER,
                        op=op,
                        sandbox_id=box.id,
                    )
                if not user.may(old, WRITE) or not user.may_replace(directory, old):
                    raise self._denied(op, box, path)
                mode = stat.S_IMODE(old.st_mode)
                if not user.privileged:  # as the kernel does on a write without CAP_FSETID
                    mode &= ~(stat.S_ISUID | stat.S_ISGID)
                owner = (old.st_uid, old.st_gid) if os.geteuid() == 0 else None
            if len(data) <= _SMALL_FILE:
                _write_atomic(dir_fd, name, data, mode, owner)
            else:
                await anyio.to_thread.run_sync(_write_atomic, dir_fd, name, data, mode, owner)
        except (OSError, _jail.JailPathError) as exc:
            raise self._error(exc, op, box, path) from exc
        finally:
            os.close(dir_fd)


def _too_large(path: str, max_bytes: int, where: dict[str, Any]) -> FileTooLarge:
    return FileTooLarge(
        f"read_file {path}: larger than max_bytes={max_bytes}; pass a larger max_bytes or "
        "use download()",
        **where,
    )


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


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of an open file, read in chunks (one copy kept)."""
    out = io.BytesIO()
    while out.tell() < limit:
        chunk = os.read(fd, min(limit - out.tell(), 1 << 20))
        if not chunk:
            break
        out.write(chunk)
    return out.getvalue()


def _write_atomic(
    dir_fd: int, name: str, data: bytes, mode: int, owner: tuple[int, int] | None
) -> None:
    """Write ``data`` to a temp file beside ``name`` in chunks, give it ``mode`` (and ``owner``),
    then rename it into place."""
    tmp = f".{name}.{secrets.token_hex(4)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:_WRITE_CHUNK])
            view = view[written:]
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
