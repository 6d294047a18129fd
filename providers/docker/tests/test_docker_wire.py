"""The Docker provider's wire helpers: attach-stream frames, tar streams, stat headers.

These need no engine: inputs are built with the standard library (struct, tarfile, base64).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import tarfile
from datetime import datetime, timezone
from typing import Any

import pytest
from agent_sandbox_docker import _wire
from hypothesis import given
from hypothesis import strategies as st


def frame(kind: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(data)) + data


@given(
    st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(min_size=0, max_size=300)), max_size=12),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40),
)
def test_frames_survive_any_split(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(frame(k, d) for k, d in frames)
    parser = _wire.FrameParser()
    got: list[tuple[str, bytes]] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got.extend(parser.feed(stream[pos : pos + step]))
        pos += step
        i += 1
    expected = [("stdout" if k == 1 else "stderr", d) for k, d in frames if d]
    assert got == expected
    assert parser.pending == 0


def test_engine_error_stream_is_stderr() -> None:
    assert _wire.FrameParser().feed(frame(3, b"oci error")) == [("stderr", b"oci error")]


def _tar(name: str, data: bytes, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=1500))
def test_tar_reader_reads_first_file_in_any_chunking(data: bytes, step: int) -> None:
    archive = _tar("f.bin", data)
    chunks = [archive[i : i + step] for i in range(0, len(archive), step)]
    member = _wire.TarReader(chunks).first_file()
    assert member is not None
    info, content = member
    assert info.name == "f.bin"
    assert content == data


def test_tar_reader_long_names_and_gnu_format() -> None:
    long_name = "d/" * 80 + "file.txt"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        member = _wire.TarReader([_tar(long_name, b"abc", fmt)]).first_file()
        assert member is not None
        assert member[0].name == long_name
        assert member[1] == b"abc"


def test_tar_reader_empty_archive_and_symlink() -> None:
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    assert _wire.TarReader([empty.getvalue()]).first_file() is None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../target"
        tar.addfile(info)
    member = _wire.TarReader([buffer.getvalue()]).first_file()
    assert member is not None
    assert member[0].issym()
    assert member[0].linkname == "../target"


@given(st.binary(max_size=3 * 1024 * 1024 // 1000))
def test_tar_single_file_is_a_valid_archive(data: bytes) -> None:
    archive = b"".join(_wire.tar_single_file("out.bin", data, mode=0o600))
    assert len(archive) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.getmember("out.bin")
        assert member.mode == 0o600
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == data


def test_tar_single_file_streams_big_payload_in_chunks() -> None:
    data = bytes(3 * _wire.CHUNK + 5)
    chunks = list(_wire.tar_single_file("big", data))
    assert max(len(c) for c in chunks) <= _wire.CHUNK + 2 * 512
    assert sum(len(c) for c in chunks) % 512 == 0


def _header(stat: dict[str, object]) -> str:
    return base64.b64encode(json.dumps(stat).encode()).decode()


def test_stat_header_file_dir_symlink() -> None:
    directory = _wire.decode_stat_header(
        _header(
            {
                "name": "d",
                "size": 4096,
                "mode": 2147484141,
                "mtime": "2026-11-23T22:25:35.894701191Z",
            }
        )
    )
    assert directory is not None
    assert _wire.is_dir(directory)
    info = _wire.file_info("/tmp/d", directory)
    assert (info.type, info.mode, info.name, info.size) == ("dir", 0o755, "d", 4096)
    expected = datetime(2026, 11, 23, 22, 25, 35, tzinfo=timezone.utc).timestamp() + 0.894701191
    assert abs(info.mtime - expected) < 1e-6
    link = _wire.file_info(
        "/tmp/lnk", {"mode": 134218239, "size": 13, "mtime": "2026-01-01T00:00:00Z"}
    )
    assert (link.type, link.mode) == ("symlink", 0o777)
    sticky = _wire.file_info("/tmp", {"mode": (1 << 31) | (1 << 20) | 0o777, "mtime": ""})
    assert sticky.mode == 0o1777
    assert _wire.decode_stat_header("not base64!") is None
    assert _wire.decode_stat_header(None) is None


def test_parse_time_offsets_and_created() -> None:
    assert _wire.parse_time("2026-01-01T01:00:00+01:00") == _wire.parse_time("2026-01-01T00:00:00Z")
    assert _wire.parse_time("garbage") == 0.0
    created = _wire.parse_created("2026-11-23T22:25:35.123456789Z")
    assert created is not None
    assert created.year == 2026
    assert _wire.parse_created(0) == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert _wire.parse_created(None) is None


@pytest.mark.anyio
async def test_engine_exec_takes_the_group_line_off_stderr_in_any_split() -> None:
    """The fallback's wrapper reports the process group as the first stderr line; it may come
    in pieces, mixed with stdout, and must never reach the caller."""
    import socket

    from agent_sandbox_docker._engine import EngineProcess
    from agent_sandbox_docker._stream import DockerStream

    ours, engine = socket.socketpair()
    ours.setblocking(False)
    proc = EngineProcess(None, "sandbox", "exec-id", DockerStream(None, ours, b""))  # type: ignore[arg-type]
    try:
        engine.sendall(frame(1, b"first\n") + frame(2, b"7") + frame(2, b"7\nerr"))
        engine.close()
        chunks = [chunk async for chunk in _drain(proc)]
        assert chunks == [("stdout", b"first\n"), ("stderr", b"err")]
        assert proc._pgid == 77
    finally:
        await proc.close()


async def _drain(proc: Any) -> Any:
    while (chunk := await proc.read()) is not None:
        yield chunk
