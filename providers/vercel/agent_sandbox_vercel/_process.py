"""One command in a Vercel sandbox, seen through the process seam.

A command run to completion (``exec``) is one streamed ``run_process`` request
(:class:`VercelRun`); a background one, or one whose stdin stays open, is started with
``create_process`` and followed through its logs stream (:class:`VercelProcess`). Vercel replays
a command's output from its start on every logs connection, so attaching later misses nothing.
A task of its own reads the shim's lines (see :mod:`._shim`) from the logs stream into a small
queue, so a cancelled ``read`` loses nothing and an unread command holds back its stream rather
than the client's memory; a ``run_process`` answer is read by ``read`` itself, from lines the SDK
has already handed over, until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from agent_sandbox._tasks import spawn
from agent_sandbox.errors import ProviderError, StdinClosed, translating
from agent_sandbox.process import ExitStatus, ProcessHandle, Stream, exit_status

from ._errors import NAME, rows
from ._shim import KILL_SIGNAL, MAX_LINE, Status, decode

if TYPE_CHECKING:
    from vercel.sandbox import CompletedProcess, Process, SandboxRuntimeSession

_QUEUE = 8
SPILL = 4 * 1024 * 1024
"""Characters of a ``run_process`` answer left unread before the rest is read from the logs
stream instead (which waits for the reader)."""
UNSTARTED = (126, 127)
"""Vercel's status of a command it could not execute (missing, or not executable): with not a
line written, the runner never ran, nor did the command."""
MISSING_PERL = (
    b"perl: not found in the sandbox's image, or not executable; the Vercel provider runs every command through "
    b"a small perl program where its command runner cannot run (every Vercel managed image has "
    b"perl)\n"
)
MISSING_RUNNER = (
    b"agent-sandbox's command runner could not be started in the sandbox (was it removed?); "
    b"the next command uploads it again, or runs through perl\n"
)

Item = tuple[Stream, bytes] | ExitStatus | Exception


class VercelProcess(ProcessHandle):
    """A command of a Vercel sandbox (its ``ref`` is Vercel's command id)."""

    def __init__(
        self,
        proc: Process,
        sandbox_id: str,
        stdin: bytes | None = None,
        on_unstarted: Callable[[], None] | None = None,
    ) -> None:
        self._sandbox_id = sandbox_id
        self._on_unstarted = on_unstarted
        self._follow_from(proc)
        self._feeder = spawn(lambda: self._feed(stdin)) if stdin is not None else None

    def _follow_from(self, proc: Process) -> None:
        """Start reading the command's output (once it has started)."""
        self.ref = proc.id
        self._proc = proc
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue(_QUEUE)  # None: the end
        self._drained = False
        self._status: ExitStatus | None = None
        self._ended: ExitStatus | None = None
        self._framed = False
        self._pump: asyncio.Task[None] | None = spawn(self._follow)

    def _translating(self, op: str) -> contextlib.AbstractContextManager[None]:
        return translating(NAME, op, self._sandbox_id, table=rows)

    def _lines(self) -> AsyncGenerator[str, None]:
        """The shim's lines, from the command's logs stream."""
        return _logs(self._proc, skip=0)

    async def _exit_code(self) -> int:
        """Vercel's own status of the command (when the shim reported none)."""
        return await self._proc.wait()

    def _take(self, line: str) -> tuple[Stream, bytes] | ExitStatus:
        """One of the shim's lines, checked (nothing may follow the status)."""
        if self._ended is not None:
            raise ProviderError(
                f"unreadable output from the sandbox after the status: {line[:80]!r}"
            )
        item = decode(line)
        self._framed = True
        if isinstance(item, Status):
            self._ended = exit_status(item.exit_code, item.signal)
            return self._ended
        return item

    def _vercel_end(self, code: int) -> list[Item]:
        """The end of a command the shim reported no status of (it never ran, or was killed):
        Vercel's status, after a message when the shim itself could not start."""
        items: list[Item] = []
        if code in UNSTARTED and not self._framed:
            if self._on_unstarted is not None:
                self._on_unstarted()
            items.append(("stderr", MISSING_PERL if self._proc.name == "perl" else MISSING_RUNNER))
        items.append(exit_status(code))
        return items

    async def _follow(self) -> None:
        send = self._queue.put
        try:
            with self._translating("exec"):
                async with contextlib.aclosing(self._lines()) as lines:
                    async for line in lines:
                        await send(self._take(line))
                if self._ended is None:
                    for item in self._vercel_end(await self._exit_code()):
                        await send(item)
        except Exception as exc:
            await send(exc)
        await send(None)

    async def _feed(self, data: bytes | None) -> None:
        """Write ``data`` to stdin, then close it; a process that stopped reading is fine."""
        stdin = self._proc.stdin
        if stdin is None or data is None:
            return
        with contextlib.suppress(Exception):
            if data:
                await stdin.send(data)
        with contextlib.suppress(Exception):
            await stdin.aclose()

    async def read(self) -> tuple[Stream, bytes] | None:
        while not self._drained:
            item = await self._queue.get()
            if item is None:
                self._drained = True
                return None
            if isinstance(item, Exception):
                raise item
            if isinstance(item, ExitStatus):
                self._status = item
                continue
            return item
        return None

    async def wait(self) -> ExitStatus:
        if self._status is None:
            raise ProviderError(
                "the command's stream ended without an exit status",
                provider=NAME,
                op="exec",
                sandbox_id=self._sandbox_id,
            )
        return self._status

    async def kill(self) -> None:
        """Ask the shim to SIGKILL the command's whole tree."""
        with self._translating("kill"):
            await self._proc.send_signal(KILL_SIGNAL)

    async def write_stdin(self, data: bytes) -> None:
        stdin = self._stdin()
        with self._translating("write_stdin"):
            await stdin.send(data)

    async def close_stdin(self) -> None:
        stdin = self._stdin()
        with self._translating("close_stdin"):
            await stdin.aclose()

    def _stdin(self) -> Any:
        if self._proc.stdin is None:
            raise StdinClosed(
                "the process was started without stdin=True",
                provider=NAME,
                op="write_stdin",
                sandbox_id=self._sandbox_id,
            )
        return self._proc.stdin

    async def close(self) -> None:
        tasks = {t for t in self._tasks() if t is not None and not t.done()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)  # their end, not their (cancelled) result
        self._drained = True
        with contextlib.suppress(asyncio.QueueFull):  # a reader waiting meanwhile: the end
            self._queue.put_nowait(None)

    def _tasks(self) -> tuple[asyncio.Task[None] | None, ...]:
        return self._pump, self._feeder


class VercelRun(VercelProcess):
    """A command run to completion with ``run_process``: started and followed in one streamed
    request. Past :data:`SPILL` unread characters, the rest of its output comes from its logs
    stream instead (the characters already taken skipped), so a slow reader holds back the
    stream, not the client's memory. Given several ways to run it (the command runner, then
    Perl), the next is tried only when one could not start at all (:data:`UNSTARTED`), so the
    command never ran."""

    def __init__(self, session: SandboxRuntimeSession, sandbox_id: str) -> None:
        self._session = session
        self._sandbox_id = sandbox_id
        self._on_unstarted = None  # the runner's own start is seen (and retried) in ``begin``
        self._output = _Output()
        self._completed: CompletedProcess | None = None
        self._error: Exception | None = None
        self._spilled: Process | None = None
        self._started: Process | None = None
        self._runner: asyncio.Task[None] | None = None

    @classmethod
    async def begin(
        cls,
        session: SandboxRuntimeSession,
        sandbox_id: str,
        commands: Sequence[tuple[str, list[str]]],
        *,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        on_unstarted: Callable[[], None] | None = None,
    ) -> VercelRun:
        """Run the command (the first of ``commands`` that starts; ``on_unstarted`` is called
        for each that does not); return once Vercel has started it. Raises what the SDK raised
        when it could not start it."""
        run = cls(session, sandbox_id)
        started = asyncio.Event()

        def on_start(proc: Process) -> None:
            run._started = proc
            if started.is_set():  # the next way of running it: kill and spill go there now
                run.ref, run._proc = proc.id, proc
            started.set()

        async def go() -> None:
            try:
                for i, (command, args) in enumerate(commands):
                    run._completed = await session.run_process(
                        command,
                        args,
                        env=env,
                        stdout=run._output,  # type: ignore[arg-type]  # a text sink, as it takes
                        stderr=subprocess.DEVNULL,
                        input=stdin,
                        on_start=on_start,
                    )
                    unstarted = run._completed.returncode in UNSTARTED and not run._output.written
                    if not unstarted or i == len(commands) - 1:
                        break
                    if on_unstarted is not None:
                        on_unstarted()
            except _Spill:
                pass
            except Exception as exc:
                run._error = exc
            finally:
                run._output.end()
                started.set()

        run._runner = spawn(go)
        try:
            await started.wait()
        except BaseException:
            if run._runner is not None:
                run._runner.cancel()
            raise
        if run._started is None:
            raise run._error or ProviderError("Vercel did not start the command", provider=NAME)
        run._follow_from(run._started)
        return run

    def _follow_from(self, proc: Process) -> None:
        """Follow the command: :meth:`read` takes the answer's lines itself; a task takes over
        only when the answer did not end plainly (spilled, failed or cut short)."""
        self.ref = proc.id
        self._proc = proc
        self._queue = asyncio.Queue(_QUEUE)
        self._drained = False
        self._status = None
        self._ended = None
        self._framed = False
        self._pump = None

    async def read(self) -> tuple[Stream, bytes] | None:
        while self._pump is None:
            if self._drained:
                return None
            line = await self._output.readline()  # nothing is taken until it returns
            try:
                with self._translating("exec"):
                    if line:
                        item = self._take(line)
                        if isinstance(item, ExitStatus):
                            self._status = item
                            continue
                        return item
                    plain = self._error is None and self._completed is not None
                    if plain and not self._output.rest():  # the answer ended plainly
                        self._drained = True
                        if self._ended is not None or self._completed is None:
                            return None
                        items = self._vercel_end(self._completed.returncode)
                        status = items.pop()
                        assert isinstance(status, ExitStatus)
                        self._status = status
                        chunk = items[0] if items else None
                        assert chunk is None or isinstance(chunk, tuple)
                        return chunk
            except Exception:
                self._drained = True
                raise
            self._pump = spawn(self._follow)  # the rest: spilled, failed or cut short
        return await super().read()

    async def _lines(self) -> AsyncGenerator[str, None]:
        while line := await self._output.readline():
            yield line
        rest = self._output.rest()
        if self._error is not None:
            raise self._error
        if self._completed is None:  # spilled: the rest from the logs stream
            self._spilled = await self._session.get_process(self.ref)
            skip = self._output.written
            async with contextlib.aclosing(_logs(self._spilled, skip=skip)) as lines:
                async for line in lines:
                    yield rest + line
                    rest = ""
        if rest:
            yield rest  # the end of a stream cut short: refused by the decoder

    async def _exit_code(self) -> int:
        if self._completed is not None:
            return self._completed.returncode
        assert self._spilled is not None
        return await self._spilled.wait()

    def _tasks(self) -> tuple[asyncio.Task[None] | None, ...]:
        return self._pump, self._runner


class _Spill(Exception):
    """The unread part of a ``run_process`` answer passed :data:`SPILL`."""


class _Output:
    """The sink ``run_process`` writes the shim's output to (a text stream, to the SDK), cut
    into lines as it comes for the process's reader. Raises :class:`_Spill` past :data:`SPILL`
    unread characters, which ends ``run_process``."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque()
        self._partial: list[str] = []
        self._partial_size = 0
        self._unread = 0
        self.written = 0
        """Characters written so far."""
        self._ended = False
        self._changed = asyncio.Event()

    def write(self, data: str) -> int:
        self.written += len(data)
        self._unread += len(data)
        start = 0
        while end := data.find("\n", start) + 1:
            self._partial.append(data[start:end])
            self._lines.append("".join(self._partial))
            self._partial, self._partial_size, start = [], 0, end
        if start < len(data):
            self._partial.append(data[start:])
            self._partial_size += len(data) - start
            if self._partial_size > MAX_LINE:  # no shim line is that long: the decoder refuses it
                self._lines.append("".join(self._partial))
                self._partial, self._partial_size = [], 0
        self._changed.set()
        if self._unread > SPILL:
            raise _Spill
        return len(data)

    def flush(self) -> None:
        pass

    def end(self) -> None:
        self._ended = True
        self._changed.set()

    async def readline(self) -> str:
        """The next line; ``""`` at the end, where :meth:`rest` is what follows the last one."""
        while not self._lines:
            if self._ended:
                return ""
            self._changed.clear()
            await self._changed.wait()
        line = self._lines.popleft()
        self._unread -= len(line)
        return line

    def rest(self) -> str:
        """What follows the last whole line (its beginning when the answer spilled)."""
        return "".join(self._partial)


async def _logs(proc: Process, *, skip: int) -> AsyncGenerator[str, None]:
    """The lines of ``proc``'s stdout logs stream, after its first ``skip`` characters."""
    reader = proc.stdout
    assert reader is not None
    try:
        while skip > 0:
            taken = await reader.read(min(skip, 1 << 20))
            if not taken:
                return
            skip -= len(taken)
        while line := await reader.readline():
            yield line
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await reader.aclose()
