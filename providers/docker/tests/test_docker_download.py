"""Docker's ``download`` against a hostile container: root inside makes setuid files, foreign
owners, FIFOs and absolute links, and the engine's archive carries them faithfully. None of it
may reach the host as such (a real engine; skipped, with the reason, when none answers)."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_sandbox_docker import DockerBackend
from docker_testkit import IMAGE

from agent_sandbox import Sandbox, UnsafeArchive
from agent_sandbox.archive import ArchiveLimits

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sb(backend: DockerBackend) -> AsyncIterator[Sandbox]:
    sandbox = await Sandbox.create(backend=backend, image=IMAGE, ttl_seconds=600)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()


async def test_setuid_and_root_ownership_are_dropped(sb: Sandbox, tmp_path: Path) -> None:
    made = await sb.exec(
        "mkdir -p /tmp/t/d && printf x > /tmp/t/suid && chmod 6755 /tmp/t/suid"
        " && chown 0:0 /tmp/t/suid && printf y > /tmp/t/other && chown 4242:4242 /tmp/t/other"
        " && chmod 1777 /tmp/t/d"
    )
    assert made.ok, made.stderr
    await sb.download("/tmp/t", tmp_path / "out")
    suid = os.lstat(tmp_path / "out/suid")
    other = os.lstat(tmp_path / "out/other")
    d = os.lstat(tmp_path / "out/d")
    assert stat.S_IMODE(suid.st_mode) == 0o755
    assert not stat.S_IMODE(d.st_mode) & (stat.S_ISVTX | 0o022)
    for st in (suid, other, d):
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.parametrize(
    ("make", "why"),
    [
        ("mkfifo /tmp/t/pipe", "FIFO"),
        ("ln -s /etc/shadow /tmp/t/shadow", "absolute path"),
        ("ln -s ../../etc /tmp/t/up", "leaves the extracted tree"),
    ],
)
async def test_special_files_and_escaping_links_refuse_the_download(
    sb: Sandbox, tmp_path: Path, make: str, why: str
) -> None:
    made = await sb.exec(f"mkdir -p /tmp/t && echo ok > /tmp/t/a && {make}")
    assert made.ok, made.stderr
    with pytest.raises(UnsafeArchive, match=why):
        await sb.download("/tmp/t", tmp_path / "out")
    assert not (tmp_path / "out").exists()


async def test_the_archive_size_is_bounded(
    backend: DockerBackend, sb: Sandbox, tmp_path: Path
) -> None:
    made = await sb.exec("mkdir -p /tmp/t && head -c 3000000 /dev/zero > /tmp/t/big")
    assert made.ok, made.stderr
    backend.archive_limits = ArchiveLimits(max_bytes=1 << 20)
    with pytest.raises(UnsafeArchive, match="limit"):
        await sb.download("/tmp/t", tmp_path / "out")
    assert not (tmp_path / "out").exists()
