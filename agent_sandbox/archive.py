"""Extracting a tar archive that came out of a sandbox, treating it as hostile.

The rules are those of Python's tarfile ``data`` filter, or stricter, implemented here so they
hold on every supported Python (3.10's early patch releases have no filter):

* member names are relative, with no ``..`` component and at most 4096 bytes;
* regular files, directories, symlinks and hard links only: device files, FIFOs, sparse and
  unknown member types are refused;
* a symlink's target is relative, climbs (``..``) only at its start and stays inside the
  extracted tree; a hard link names a regular file extracted earlier from the same archive;
* no ownership is applied; a file keeps its permission bits without setuid, setgid, sticky and
  group/other write, the owner may always read and write it, and group/other lose the exec bit
  when the owner lacks it; directories get the default mode;
* the archive is bounded (:class:`ArchiveLimits`): total bytes, member count, header size.

Extraction never follows a symlink: every path is walked one component at a time from an open
directory with ``O_NOFOLLOW``, so neither a member extracted earlier nor another process racing
in the tree can redirect a write. Members land in a fresh private directory first and are moved
into the target only once the whole archive passed, so a refused archive leaves the target as it
was. Merging into an existing target keeps what the archive does not replace, and refuses to
replace a directory by a file or a file by a directory.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import FileNotFound, InvalidPath, IsADirectory, UnsafeArchive

_MAX_NAME = 4096
_MAX_HEADER = 1 << 20
_CHUNK = 1 << 16
_SPOOL_IN_MEMORY = 16 << 20
_TMP_PREFIX = ".agent-sandbox-download-"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC
# Errors the archive's names cause (the rest, such as a full disk, are the host's and stay OSError).
_NAME_ERRORS = {
    errno.ENAMETOOLONG,
    errno.EILSEQ,
    errno.EINVAL,
    errno.EMLINK,
    errno.ELOOP,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on an archive read from a sandbox."""

    max_bytes: int = 4 << 30
    """Size of the archive itself (4 GiB): bounds the host disk a download may fill."""
    max_members: int = 1_000_000
    """Number of members (files, directories, links)."""


DEFAULT_LIMITS = ArchiveLimits()


class ArchiveSpool:
    """Collects an archive's bytes (in memory, then in a temporary file) up to a limit.

    ``write`` raises :class:`~agent_sandbox.errors.UnsafeArchive` once the archive grows past
    ``limits.max_bytes``; :meth:`extract` then unpacks it. Use it as a context manager.
    """

    def __init__(self, limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.size = 0
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by close()
            max_size=_SPOOL_IN_MEMORY
        )

    def __enter__(self) -> ArchiveSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, chunk: bytes) -> None:
        """Append a chunk of the archive."""
        self.size += len(chunk)
        if self.size > self.limits.max_bytes:
            raise UnsafeArchive(
                f"the archive is larger than the limit of {self.limits.max_bytes} bytes",
                op="download",
            )
        self._file.write(chunk)

    def extract(self, target: str | Path) -> None:
        """Unpack the collected archive into ``target`` (see :func:`extract_tar`)."""
        self._file.seek(0)
        extract_tar(self._file, target, self.limits)

    def close(self) -> None:
        """Drop the collected bytes."""
        self._file.close()


def extract_tar(
    source: IO[bytes], target: str | Path, limits: ArchiveLimits = DEFAULT_LIMITS
) -> None:
    """Unpack the uncompressed tar in the seekable file ``source`` into ``target``.

    ``target`` is created when missing; an existing one is merged into (see the module's
    docstring for the rules). Raises :class:`~agent_sandbox.errors.UnsafeArchive` for an archive
    that breaks a rule or a limit (the target is then left as it was), ``IsADirectory`` or
    ``InvalidPath`` when the archive would replace a directory by a file or a file by a
    directory of the target.
    """
    target = Path(target)
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InvalidPath(f"not a directory: {target}", op="download") from None
    scratch = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target))
    try:
        with _open_dir(str(scratch)) as scratch_fd:
            _unpack(source, scratch_fd, limits)
            with _open_dir(str(target), follow=True) as target_fd:
                _check_merge(scratch_fd, target_fd, "", scratch.name)
                links = _merge(scratch_fd, target_fd, "")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise
    os.rmdir(scratch)
    _check_placed_links(target, links)


# -- unpacking into the private directory ------------------------------------------------------


class _CappedReader:
    """The archive file as tarfile sees it: a read larger than any header or data chunk could
    need is a pax or GNU long-name header claiming megabytes, refused before it is allocated."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _MAX_HEADER:
            raise UnsafeArchive("an archive header is larger than 1 MiB", op="download")
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _unpack(source: IO[bytes], root_fd: int, limits: ArchiveLimits) -> None:
    count = 0
    try:
        with tarfile.open(fileobj=_CappedReader(source), mode="r:") as tar:  # type: ignore[call-overload]
            for member in iter(tar.next, None):
                count += 1
                if count > limits.max_members:
                    raise UnsafeArchive(
                        f"the archive has more than {limits.max_members} members", op="download"
                    )
                _unpack_member(tar, member, root_fd)
                # tarfile keeps every header it read; one at a time is all we need.
                tar.members.clear()
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"the archive is malformed: {exc}", op="download") from exc


def _refuse(member: tarfile.TarInfo, why: str) -> UnsafeArchive:
    return UnsafeArchive(f"archive member {member.name!r} refused: {why}", op="download")


def _parts(member: tarfile.TarInfo) -> list[str]:
    """The member's path as components, after checking it stays inside the root."""
    name = member.name
    if len(os.fsencode(name)) > _MAX_NAME:
        raise _refuse(member, f"name longer than {_MAX_NAME} bytes")
    if name.startswith("/"):
        raise _refuse(member, "absolute name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(member, "'..' in the name")
    return parts


def _unpack_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int) -> None:
    parts = _parts(member)
    if not parts:
        if not member.isdir():
            raise _refuse(member, "the archive's root is not a directory")
        return
    if member.ischr() or member.isblk() or member.isfifo():
        raise _refuse(member, "device files and FIFOs are not extracted")
    if member.issparse():
        raise _refuse(member, "sparse files are not extracted")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise _refuse(member, f"unknown member type {member.type!r}")
    with _walk(root_fd, parts[:-1], member, create=True) as parent_fd:
        name = parts[-1]
        try:
            if member.isdir():
                _make_dir(parent_fd, name, member)
            elif member.issym():
                _check_symlink(member, parts)
                _replace(parent_fd, name, member)
                os.symlink(member.linkname, name, dir_fd=parent_fd)
            elif member.islnk():
                _make_hardlink(root_fd, parent_fd, parts, member)
            else:
                _make_file(tar, parent_fd, name, member)
        except OSError as exc:
            if exc.errno not in _NAME_ERRORS:
                raise
            raise _refuse(member, os.strerror(exc.errno)) from exc


@contextlib.contextmanager
def _open_dir(path: str, dir_fd: int | None = None, follow: bool = False) -> Iterator[int]:
    flags = _DIR_FLAGS & ~_NOFOLLOW if follow else _DIR_FLAGS
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _walk(root_fd: int, parts: list[str], member: tarfile.TarInfo, create: bool) -> Iterator[int]:
    """An open descriptor of the directory ``parts`` below ``root_fd``, never through a symlink."""
    fd = os.dup(root_fd)
    try:
        for depth, part in enumerate(parts, 1):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EMLINK):
                    where = "/".join(parts[:depth])
                    raise _refuse(member, f"{where!r} is not a directory of the archive") from exc
                raise
            os.close(fd)
            fd = next_fd
        yield fd
    finally:
        os.close(fd)


def _replace(parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
    """Make room for ``name``: a later member replaces an earlier file or link, not a directory."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise _refuse(member, "it would replace a directory")
    os.unlink(name, dir_fd=parent_fd)


def _make_dir(parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
    try:
        os.mkdir(name, dir_fd=parent_fd)
    except FileExistsError:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(member, "it would replace a file or link") from None


def _check_symlink(member: tarfile.TarInfo, parts: list[str]) -> None:
    """A symlink's target climbs only at its start and stays inside the root.

    Resolving such a link from its (real) parent directory never leaves the tree: the leading
    ``..`` steps stop at or below the root, and the names after them only descend, through
    directories or through other links that obey the same rule.
    """
    target = member.linkname
    if not target or target.startswith("/"):
        raise _refuse(member, f"symlink to an absolute path {target!r}")
    steps = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(steps) and steps[ups] == "..":
        ups += 1
    if ".." in steps[ups:]:
        raise _refuse(member, f"symlink target {target!r} climbs after descending")
    if ups > len(parts) - 1:
        raise _refuse(member, f"symlink target {target!r} leaves the extracted tree")


def _make_hardlink(root_fd: int, parent_fd: int, parts: list[str], member: tarfile.TarInfo) -> None:
    """A hard link names a regular file extracted earlier, by its path from the archive root
    (as tarfile resolves it), never from the member's own directory."""
    source = member.linkname
    source_parts = [p for p in source.split("/") if p not in ("", ".")]
    if not source_parts or source.startswith("/") or ".." in source_parts:
        raise _refuse(member, f"hard link to {source!r} outside the archive")
    with _walk(root_fd, source_parts[:-1], member, create=False) as source_fd:
        found = _lstat(source_parts[-1], source_fd)
        if found is None or not stat.S_ISREG(found.st_mode):
            raise _refuse(member, f"hard link to {source!r}, not a file extracted before it")
        if source_parts == parts:
            return
        _replace(parent_fd, parts[-1], member)
        os.link(
            source_parts[-1],
            parts[-1],
            src_dir_fd=source_fd,
            dst_dir_fd=parent_fd,
            follow_symlinks=False,
        )


def _file_mode(mode: int) -> int:
    """The ``data`` filter's file mode: no setuid/setgid/sticky or group/other write; owner
    read and write; no exec for group/other when the owner has none."""
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _make_file(tar: tarfile.TarFile, parent_fd: int, name: str, member: tarfile.TarInfo) -> None:
    _replace(parent_fd, name, member)
    data = tar.extractfile(member)
    if data is None:  # pragma: no cover - a regular member always has a file object
        raise _refuse(member, "no content")
    fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            while chunk := data.read(_CHUNK):
                out.write(chunk)
        os.fchmod(fd, _file_mode(member.mode))
        with contextlib.suppress(OSError, OverflowError, ValueError):
            os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


# -- moving the checked tree into the target ---------------------------------------------------


def _entries(fd: int) -> list[tuple[str, os.stat_result]]:
    with os.scandir(fd) as it:
        names = [entry.name for entry in it]
    return [(n, os.stat(n, dir_fd=fd, follow_symlinks=False)) for n in sorted(names)]


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _check_merge(src_fd: int, dst_fd: int, prefix: str, scratch: str) -> None:
    """Refuse, before anything moves, to replace a directory by a file or a file by a directory."""
    for name, st in _entries(src_fd):
        if not prefix and name == scratch:
            raise UnsafeArchive(f"archive member {name!r} collides with the download's own folder")
        there = _lstat(name, dst_fd)
        if there is None:
            continue
        path = prefix + name
        if stat.S_ISDIR(st.st_mode) != stat.S_ISDIR(there.st_mode):
            if stat.S_ISDIR(there.st_mode):
                raise IsADirectory(
                    f"the download would replace the directory {path!r} by a file", op="download"
                )
            raise InvalidPath(
                f"the download would replace {path!r} (not a directory) by a directory",
                op="download",
            )
        if stat.S_ISDIR(st.st_mode):
            with _open_dir(name, src_fd) as sub_src, _open_dir(name, dst_fd) as sub_dst:
                _check_merge(sub_src, sub_dst, path + "/", scratch)


def _merge(src_fd: int, dst_fd: int, prefix: str) -> list[str]:
    """Move every entry of ``src_fd`` into ``dst_fd``; return the symlinks placed."""
    links: list[str] = []
    for name, st in _entries(src_fd):
        there = _lstat(name, dst_fd)
        if stat.S_ISDIR(st.st_mode) and there is not None and stat.S_ISDIR(there.st_mode):
            with _open_dir(name, src_fd) as sub_src, _open_dir(name, dst_fd) as sub_dst:
                links += _merge(sub_src, sub_dst, prefix + name + "/")
            os.rmdir(name, dir_fd=src_fd)
            continue
        os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        if stat.S_ISLNK(st.st_mode):
            links.append(prefix + name)
        elif stat.S_ISDIR(st.st_mode):
            links += _links_below(dst_fd, name, prefix + name + "/")
    return links


def _links_below(parent_fd: int, name: str, prefix: str) -> list[str]:
    links: list[str] = []
    with _open_dir(name, parent_fd) as fd:
        for child, st in _entries(fd):
            if stat.S_ISLNK(st.st_mode):
                links.append(prefix + child)
            elif stat.S_ISDIR(st.st_mode):
                links += _links_below(fd, child, prefix + child + "/")
    return links


def _check_placed_links(target: Path, links: list[str]) -> None:
    """The archive's links were checked against the archive alone; once merged, one could
    resolve through a symlink the target already had. Remove any that now leads outside."""
    root = os.path.realpath(target)
    escaped = []
    for link in links:
        path = os.path.join(target, link)
        resolved = os.path.realpath(path)
        if resolved != root and not resolved.startswith(root + os.sep):
            os.unlink(path)
            escaped.append(link)
    if escaped:
        raise UnsafeArchive(
            f"symlinks removed after the download because they lead outside {str(target)!r} "
            f"through links that were already there: {', '.join(map(repr, escaped[:10]))}",
            op="download",
        )


def tar_directory(source: Path) -> bytes:
    """A local directory tree as an uncompressed tar (what ``upload`` sends into a sandbox).

    Raises ``FileNotFound`` when ``source`` is not a directory.
    """
    if not source.is_dir():
        raise FileNotFound(f"local directory not found: {source}", op="upload")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(source), arcname=".")
    return buffer.getvalue()
