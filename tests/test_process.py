"""The core's command lifecycle (agent_sandbox.process): argument checks, exit normalisation,
what a hostile provider may report, and the sync twin of Process."""

from __future__ import annotations

import builtins
import math
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

import agent_sandbox as asb
from agent_sandbox import sync
from agent_sandbox.process import (
    MAX_ARG_STRLEN,
    ExitStatus,
    ProcessHandle,
    Stream,
    argv_of,
    check_env,
    check_timeout,
    exit_status,
    from_returncode,
)
from agent_sandbox.testing import FakeBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_exit_status_normalises_signals() -> None:
    assert exit_status(0) == ExitStatus(0)
    assert exit_status(3) == ExitStatus(3)
    assert exit_status(None, 9) == ExitStatus(137, 9)
    assert exit_status(1, 15) == ExitStatus(143, 15)
    assert from_returncode(-9) == ExitStatus(137, 9)
    assert from_returncode(2) == ExitStatus(2)


@pytest.mark.parametrize(
    ("code", "signal"), [(256, None), (-1, None), (None, None), ("0", None), (0, 0), (0, 65)]
)
def test_exit_status_refuses_what_no_process_reports(code: object, signal: object) -> None:
    with pytest.raises(asb.ProviderError):
        exit_status(code, signal)  # type: ignore[arg-type]


def test_commands_are_checked() -> None:
    assert argv_of("echo hi") == ["sh", "-c", "echo hi"]
    assert argv_of(("ls", "-l")) == ["ls", "-l"]
    for empty in ("", "   ", []):
        with pytest.raises(asb.ConfigError, match="empty"):
            argv_of(empty)
    for wrong in (b"echo", 5, ["ls", 3], None):
        with pytest.raises(asb.ArgumentTypeError) as caught:
            argv_of(wrong)  # type: ignore[arg-type]
        assert isinstance(caught.value, TypeError)
    with pytest.raises(asb.ConfigError, match="NUL"):
        argv_of(["echo", "a\x00b"])
    with pytest.raises(asb.ConfigError, match="kernel"):
        argv_of(["echo", "x" * MAX_ARG_STRLEN])
    with pytest.raises(asb.ConfigError, match="limit"):
        argv_of(["echo"] + ["y" * 100_000] * 30)


def test_environment_and_timeouts_are_checked() -> None:
    assert check_env({"A": "1"}) == {"A": "1"}
    for name in ("", "A=B", "A\x00"):
        with pytest.raises(asb.ConfigError, match="name"):
            check_env({name: "x"})
    with pytest.raises(asb.ArgumentTypeError):
        check_env({"A": 1})  # type: ignore[dict-item]
    assert check_timeout(None) is None
    assert check_timeout(2) == 2.0
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(asb.ConfigError, match="positive, finite"):
            check_timeout(bad)
    for wrong in ("3", True):
        with pytest.raises(asb.ArgumentTypeError):
            check_timeout(wrong)  # type: ignore[arg-type]


class _NoStdinStreaming(FakeBackend):
    capabilities = FakeBackend.capabilities.model_copy(update={"stdin_streaming": False})


async def test_bad_exec_arguments_are_typed_errors_before_anything_runs() -> None:
    async with await asb.Sandbox.create(backend=_NoStdinStreaming()) as sb:
        with pytest.raises(asb.ConfigError):
            await sb.exec("true", env={"BAD=NAME": "x"})
        with pytest.raises(asb.ConfigError):
            await sb.exec("true", timeout=math.inf)
        with pytest.raises(asb.ArgumentTypeError):
            await sb.exec("cat", stdin=5)  # type: ignore[arg-type]
        with pytest.raises(asb.Unsupported):
            await sb.start("cat", stdin=True)  # this backend cannot stream stdin


class _Hostile(ProcessHandle):
    """What a compromised sandbox could make a provider report."""

    ref = "hostile"

    def __init__(self, chunks: builtins.list[tuple[str, bytes]], status: ExitStatus) -> None:
        self._chunks = chunks
        self._status = status

    async def read(self) -> tuple[Stream, bytes] | None:
        return self._chunks.pop(0) if self._chunks else None  # type: ignore[return-value]

    async def wait(self) -> ExitStatus:
        return self._status

    async def kill(self) -> None:
        self._chunks.clear()


class _HostileBackend(FakeBackend):
    def __init__(self, handle: _Hostile) -> None:
        super().__init__()
        self.handle = handle

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: asb.StartOptions
    ) -> ProcessHandle:
        return self.handle


@pytest.mark.parametrize(
    ("chunks", "status"),
    [
        ([], ExitStatus(999)),
        ([], ExitStatus(0, 200)),
        ([("stdin", b"x")], ExitStatus(0)),
    ],
)
async def test_what_a_provider_reports_is_validated(
    chunks: builtins.list[tuple[str, bytes]], status: ExitStatus
) -> None:
    backend = _HostileBackend(_Hostile(chunks, status))
    async with await asb.Sandbox.create(backend=backend) as sb:
        with pytest.raises(asb.ProviderError):
            await sb.exec("anything")


async def test_a_process_outlives_leaving_its_iteration() -> None:
    async with await asb.Sandbox.create(backend=FakeBackend()) as sb:
        proc = await sb.start("echo one; sleep 0.3; echo two")
        async for event in proc:
            assert event.data == b"one\n"
            break
        result = await proc.wait()
        assert (result.exit_code, result.stdout) == (0, "one\ntwo\n")


class _SlowAnswer(FakeBackend):
    """A provider whose answer to a start arrives after the command has started."""

    started: builtins.list[ProcessHandle]

    def __init__(self) -> None:
        super().__init__()
        self.started = []

    async def start(
        self, sandbox_id: str, argv: builtins.list[str], options: asb.StartOptions
    ) -> ProcessHandle:
        handle = await super().start(sandbox_id, argv, options)
        self.started.append(handle)
        await anyio.sleep(0.3)
        return handle


@pytest.mark.parametrize("detached", [False, True])
async def test_a_start_cancelled_in_flight_ends_what_it_started(detached: bool) -> None:
    backend = _SlowAnswer()
    async with await asb.Sandbox.create(backend=backend) as sb:
        with anyio.move_on_after(0.1):
            if detached:
                await sb.start("sleep 30")
            else:
                await sb.exec("sleep 30")
        [handle] = backend.started
        with anyio.fail_after(5):
            status = await handle.wait()
        assert status.signal == 9


# -- the blocking twin --------------------------------------------------------------------------


@pytest.fixture
def sync_sandbox() -> Iterator[sync.Sandbox]:
    backend = FakeBackend()
    sb = sync.Sandbox.create(backend=backend)
    try:
        yield sb
    finally:
        sb.destroy()
        sync._run(backend.aclose)


def test_sync_process(sync_sandbox: sync.Sandbox) -> None:
    with sync_sandbox.start("echo a; echo b >&2; exit 4") as proc:
        kinds = [event.kind for event in proc]
        assert kinds[-1] == "exit"
        assert proc.wait().exit_code == 4
    again = sync_sandbox.attach(proc.ref)
    assert again.wait().stdout == "a\n"
    assert [p.ref for p in sync_sandbox.processes()] == [proc.ref]
    sleeper = sync_sandbox.start("sleep 300")
    sleeper.kill()
    assert sleeper.wait().exit_code == 137


async def test_sync_calls_inside_an_event_loop_are_refused(sync_sandbox: sync.Sandbox) -> None:
    with pytest.raises(asb.BlockingCallInEventLoop, match="async API") as caught:
        sync_sandbox.exec("echo hi")
    assert isinstance(caught.value, RuntimeError)


async def _events(proc: asb.Process) -> AsyncIterator[asb.ExecEvent]:
    async for event in proc:
        yield event


async def test_timeout_on_wait_and_on_iteration() -> None:
    async with await asb.Sandbox.create(backend=FakeBackend()) as sb:
        proc = await sb.start("echo before; sleep 30", timeout=0.5)
        with pytest.raises(asb.CommandTimeout) as caught:
            async for _ in _events(proc):
                pass
        assert caught.value.stdout == b"before\n"
        with anyio.fail_after(5):
            await proc.end()
