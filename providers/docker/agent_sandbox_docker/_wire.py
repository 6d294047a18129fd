"""Wire-level helpers: the engine's attach-stream framing, tar streams for the archive API, stat headers.

Nothing here talks to the engine; these are pure functions and small classes the backend uses,
so they are cheap to test and easy to read.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import posixpath
import re
import struct
import tarfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from agent_sandbox.models import FileInfo, FileType

STDOUT, STDERR = "stdout", "stderr"
_HEADER = struct.Struct(">BxxxL")
_KINDS = {0: STDOUT, 1: STDOUT, 2: STDERR, 3: STDERR}  # 3 = the engine's own error stream
CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE


class FrameParser:
    """Splits the engine's multiplexed attach stream (8-byte header + payload) into chunks.

    Feed it raw bytes as they arrive; it returns whole frames as ``(kind, bytes)`` and keeps any
    incomplete tail for the next call.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[tuple[str, bytes]]:
        """Add raw bytes; return the frames they complete."""
        self._buf += data
        frames: list[tuple[str, bytes]] = []
        buf = self._buf
        pos = 0
        with memoryview(buf) as view:  # one copy per frame, none per slice
            while len(buf) - pos >= 8:
                kind, size = _HEADER.unpack_from(buf, pos)
                if len(buf) - pos - 8 < size:
                    break
                if size:
                    frames.append((_KINDS.get(kind, STDERR), bytes(view[pos + 8 : pos + 8 + size])))
                pos += 8 + size
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buf)


def tar_single_file(name: str, data: bytes | memoryview, mode: int = 0o644) -> Iterator[bytes]:
    """A tar archive holding one regular file, produced in chunks without copying ``data`` whole."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    info.type = tarfile.REGTYPE
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        yield bytes(view[start : start + CHUNK])
    tail = (-len(view)) % BLOCK
    yield b"\0" * (tail + 2 * BLOCK)


class TarReader:
    """Reads the first regular file out of a tar stream given as an iterable of chunks.

    Keeps at most one chunk plus the file's own bytes in memory.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = bytearray()

    def _need(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = next(self._it, None)
            if chunk is None:
                return False
            self._buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def first_file(self, max_size: int | None = None) -> tuple[tarfile.TarInfo, bytes] | None:
        """The first member's header and content; ``None`` for an empty archive. A member over
        ``max_size`` comes back with its header only (its content is not read)."""
        pax: dict[str, str] = {}
        while self._need(BLOCK):
            header = self._take(BLOCK)
            if header == b"\0" * BLOCK:
                return None
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            padded = info.size + (-info.size) % BLOCK
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
                if not self._need(padded):
                    break
                body = self._take(padded)[: info.size]
                if info.type == tarfile.XHDTYPE:
                    pax.update(_parse_pax(body))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    pax["path"] = body.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            if "size" in pax:
                info.size = int(pax["size"])
                padded = info.size + (-info.size) % BLOCK
            if "path" in pax:
                info.name = pax["path"]
            if not info.isreg() or (max_size is not None and info.size > max_size):
                return info, b""
            return info, self._read_exact(info.size)
        raise ValueError("truncated tar stream")

    def _read_exact(self, size: int) -> bytes:
        # BytesIO hands its buffer over without a copy in getvalue(): one copy of the file in
        # memory (plus one chunk), where bytes(bytearray) or b"".join(chunks) would need two.
        out = io.BytesIO()
        have = min(size, len(self._buf))
        out.write(self._buf[:have])
        del self._buf[:have]
        while have < size:
            chunk = next(self._it, None)
            if chunk is None:
                raise ValueError("truncated tar stream")
            take = min(size - have, len(chunk))
            out.write(chunk[:take] if take < len(chunk) else chunk)
            have += take
            if take < len(chunk):
                self._buf += chunk[take:]
        return out.getvalue()


def _parse_pax(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        if space < 0:
            break
        length = int(body[pos:space])
        record = body[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        fields[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return fields


# Go's os.FileMode bits as the engine reports them in the archive stat header.
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_GO_TYPE = (1 << 31) | (1 << 30) | (1 << 29) | (1 << 28) | (1 << 27) | (1 << 26) | (1 << 25)
_GO_TYPE |= (1 << 24) | (1 << 21) | (1 << 19)  # device, char device, irregular, named pipe...
_GO_SETUID, _GO_SETGID, _GO_STICKY = 1 << 23, 1 << 22, 1 << 20
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def decode_stat_header(value: str | None) -> dict[str, Any] | None:
    """The JSON of the engine's ``X-Docker-Container-Path-Stat`` header, or ``None``."""
    if not value:
        return None
    try:
        decoded: dict[str, Any] = json.loads(base64.b64decode(value))
    except (binascii.Error, ValueError):
        return None
    return decoded


def is_dir(stat: dict[str, Any]) -> bool:
    """True when an archive stat describes a directory."""
    return bool(int(stat.get("mode", 0)) & _GO_DIR)


def is_regular(stat: dict[str, Any]) -> bool:
    """True when an archive stat describes a regular file (no directory, link, FIFO, device)."""
    return not int(stat.get("mode", 0)) & _GO_TYPE


def file_info(path: str, stat: dict[str, Any]) -> FileInfo:
    """A :class:`FileInfo` from an archive stat header (the engine lstat()s the final component)."""
    mode = int(stat.get("mode", 0))
    kind: FileType
    if mode & _GO_DIR:
        kind = "dir"
    elif mode & _GO_SYMLINK:
        kind = "symlink"
    elif mode & _GO_TYPE:
        kind = "other"
    else:
        kind = "file"
    perms = mode & 0o777
    perms |= 0o4000 if mode & _GO_SETUID else 0
    perms |= 0o2000 if mode & _GO_SETGID else 0
    perms |= 0o1000 if mode & _GO_STICKY else 0
    return FileInfo(
        path=path,
        name=posixpath.basename(path.rstrip("/")) or "/",
        type=kind,
        size=int(stat.get("size", 0)),
        mode=perms,
        mtime=parse_time(str(stat.get("mtime", ""))),
    )


def parse_time(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with any number of fraction digits."""
    match = _TIME.fullmatch(value.strip())
    if not match:
        return 0.0
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    moment = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc
    )
    seconds = moment.timestamp() + (float("0." + fraction) if fraction else 0.0)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


def parse_created(value: str | int | None) -> datetime | None:
    """A container's creation time (RFC 3339 string or epoch seconds) as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return datetime.fromtimestamp(value, timezone.utc)
    if not _TIME.fullmatch(value.strip()):
        return None
    return datetime.fromtimestamp(parse_time(value), timezone.utc)
