# Host-side setup in these tests is instant local filesystem work (planting what the sandbox
# would plant), not I/O worth a thread.
# ruff: noqa: ASYNC230, ASYNC240
"""Attacks on the local provider's file operations: they run in the client's process, with more
rights than the sandbox's user, on paths the sandbox's code controls.

Each test plays what a sandboxed program (or a careless caller) would try and checks that file
operations stay within what the sandbox's own user may do, never block the event loop, and never
take more memory than the caller allowed. Real sandboxes, real bubblewrap where installed.
The same rules are checked on every provider by the conformance suite.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.local._jail import probe

pytestmark = pytest.mark.anyio


def _bwrap_problem() -> str | None:
    found = shutil.which("bwrap")
    if found is None:
        return "bubblewrap (bwrap) is not installed on this machine"
    problem = probe(found)
    return f"bwrap cannot build a jail here: {problem}" if problem else None


BWRAP_PROBLEM = _bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=BWRAP_PROBLEM or "")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "none"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sandbox(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[asb.Sandbox]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation=request.param))
    sb = await asb.Sandbox.create(backend=backend)
    try:
        yield sb
    finally:
        await sb.destroy()
        await backend.aclose()


def _workspace(sb: asb.Sandbox) -> Path:
    backend = sb.backend
    assert isinstance(backend, LocalBackend)
    return Path(backend.root) / sb.id / "workspace"


@contextlib.contextmanager
def _fifo_watchdog(fifo: Path, after: float) -> Iterator[threading.Event]:
    """After ``after`` seconds, open ``fifo`` for writing from this host, freeing a reader that
    blocked on it (so a regression fails the test instead of hanging it). The event tells
    whether it had to."""
    fired = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        if stop.wait(after):
            return
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    return
                time.sleep(0.05)
                continue
            fired.set()
            os.close(fd)
            return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        stop.set()
        thread.join(timeout=5)


@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_a_fifo_never_blocks_the_event_loop(sandbox: asb.Sandbox) -> None:
    """A FIFO planted where the agent reads a file: the read must fail at once, and the event
    loop (an MCP server's, say) keep running meanwhile."""
    assert (await sandbox.exec(["mkfifo", "trap"])).ok
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    with _fifo_watchdog(_workspace(sandbox) / "trap", after=10) as fired:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.sleep(0.05)
            with pytest.raises(asb.InvalidPath, match="not a regular file"):
                await sandbox.read_file("trap")
            tg.cancel_scope.cancel()
    assert not fired.is_set(), "read_file blocked on the FIFO until the watchdog opened it"
    assert ticks > 0


@pytest.mark.parametrize("sandbox", MODES, indirect=True)
async def test_a_huge_sparse_file_is_a_typed_error_not_memory_exhaustion(
    sandbox: asb.Sandbox,
) -> None:
    with open(_workspace(sandbox) / "sparse.bin", "wb") as handle:
        handle.truncate(64 << 30)  # 64 GiB of nothing: no disk, but a read would need the RAM
    with pytest.raises(asb.FileTooLarge) as caught:
        await sandbox.read_file("sparse.bin")
    assert caught.value.code == "file_too_large"


@pytest.mark.parametrize("sandbox", [pytest.param("bwrap", marks=needs_bwrap)], indirect=True)
async def test_a_read_only_file_is_not_replaced_behind_the_jails_back(
    sandbox: asb.Sandbox,
) -> None:
    """The jail's user cannot write a file it made read-only; a file operation must not do it
    for it by renaming a new file over the old one."""
    await sandbox.write_file("config.toml", b"safe = true\n")
    assert (await sandbox.exec(["chmod", "0444", "config.toml"])).ok
    host = _workspace(sandbox) / "config.toml"
    inode = host.stat().st_ino
    assert not (await sandbox.exec("printf 'safe = false' > config.toml")).ok
    with pytest.raises(asb.PermissionDenied):
        await sandbox.write_file("config.toml", b"safe = false\n")
    assert host.read_bytes() == b"safe = true\n"
    assert host.stat().st_ino == inode


@pytest.mark.parametrize("sandbox", [pytest.param("bwrap", marks=needs_bwrap)], indirect=True)
async def test_replacing_a_setuid_file_drops_the_bit_as_the_kernel_does(
    sandbox: asb.Sandbox,
) -> None:
    await sandbox.write_file("by-command", b"#!/bin/sh\n")
    await sandbox.write_file("by-file-op", b"#!/bin/sh\n")
    assert (await sandbox.exec(["chmod", "4755", "by-command", "by-file-op"])).ok
    assert (await sandbox.exec("printf '#!/bin/sh\\n' > by-command")).ok
    await sandbox.write_file("by-file-op", b"#!/bin/sh\n")
    by_command = (await sandbox.stat("by-command")).mode
    assert (await sandbox.stat("by-file-op")).mode == by_command == 0o755


@pytest.mark.parametrize("sandbox", [pytest.param("bwrap", marks=needs_bwrap)], indirect=True)
@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/gshadow", "/etc/hostname", "/etc/passwd"])
async def test_system_files_are_read_only_as_the_jail_reads_them(
    sandbox: asb.Sandbox, path: str
) -> None:
    """Host files the jail shows read-only: a file operation reads one exactly when the jail's
    own ``cat`` can, whoever the client runs as."""
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this host")
    jail = await sandbox.exec(["cat", path])
    if jail.ok:
        assert await sandbox.read_file(path) == jail.stdout_bytes
    else:
        with pytest.raises(asb.PermissionDenied):
            await sandbox.read_file(path)
