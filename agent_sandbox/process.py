"""One command's life, owned once for every provider.

A provider implements a small primitive: :meth:`BaseBackend.start` returns a
:class:`ProcessHandle` that reads the next output chunk, writes and closes stdin, waits, and kills
the whole process tree. Everything every command needs on top of that lives here, once: argument
checks, the deadline (the tree is killed and :class:`~agent_sandbox.errors.CommandTimeout` raised
with the partial output), exit status normalisation (``128 + N`` for signal ``N``), bounded
collection of the output with truncation flags, and killing a command its caller abandoned.
``exec`` and ``exec_stream`` are derived from it for every provider.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel

from ._tasks import spawn
from .errors import (
    ArgumentTypeError,
    CommandTimeout,
    ConfigError,
    ProcessNotFound,
    ProviderError,
    SandboxError,
    SandboxNotFound,
    Unsupported,
)
from .models import Command, ExecEvent, ExecResult, StartOptions
from .output import CappedBuffer

if TYPE_CHECKING:
    from .backend import BaseBackend

Stream = Literal["stdout", "stderr"]

# Linux: one argument or environment string may be at most 32 pages; all of them together, with
# their pointers, at most a quarter of the stack limit (2 MiB with the usual 8 MiB stack).
MAX_ARG_STRLEN = 32 * 4096
MAX_ARG_TOTAL = 2 * 1024 * 1024
# After a kill, what the command had already written is still collected for this long.
_DRAIN_AFTER_KILL = 2.0
_MAX_SIGNAL = 64


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: ``exit_code`` (``128 + N`` when signal ``N`` killed it)."""

    exit_code: int
    signal: int | None = None


def exit_status(exit_code: int | None, signal: int | None = None) -> ExitStatus:
    """Validate what a provider reports (it comes from the sandbox: trust none of it).

    A signal gives ``128 + signal``; a code outside 0-255 or a signal outside 1-64 is a
    ``ProviderError``.
    """
    if signal is not None:
        if not isinstance(signal, int) or not 0 < signal <= _MAX_SIGNAL:
            raise ProviderError(f"invalid signal number from the sandbox: {signal!r}")
        return ExitStatus(128 + signal, signal)
    if not isinstance(exit_code, int) or not 0 <= exit_code <= 255:
        raise ProviderError(f"invalid exit status from the sandbox: {exit_code!r}")
    return ExitStatus(exit_code)


def from_returncode(returncode: int) -> ExitStatus:
    """An :class:`ExitStatus` from a Python-style return code (negative: killed by a signal)."""
    return exit_status(None, -returncode) if returncode < 0 else exit_status(returncode)


def from_shell(code: int) -> ExitStatus:
    """An :class:`ExitStatus` from a status a shell reported (``128 + N``: killed by signal N)."""
    return exit_status(None, code - 128) if 128 < code <= 128 + _MAX_SIGNAL else exit_status(code)


def argv_of(command: Command) -> list[str]:
    """The argv that runs ``command``: a string runs under ``sh -c``, a sequence as it is.

    Raises ``ConfigError`` for an empty command, a NUL byte or arguments over the kernel's
    limits, ``ArgumentTypeError`` for anything but ``str`` or a sequence of ``str``.
    """
    if isinstance(command, str):
        if not command.strip():
            raise ConfigError("empty command")
        argv = ["sh", "-c", command]
    elif isinstance(command, (bytes, bytearray)) or not isinstance(command, Sequence):
        raise ArgumentTypeError(
            f"command must be str (shell) or a sequence of str (argv), not {type(command).__name__}"
        )
    else:
        argv = list(command)
        if not argv:
            raise ConfigError("empty argv")
        for arg in argv:
            if not isinstance(arg, str):
                raise ArgumentTypeError(f"argv items must be str, got {type(arg).__name__}")
    _check_strings("argument", argv)
    return argv


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as a dict, refusing names that are empty or hold ``=`` or NUL, and non-str values."""
    checked: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ArgumentTypeError(f"environment names and values must be str: {name!r}")
        if not name or "=" in name or "\x00" in name:
            raise ConfigError(f"invalid environment variable name: {name!r}")
        checked[name] = value
    _check_strings("environment value", list(checked.values()))
    return checked


def _check_strings(what: str, strings: Sequence[str]) -> None:
    total = 0
    for item in strings:
        if "\x00" in item:
            raise ConfigError(f"{what}s cannot contain NUL bytes")
        size = len(item.encode("utf-8", "surrogateescape")) + 1
        if size > MAX_ARG_STRLEN:
            raise ConfigError(f"an {what} is {size} bytes, over the kernel's {MAX_ARG_STRLEN}")
        total += size
    if total > MAX_ARG_TOTAL:
        raise ConfigError(
            f"{what}s total {total} bytes, over the kernel's limit; send large input on stdin "
            "or as a file"
        )


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` when it is a positive, finite number of seconds (or ``None``)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"timeout must be a positive, finite number of seconds, not {timeout}")
    return float(timeout)


class ProcessHandle(ABC):
    """What a provider returns from ``start``/``attach``: one process, seen from the client.

    ``read`` must be safe to cancel (the core cancels it at the deadline): a cancelled read
    loses no output it has not returned. ``kill`` ends the whole process tree and may be called
    at any time, more than once.
    """

    ref: str
    """Identifies the process to ``attach`` from another client (opaque to the core)."""

    @abstractmethod
    async def read(self) -> tuple[Stream, bytes] | None:
        """The next non-empty chunk of stdout or stderr; ``None`` once both have ended."""

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Wait for the process to end (after ``read`` returned ``None``); its exit status."""

    @abstractmethod
    async def kill(self) -> None:
        """Kill the process and everything it started."""

    async def write_stdin(self, data: bytes) -> None:
        """Write to the process's stdin (started with ``stdin_open``)."""
        raise Unsupported("this provider cannot stream stdin to a running process")

    async def close_stdin(self) -> None:
        """Close the process's stdin: it reads end-of-file."""
        raise Unsupported("this provider cannot stream stdin to a running process")

    async def close(self) -> None:
        """Release what the client holds; a detached process keeps running."""


class CompletedHandle(ProcessHandle):
    """A process that ended before it could start (e.g. 127, command not found): its output
    and status, as a handle."""

    def __init__(
        self, status: ExitStatus, chunks: Sequence[tuple[Stream, bytes]] = (), ref: str = ""
    ) -> None:
        self.ref = ref
        self._status = status
        self._chunks = list(chunks)

    async def read(self) -> tuple[Stream, bytes] | None:
        return self._chunks.pop(0) if self._chunks else None

    async def wait(self) -> ExitStatus:
        return self._status

    async def kill(self) -> None:
        self._chunks.clear()


class QueuedHandle(ProcessHandle):
    """A handle over a vendor's output stream, followed by a task of its own into a bounded
    queue (so a cancelled ``read`` loses nothing, and a slow reader holds the command back).

    A subclass implements :meth:`pump` (``await self.emit(...)`` each chunk, set ``status``)
    and the stdin methods, and calls :meth:`follow` (and :meth:`feed`) once the process
    started; ``kill`` (the tree) is called until the stream has ended.
    """

    def __init__(
        self,
        ref: str,
        translate: Callable[[BaseException], SandboxError],
        kill: Callable[[], Awaitable[None]],
        ahead: int = 16,
    ) -> None:
        self.ref = ref
        self._kill = kill
        self.status: ExitStatus | None = None
        self.error: SandboxError | None = None
        self.ended = anyio.Event()
        self._translate = translate
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Stream, bytes]](ahead)
        self._tasks: list[Any] = []

    @abstractmethod
    async def pump(self) -> None:
        """Follow the vendor's stream to its end; an exception is kept (translated) for
        ``read`` and ``wait``."""

    async def emit(self, kind: Stream, data: bytes) -> None:
        await self._send.send((kind, data))

    def follow(self) -> None:
        """Start following the output."""
        self._tasks.append(spawn(self._follow))

    def feed(self, data: bytes | None, close: bool) -> None:
        """Feed ``data`` to stdin (then close it if ``close``) from another task, while output
        flows; a command need not read it."""
        if data is not None:
            self._tasks.append(spawn(lambda: self._feed(data, close)))

    def stop_following(self) -> None:
        """All output is in (the stream said so before the vendor ends it): ``read`` ends, and
        the task following the stream is cancelled."""
        self._send.close()
        if self._tasks and self._tasks[0] is not None:
            self._tasks[0].cancel()

    async def _follow(self) -> None:
        try:
            async with self._send:
                await self.pump()
        except anyio.BrokenResourceError:
            pass
        except Exception as exc:
            self.error = self._translate(exc)
        finally:
            self.ended.set()

    async def _feed(self, data: bytes, close: bool) -> None:
        with contextlib.suppress(SandboxError):
            await self.write_stdin(data)
            if close:
                await self.close_stdin()

    async def read(self) -> tuple[Stream, bytes] | None:
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            await self.ended.wait()
            if self.error is not None and self.status is None:
                raise self.error from None
            return None

    async def kill(self) -> None:
        if not self.ended.is_set():
            await self._kill()

    async def wait(self) -> ExitStatus:
        await self.ended.wait()
        if self.status is None:
            self.status = await self.final_status()
        return self.status

    async def final_status(self) -> ExitStatus:
        """The status when the stream ended without one (default: its error)."""
        raise self.error or ProviderError(f"the output of {self.ref} ended without an exit status")

    async def close(self) -> None:
        for task in self._tasks:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self._receive.aclose()


class Process:
    """A command running in a sandbox, from :meth:`Sandbox.start` or :meth:`Sandbox.attach`.

    Iterate it for output chunks as they come (``async for event in proc``), then one ``exit``
    event; or ``await proc.wait()`` for an :class:`ExecResult` holding the output (up to
    ``output_limit`` bytes per stream, whether or not it was also iterated). ``kill()`` ends
    the whole process tree. As an async context manager it kills the process on exit;
    ``close()`` instead leaves it running (its ``ref`` reaches it again).
    """

    def __init__(
        self,
        handle: ProcessHandle,
        *,
        provider: str,
        sandbox_id: str,
        command: Sequence[str] = (),
        timeout: float | None = None,
        output_limit: int = 0,
    ) -> None:
        self._handle = handle
        self.provider = provider
        self.sandbox_id = sandbox_id
        self.command = tuple(command)
        self.timeout = timeout
        self._started = time.monotonic()
        self._deadline = None if timeout is None else self._started + timeout
        self._out = CappedBuffer(output_limit)
        self._err = CappedBuffer(output_limit)
        self._ended = False
        self._status: ExitStatus | None = None
        self._closed = False

    @classmethod
    async def start(
        cls,
        backend: BaseBackend,
        sandbox_id: str,
        command: Command,
        options: StartOptions,
        *,
        output_limit: int = 0,
    ) -> Process:
        """Check the arguments, start the command through ``backend`` and follow it.

        ``options.timeout`` is the deadline the core enforces (and passes on to the provider).
        Raises ``ConfigError``/``ArgumentTypeError`` for bad arguments, ``Unsupported`` for
        what the provider cannot do, and the provider's typed errors. Cancelled while the
        provider is starting the command, it waits for the start and kills what started.
        """
        argv = argv_of(command)
        timeout = check_timeout(options.timeout)
        caps = backend.capabilities
        if options.user is not None and not caps.exec_user:
            raise Unsupported(
                f"the {backend.name} provider cannot run commands as another user",
                provider=backend.name,
                op="exec",
            )
        if options.stdin_open and not caps.stdin_streaming:
            raise Unsupported(
                f"the {backend.name} provider cannot stream stdin to a running process",
                provider=backend.name,
                op="exec",
            )
        if options.stdin is not None and not isinstance(options.stdin, bytes):
            raise ArgumentTypeError("stdin must be bytes or str")
        checked = options.model_copy(update={"env": check_env(options.env), "timeout": timeout})
        # Shielded: a provider may have started the command before its answer arrives, so a
        # start cancelled in flight completes and then ends what it started.
        with anyio.CancelScope(shield=True):
            handle = await backend.start(sandbox_id, argv, checked)
        process = cls(
            handle,
            provider=backend.name,
            sandbox_id=sandbox_id,
            command=argv,
            timeout=timeout,
            output_limit=output_limit,
        )
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            await process.end()
            raise
        return process

    # -- what users call ----------------------------------------------------------------------

    @property
    def ref(self) -> str:
        """Pass to ``Sandbox.attach`` (from this client or another) to reach the process."""
        return self._handle.ref

    @property
    def exit_code(self) -> int | None:
        """The exit status once the process has ended and was waited for, else ``None``."""
        return None if self._status is None else self._status.exit_code

    def __aiter__(self) -> AsyncIterator[ExecEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ExecEvent]:
        while (chunk := await self._next()) is not None:
            yield ExecEvent(kind=chunk[0], data=chunk[1])
        status = await self._wait_status()
        yield ExecEvent(kind="exit", exit_code=status.exit_code, signal=status.signal)

    async def wait(self) -> ExecResult:
        """Wait for the process to end; its exit status and (bounded) output.

        Raises ``CommandTimeout`` (the tree killed, the partial output attached) when the
        process was started with a timeout that passes.
        """
        while await self._next() is not None:
            pass
        status = await self._wait_status()
        return ExecResult(
            exit_code=status.exit_code,
            signal=status.signal,
            stdout_bytes=self._out.getvalue(),
            stderr_bytes=self._err.getvalue(),
            stdout_truncated=self._out.truncated,
            stderr_truncated=self._err.truncated,
            duration_s=time.monotonic() - self._started,
        )

    async def kill(self) -> None:
        """Kill the process and everything it started (nothing happens once it has ended, or
        once its sandbox is gone)."""
        if self._status is None:
            with contextlib.suppress(ProcessNotFound, SandboxNotFound):
                await self._handle.kill()

    async def write_stdin(self, data: bytes | str) -> None:
        """Write to the process's stdin (``Sandbox.start(..., stdin=True)``)."""
        if not isinstance(data, (bytes, str)):
            raise ArgumentTypeError(f"stdin data must be bytes or str, not {type(data).__name__}")
        await self._handle.write_stdin(data.encode() if isinstance(data, str) else data)

    async def close_stdin(self) -> None:
        """Close the process's stdin, so it reads end-of-file."""
        await self._handle.close_stdin()

    async def close(self) -> None:
        """Release the client's hold on the process; one still running keeps running."""
        if not self._closed:
            self._closed = True
            with anyio.CancelScope(shield=True):
                await self._handle.close()

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.end()

    async def end(self) -> None:
        """Kill the process unless it has ended, then release it (what leaving a block does)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.kill()
            finally:
                await self.close()

    def __repr__(self) -> str:
        return f"<Process {self.provider}:{self.sandbox_id} {self.ref}>"

    # -- the one place a command's deadline is enforced ----------------------------------------

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    async def _next(self) -> tuple[Stream, bytes] | None:
        if self._ended:
            return None
        remaining = self._remaining()
        if remaining is None:
            chunk = await self._handle.read()
        else:
            with anyio.move_on_after(max(remaining, 0)) as scope:
                chunk = await self._handle.read()
            if scope.cancelled_caught:
                raise await self._timed_out()
        return self._take(chunk)

    def _take(self, chunk: tuple[Stream, bytes] | None) -> tuple[Stream, bytes] | None:
        if chunk is None:
            self._ended = True
            return None
        kind, data = chunk
        if kind == "stdout":
            self._out.write(data)
        elif kind == "stderr":
            self._err.write(data)
        else:
            raise ProviderError(f"invalid output stream from the provider: {kind!r}")
        return chunk

    async def _wait_status(self) -> ExitStatus:
        if self._status is None:
            remaining = self._remaining()
            if remaining is None:
                status = await self._handle.wait()
            else:
                with anyio.move_on_after(max(remaining, 0)) as scope:
                    status = await self._handle.wait()
                if scope.cancelled_caught:
                    raise await self._timed_out()
            self._status = exit_status(status.exit_code, status.signal)
        return self._status

    async def _timed_out(self) -> CommandTimeout:
        """Kill the tree, keep what it had already written, and build the error."""
        with anyio.CancelScope(shield=True):
            await self._handle.kill()
            # What the dying process left is kept; its stream may end in an error now: moot.
            with anyio.move_on_after(_DRAIN_AFTER_KILL), contextlib.suppress(SandboxError):
                while not self._ended:
                    self._take(await self._handle.read())
            self._ended = True
            with anyio.move_on_after(_DRAIN_AFTER_KILL), contextlib.suppress(SandboxError):
                self._status = await self._handle.wait()
            if self._status is None:
                self._status = ExitStatus(137, 9)
        return CommandTimeout(
            f"command timed out after {self.timeout:g}s; its process tree was killed",
            timeout=self.timeout,
            stdout=self._out.getvalue(),
            stderr=self._err.getvalue(),
            provider=self.provider,
            op="exec",
            sandbox_id=self.sandbox_id,
        )


async def exec_stream(process: Process) -> AsyncIterator[ExecEvent]:
    """``process``'s events; leaving early (or failing) kills it."""
    try:
        async for event in process:
            yield event
    finally:
        await process.end()


async def run(process: Process) -> ExecResult:
    """Wait for ``process`` to end; cancelled or failed, it is killed."""
    try:
        return await process.wait()
    finally:
        await process.end()


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Close an async generator (kills its command if still running); plain iterators need nothing."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
