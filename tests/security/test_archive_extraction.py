"""Attacks on tree downloads: the archive comes out of the sandbox, so it is hostile.

The end-to-end attacks run a real local sandbox whose ``tar`` the sandbox's own code replaced
(a ``bin/tar`` ahead on its PATH that prints a crafted archive), so they exercise the same
``download`` every provider built on :class:`~agent_sandbox.BaseBackend` uses. The rules
themselves are then pinned one by one on :func:`agent_sandbox.archive.extract_tar`.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

import agent_sandbox as asb
from agent_sandbox.archive import ArchiveLimits, ArchiveSpool, extract_tar
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.local._jail import probe

pytestmark = pytest.mark.anyio

FAKE_TAR = b'#!/bin/sh\nexec cat "$PWD/evil.tar"\n'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644 if kind != tarfile.DIRTYPE else 0o755
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def build(*entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    """An uncompressed tar of ``entries`` (a header, or a header with its content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info, data = entry if isinstance(entry, tuple) else (entry, b"")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def extract(archive: bytes, target: Path, limits: ArchiveLimits | None = None) -> None:
    extract_tar(io.BytesIO(archive), target, *(limits,) if limits else ())


def tree(root: Path) -> dict[str, str]:
    """Every path below ``root`` with what it is (content, link target or 'dir')."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_text()
    return found


# -- end to end: a sandbox that lies about its tree --------------------------------------------


def _bwrap_problem() -> str | None:
    found = shutil.which("bwrap")
    if found is None:
        return "bubblewrap (bwrap) is not installed on this machine"
    problem = probe(found)
    return f"bwrap cannot build a jail here: {problem}" if problem else None


BWRAP_PROBLEM = _bwrap_problem()


@pytest.fixture(
    params=[
        pytest.param(
            "bwrap", marks=pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=BWRAP_PROBLEM or "")
        ),
        "none",
    ]
)
async def hostile(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[asb.Sandbox]:
    """A local sandbox (jailed and not) whose ``tar`` prints ``evil.tar`` from its workspace."""
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation=request.param))
    sandbox = await asb.Sandbox.create(backend=backend, env={"PATH": "bin:/usr/bin:/bin"})
    try:
        await sandbox.write_file("bin/tar", FAKE_TAR)
        await sandbox.exec(["chmod", "+x", "bin/tar"])
        yield sandbox
    finally:
        await sandbox.destroy()


async def test_a_hard_link_resolves_from_the_archive_root_and_cannot_reach_a_host_file(
    hostile: asb.Sandbox, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("host data")
    # tarfile resolves a hard link's target from the extraction root: "../victim" from
    # "out/" is the victim, although from the member's own folder (a/b/) it looks inside.
    archive = build(
        member("a/b/h", tarfile.LNKTYPE, linkname="../victim"),
        (member("a/b/h"), b"overwritten through the link"),
    )
    await hostile.write_file("evil.tar", archive)
    with pytest.raises(asb.UnsafeArchive, match="a/b/h"):
        await hostile.download(".", tmp_path / "out")
    assert victim.read_text() == "host data"
    assert victim.stat().st_nlink == 1
    assert not (tmp_path / "out").exists()


async def test_a_symlink_that_only_escapes_once_a_later_member_exists_is_refused(
    hostile: asb.Sandbox, tmp_path: Path
) -> None:
    # "l -> p/.." looks like the root itself while "p" does not exist; then "p -> ." makes
    # "l" the root's parent, and "l/victim" lands beside the target.
    archive = build(
        member("l", tarfile.SYMTYPE, linkname="p/.."),
        member("p", tarfile.SYMTYPE, linkname="."),
        (member("l/victim"), b"written outside"),
    )
    await hostile.write_file("evil.tar", archive)
    with pytest.raises(asb.UnsafeArchive, match="climbs after descending"):
        await hostile.download(".", tmp_path / "out")
    assert not (tmp_path / "victim").exists()
    assert not (tmp_path / "out").exists()  # no link to the outside is left behind either


async def test_setuid_setgid_and_ownership_do_not_survive_a_download(
    hostile: asb.Sandbox, tmp_path: Path
) -> None:
    archive = build(
        (member("suid", mode=0o6777, uid=0, gid=0, uname="root", gname="root"), b"#!/bin/sh\n"),
        (member("other", mode=0o1666, uid=4242, gid=4242), b"data"),
        member("d", tarfile.DIRTYPE, mode=0o7777, uid=4242, gid=4242),
    )
    await hostile.write_file("evil.tar", archive)
    await hostile.download(".", tmp_path / "out")
    out = tmp_path / "out"
    suid, other, d = (os.lstat(out / n) for n in ("suid", "other", "d"))
    assert stat.S_IMODE(suid.st_mode) == 0o755
    assert stat.S_IMODE(other.st_mode) == 0o644
    assert not stat.S_IMODE(d.st_mode) & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022)
    for st in (suid, other, d):
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


async def test_a_fifo_is_refused_not_skipped(hostile: asb.Sandbox, tmp_path: Path) -> None:
    await hostile.write_file("evil.tar", build(member("pipe", tarfile.FIFOTYPE)))
    with pytest.raises(asb.UnsafeArchive, match="FIFO"):
        await hostile.download(".", tmp_path / "out")


async def test_an_endless_archive_stops_at_the_limit(tmp_path: Path) -> None:
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
    backend.archive_limits = ArchiveLimits(max_bytes=1 << 20)
    async with await asb.Sandbox.create(backend=backend, env={"PATH": "bin:/usr/bin:/bin"}) as sb:
        await sb.write_file("bin/tar", b"#!/bin/sh\nexec cat /dev/zero\n")
        await sb.exec(["chmod", "+x", "bin/tar"])
        with pytest.raises(asb.UnsafeArchive, match=f"limit of {1 << 20} bytes"):
            await sb.download(".", tmp_path / "out")
        assert not (tmp_path / "out").exists()


# -- the rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([(member("/etc/owned"), b"x")], "absolute name"),
        ([(member("../owned"), b"x")], "'..' in the name"),
        ([(member("a/../../owned"), b"x")], "'..' in the name"),
        ([member("l", tarfile.SYMTYPE, linkname="/etc/passwd")], "absolute path"),
        ([member("l", tarfile.SYMTYPE, linkname="..")], "leaves the extracted tree"),
        ([member("a/l", tarfile.SYMTYPE, linkname="../../x")], "leaves the extracted tree"),
        ([member("l", tarfile.SYMTYPE, linkname="")], "absolute path"),
        ([member("h", tarfile.LNKTYPE, linkname="/etc/passwd")], "outside the archive"),
        ([member("h", tarfile.LNKTYPE, linkname="missing")], "not a file extracted before"),
        (
            [member("d", tarfile.DIRTYPE), member("h", tarfile.LNKTYPE, linkname="d")],
            "not a file extracted before",
        ),
        ([member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)], "device files"),
        ([member("blk", tarfile.BLKTYPE, devmajor=8, devminor=0)], "device files"),
        ([member("x", b"Z")], "unknown member type"),
        ([member("a" * 5000)], "longer than 4096 bytes"),
        ([(member("."), b"x")], "root is not a directory"),
        # A symlink made by an earlier member is never followed, even one pointing inside.
        (
            [
                member("real", tarfile.DIRTYPE),
                member("l", tarfile.SYMTYPE, linkname="real"),
                (member("l/f"), b"x"),
            ],
            "'l' is not a directory of the archive",
        ),
        (
            [(member("f"), b"x"), (member("f/g"), b"y")],
            "'f' is not a directory of the archive",
        ),
        ([member("d", tarfile.DIRTYPE), (member("d"), b"x")], "replace a directory"),
        ([(member("f"), b"x"), member("f", tarfile.DIRTYPE)], "replace a file or link"),
    ],
)
def test_refused_members(
    entries: Iterable[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], why: str, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "kept").write_text("mine")
    with pytest.raises(asb.UnsafeArchive, match=why):
        extract(build((member("first"), b"1"), *entries), target)
    assert tree(target) == {"kept": "mine"}  # nothing of a refused archive stays
    assert tree(tmp_path) == {"out": "dir", "out/kept": "mine"}


def test_links_that_stay_inside_are_extracted(tmp_path: Path) -> None:
    archive = build(
        member("lib", tarfile.DIRTYPE),
        (member("lib/real.so", mode=0o755), b"elf"),
        member("lib/alias.so", tarfile.SYMTYPE, linkname="real.so"),
        member("bin/up", tarfile.SYMTYPE, linkname="../lib/./real.so"),
        member("self", tarfile.SYMTYPE, linkname="."),
        member("lib/hard.so", tarfile.LNKTYPE, linkname="./lib/real.so"),
    )
    extract(archive, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "bin/up").read_bytes() == b"elf"
    assert (out / "lib/alias.so").read_bytes() == b"elf"
    assert (out / "self/lib/real.so").read_bytes() == b"elf"
    assert os.stat(out / "lib/hard.so").st_ino == os.stat(out / "lib/real.so").st_ino
    assert stat.S_IMODE(os.stat(out / "lib/real.so").st_mode) == 0o755


def test_a_later_member_replaces_an_earlier_file_without_writing_through_its_hard_link(
    tmp_path: Path,
) -> None:
    archive = build(
        (member("a"), b"first"),
        member("b", tarfile.LNKTYPE, linkname="a"),
        (member("b"), b"second"),
    )
    extract(archive, tmp_path / "out")
    assert tree(tmp_path / "out") == {"a": "first", "b": "second"}


def test_file_modes_follow_the_data_filter(tmp_path: Path) -> None:
    archive = build(
        (member("ro", mode=0o400), b""),
        (member("gx", mode=0o651), b""),
        (member("gw", mode=0o777), b""),
    )
    extract(archive, tmp_path / "out")
    modes = {n: stat.S_IMODE(os.stat(tmp_path / "out" / n).st_mode) for n in ("ro", "gx", "gw")}
    assert modes == {"ro": 0o600, "gx": 0o640, "gw": 0o755}


def test_limits_on_members_and_headers(tmp_path: Path) -> None:
    three = build(*((member(f"f{i}"), b"x") for i in range(3)))
    with pytest.raises(asb.UnsafeArchive, match="more than 2 members"):
        extract(three, tmp_path / "a", ArchiveLimits(max_members=2))
    # a pax header claiming a 2 MiB name is refused before tarfile reads it into memory
    huge = member("x")
    huge.pax_headers = {"comment": "c" * (2 << 20)}
    with pytest.raises(asb.UnsafeArchive, match="header is larger than 1 MiB"):
        extract(build(huge), tmp_path / "b")
    spool = ArchiveSpool(ArchiveLimits(max_bytes=10))
    spool.write(b"x" * 10)
    with pytest.raises(asb.UnsafeArchive, match="limit of 10 bytes"):
        spool.write(b"x")
    spool.close()


def test_a_truncated_archive_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    archive = build((member("big"), b"x" * 100_000))
    with pytest.raises(asb.UnsafeArchive, match="malformed"):
        extract(archive[:20_000], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merging_into_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "src").mkdir(parents=True)
    (target / "src/keep.py").write_text("mine")
    (target / "src/old.py").write_text("old")
    archive = build(
        member("src", tarfile.DIRTYPE),
        (member("src/old.py"), b"new"),
        (member("src/added.py"), b"added"),
        member("docs", tarfile.DIRTYPE),
        member("docs/link", tarfile.SYMTYPE, linkname="../src/added.py"),
    )
    extract(archive, target)
    assert tree(target) == {
        "src": "dir",
        "docs": "dir",
        "src/keep.py": "mine",
        "src/old.py": "new",
        "src/added.py": "added",
        "docs/link": "-> ../src/added.py",
    }


@pytest.mark.parametrize(
    ("existing", "entries", "error"),
    [
        ("dir", [(member("x"), b"file")], asb.IsADirectory),
        ("file", [member("x", tarfile.DIRTYPE)], asb.InvalidPath),
        ("link", [member("x", tarfile.DIRTYPE)], asb.InvalidPath),
    ],
)
def test_a_merge_never_replaces_a_directory_by_a_file_or_the_reverse(
    existing: str,
    entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]],
    error: type[Exception],
    tmp_path: Path,
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (tmp_path / "elsewhere").mkdir()
    if existing == "dir":
        (target / "x").mkdir()
        (target / "x/inner").write_text("mine")
    elif existing == "file":
        (target / "x").write_text("mine")
    else:
        (target / "x").symlink_to(tmp_path / "elsewhere")
    before = tree(tmp_path)
    with pytest.raises(error):
        extract(build((member("other"), b"o"), *entries), target)
    assert tree(tmp_path) == before


def test_a_link_through_a_symlink_the_target_already_had_is_removed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine").symlink_to(outside)
    archive = build(
        (member("ok"), b"fine"),
        member("sneaky", tarfile.SYMTYPE, linkname="mine/secret"),
    )
    with pytest.raises(asb.UnsafeArchive, match="sneaky"):
        extract(archive, target)
    assert tree(target) == {"ok": "fine", "mine": "-> " + str(outside)}


def test_a_target_that_is_a_file_is_an_invalid_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    with pytest.raises(asb.InvalidPath, match="not a directory"):
        extract(build((member("a"), b"x")), tmp_path / "f")
    assert (tmp_path / "f").read_text() == "mine"
