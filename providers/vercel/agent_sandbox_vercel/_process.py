"""One command in a Vercel sandbox, seen through the process seam.

A command is started with ``create_process`` and followed through its logs stream (Vercel
replays a command's output from its start on every connection, so attaching later misses
nothing). A task of its own reads the shim's lines (see :mod:`._shim`) into a small queue, so a
cancelled ``read`` loses nothing and an unread command holds back its stream rather than the
client's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import anyio

from agent_sandbox._tasks import spawn
from agent_sandbox.errors import ProviderError, StdinClosed, translating
from agent_sandbox.process import ExitStatus, ProcessHandle, Stream, exit_status

from ._errors import NAME, rows
from ._shim import KILL_SIGNAL, Status, decode

if TYPE_CHECKING:
    from vercel.sandbox import Process

_QUEUE = 8
MISSING_PERL = (
    b"perl: not found in the sandbox's image; the Vercel provider runs every command through "
    b"a small perl program (every Vercel managed image has perl)\n"
)

Item = tuple[Stream, bytes] | ExitStatus | Exception


class VercelProcess(ProcessHandle):
    """A command of a Vercel sandbox (its ``ref`` is Vercel's command id)."""

    def __init__(self, proc: Process, sandbox_id: str, stdin: bytes | None = None) -> None:
        self.ref = proc.id
        self._proc = proc
        self._sandbox_id = sandbox_id
        self._send, self._receive = anyio.create_memory_object_stream[Item](_QUEUE)
        self._status: ExitStatus | None = None
        self._ended: ExitStatus | None = None
        self._pump = spawn(self._follow)
        self._feeder = spawn(lambda: self._feed(stdin)) if stdin is not None else None

    def _translating(self, op: str) -> contextlib.AbstractContextManager[None]:
        return translating(NAME, op, self._sandbox_id, table=rows)

    async def _follow(self) -> None:
        reader = self._proc.stdout
        assert reader is not None
        framed = False
        async with self._send:
            try:
                with self._translating("exec"):
                    while line := await reader.readline():
                        item = decode(line)
                        framed = True
                        if isinstance(item, Status):
                            self._ended = exit_status(item.exit_code, item.signal)
                            await self._send.send(self._ended)
                        else:
                            await self._send.send(item)
                    if self._ended is None:  # the shim never ran, or was killed: Vercel's status
                        code = await self._proc.wait()
                        if code == 127 and not framed:
                            await self._send.send(("stderr", MISSING_PERL))
                        await self._send.send(exit_status(code))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            except Exception as exc:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self._send.send(exc)
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await reader.aclose()

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
        while True:
            try:
                item = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return None
            if isinstance(item, Exception):
                raise item
            if isinstance(item, ExitStatus):
                self._status = item
                continue
            return item

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
        tasks = {t for t in (self._pump, self._feeder) if t is not None and not t.done()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)  # their end, not their (cancelled) result
        await self._receive.aclose()
