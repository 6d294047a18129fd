"""The conformance suite's background-process section (part of :class:`ConformanceSuite`).

Processes started with ``Sandbox.start``: output streamed and read later, stdin streamed,
killed with their whole tree, waited for, attached to from another backend and from another
client process, listed, and ended by a timeout (opt-in), by destroy and by the TTL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from ..backend import BaseBackend
from ..errors import CommandTimeout, ProcessNotFound, SandboxError, SandboxNotFound
from ..process import Process
from ..sandbox import Sandbox
from .plugin import requires

NewSandbox = Callable[..., Awaitable[Sandbox]]

HEARTBEAT = 'while true; do echo beat >> "$1"; sleep 0.1; done\n'
ECHO_LINES = 'echo ready; while read line; do echo "got $line"; done; echo bye'
_BOUND = 60.0  # generous: how long a process may take to notice what ended it
_TTL_ROUNDING = 60.0  # a provider may round a TTL up to its own unit (Daytona: whole minutes)


async def _read_until(proc: Process, needle: bytes) -> bytes:
    """Output of ``proc`` (both streams) up to and including the chunk holding ``needle``."""
    seen = b""
    with anyio.fail_after(_BOUND):
        async for event in proc:
            seen += event.data
            if needle in seen:
                return seen
    raise AssertionError(f"{needle!r} never came; the process printed {seen!r}")


async def assert_stops_growing(sandbox: Sandbox, path: str) -> None:
    """The heartbeat file at ``path`` (a line every 0.1 s while its writer lives) stops
    growing within a generous bound, and then stays as it is: its writer is dead."""
    first = await sandbox.read_file(path)
    assert first.startswith(b"beat\n"), "the background writer never ran"
    size, deadline = len(first), time.monotonic() + 15
    while True:
        await anyio.sleep(1)
        now = len(await sandbox.read_file(path))
        if now == size:
            break
        assert time.monotonic() < deadline, (
            f"a process survived: {path} still grows ({size} -> {now} bytes) 15 s later"
        )
        size = now
    await anyio.sleep(1.5)
    last = len(await sandbox.read_file(path))
    assert last == size, f"a process survived: {path} grew from {size} to {last} bytes"


async def _wait_for_file(sandbox: Sandbox, path: str) -> None:
    with anyio.fail_after(_BOUND):
        while True:
            if await sandbox.exists(path):
                return
            await anyio.sleep(0.1)


async def _ends(proc: Process, *, after: float = 0.0) -> None:
    """``proc`` ends within the bound (plus ``after``): with an exit status, or with its
    sandbox gone."""
    with anyio.fail_after(_BOUND + after):
        try:
            result = await proc.wait()
        except SandboxNotFound:
            return
    assert result.exit_code != 0, f"the process ended as if nothing killed it: {result}"


_OTHER_CLIENT = r"""
import asyncio, importlib, json, sys
from agent_sandbox import Sandbox

async def main(module, name, options, sandbox_id, ref, stdin):
    cls = getattr(importlib.import_module(module), name)
    backend = cls(cls.Options.model_validate_json(options))
    sb = await Sandbox.connect(sandbox_id, backend=backend)
    try:
        proc = await sb.attach(ref)
        if stdin:
            await proc.write_stdin("from-the-other-client\n")
        seen = b""
        async for event in proc:
            seen += event.data
            if (b"got from-the-other-client" if stdin else b"tick") in seen:
                break
        await proc.kill()
        print(json.dumps({"seen": seen.decode(errors="replace")}))
    finally:
        await sb.close()
        await backend.aclose()

asyncio.run(main(*sys.argv[1:6], sys.argv[6] == "1"))
"""


class ProcessTests:
    """Background processes (``Sandbox.start``); mixed into :class:`ConformanceSuite`."""

    def new_backend(self, backend: BaseBackend) -> BaseBackend:
        """Another client of the same sandboxes: a new instance built from ``backend``'s class
        and options. Override for a backend that is built differently (a wrapper)."""
        return type(backend)(backend.options)

    async def test_start_streams_then_exits(self, sandbox: Sandbox) -> None:
        async with await sandbox.start("echo one; sleep 0.2; echo two >&2; exit 5") as proc:
            events = [event async for event in proc]
        out = b"".join(e.data for e in events if e.kind == "stdout")
        err = b"".join(e.data for e in events if e.kind == "stderr")
        assert (out, err) == (b"one\n", b"two\n")
        assert [e.kind for e in events].count("exit") == 1
        assert events[-1].kind == "exit"
        assert events[-1].exit_code == 5

    async def test_output_is_read_later(self, sandbox: Sandbox) -> None:
        async with await sandbox.start("echo early; echo late >&2; touch done.flag") as proc:
            await _wait_for_file(sandbox, "done.flag")
            result = await proc.wait()
        assert (result.exit_code, result.stdout, result.stderr) == (0, "early\n", "late\n")
        assert proc.exit_code == 0

    @requires("stdin_streaming")
    async def test_stdin_is_streamed(self, sandbox: Sandbox) -> None:
        async with await sandbox.start(ECHO_LINES, stdin=True) as proc:
            assert b"ready" in await _read_until(proc, b"ready")
            await proc.write_stdin("first\n")
            assert b"got first" in await _read_until(proc, b"got first")
            await proc.write_stdin(b"second\n")
            await proc.close_stdin()
            result = await proc.wait()
        assert result.exit_code == 0
        assert result.stdout.endswith("got second\nbye\n")

    async def test_kill_ends_the_whole_tree(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("heartbeat.sh", HEARTBEAT)
        async with await sandbox.start("sh heartbeat.sh bg-beats.txt & echo started; wait") as proc:
            await _read_until(proc, b"started")
            await _wait_for_file(sandbox, "bg-beats.txt")
            await proc.kill()
            result = await proc.wait()
        assert result.exit_code != 0
        if sandbox.backend.capabilities.signals:
            assert (result.exit_code, result.signal) == (137, 9)
        await assert_stops_growing(sandbox, "bg-beats.txt")

    async def test_a_timeout_on_start_is_opt_in(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("heartbeat.sh", HEARTBEAT)
        command = "sh heartbeat.sh t-beats.txt & echo started; sleep 60"
        async with await sandbox.start(command, timeout=3) as proc:
            with pytest.raises(CommandTimeout) as caught:
                await proc.wait()
        assert b"started" in caught.value.stdout
        await assert_stops_growing(sandbox, "t-beats.txt")

    @requires("reattach")
    async def test_attach_from_a_new_backend(
        self, sandbox: Sandbox, conformance_backend: BaseBackend
    ) -> None:
        caps = conformance_backend.capabilities
        command = ECHO_LINES if caps.stdin_streaming else "echo ready; sleep 60"
        proc = await sandbox.start(command, stdin=caps.stdin_streaming or None)
        other = self.new_backend(conformance_backend)
        try:
            await _read_until(proc, b"ready")
            again = await Sandbox.connect(sandbox.id, backend=other)
            attached = await again.attach(proc.ref)
            assert attached.ref == proc.ref
            if caps.stdin_streaming:
                await attached.write_stdin("via-attach\n")
                assert b"got via-attach" in await _read_until(attached, b"got via-attach")
            await attached.kill()
            await _ends(attached)
            with pytest.raises(ProcessNotFound):
                await again.attach("asb-no-such-process")
            await again.close()
        finally:
            await proc.end()
            with anyio.CancelScope(shield=True):
                await other.aclose()

    @requires("reattach", "persistent")
    async def test_attach_from_another_client_process(
        self,
        sandbox: Sandbox,
        conformance_backend: BaseBackend,
        separate_client_processes: bool,
    ) -> None:
        if not separate_client_processes:
            pytest.skip(f"the {conformance_backend.name} backend's sandboxes live in one process")
        streaming = conformance_backend.capabilities.stdin_streaming
        command = ECHO_LINES if streaming else "while true; do echo tick; sleep 0.2; done"
        async with await sandbox.start(command, stdin=streaming or None) as proc:
            backend_type = type(conformance_backend)
            argv = [
                sys.executable,
                "-c",
                _OTHER_CLIENT,
                backend_type.__module__,
                backend_type.__qualname__,
                conformance_backend.options.model_dump_json(),
                sandbox.id,
                proc.ref,
                "1" if streaming else "0",
            ]
            done = await anyio.to_thread.run_sync(
                lambda: subprocess.run(argv, capture_output=True, timeout=120, check=False)
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            report = json.loads(done.stdout.decode().strip().splitlines()[-1])
            assert ("got from-the-other-client" if streaming else "tick") in report["seen"]
            await _ends(proc)  # the other client killed it

    @requires("reattach")
    async def test_processes_are_listed(self, sandbox: Sandbox) -> None:
        async with (
            await sandbox.start("sleep 60") as first,
            await sandbox.start("echo quick") as second,
        ):
            await second.wait()
            listed = {p.ref: p for p in await sandbox.processes()}
            assert {first.ref, second.ref} <= set(listed)
            assert listed[first.ref].running
            assert (listed[second.ref].running, listed[second.ref].exit_code) == (False, 0)
            await first.kill()
            await first.wait()
            again = {p.ref: p for p in await sandbox.processes()}
            assert not again[first.ref].running

    async def test_destroy_ends_background_processes(self, new_sandbox: NewSandbox) -> None:
        sb = await new_sandbox()
        async with await sb.start("echo started; sleep 300") as proc:
            await _read_until(proc, b"started")
            await sb.destroy()
            await _ends(proc)

    async def test_ttl_ends_background_processes(self, new_sandbox: NewSandbox) -> None:
        sb = await new_sandbox(ttl_seconds=3)
        async with await sb.start("echo started; sleep 300") as proc:
            await _read_until(proc, b"started")
            await _ends(proc, after=_TTL_ROUNDING)
        with anyio.fail_after(_BOUND):
            while True:
                try:
                    await sb.refresh()
                except SandboxError:
                    break
                await sb.backend.sweep()
                await anyio.sleep(1)
