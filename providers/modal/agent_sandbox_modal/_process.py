"""A command in a Modal sandbox, seen through the task command router (:mod:`._sdk`).

Every command runs as ``sh -c 'exec "$@"' sh <argv>``: argv stays argv (never spliced into a
script), a command that cannot be found is the shell's 127 with its message on stderr, and a
command given no stdin reads ``/dev/null``. Its environment carries the mark of
:mod:`agent_sandbox.tree` (``AGENT_SANDBOX_PROC=<ref>``): Modal has no call that ends a command,
so :meth:`ModalProcess.kill` runs that module's tree kill in the sandbox, which stops, then kills,
every process bearing the mark and every descendant of one (children that left the process group
or cleared their environment included, as long as their parent lives). No supervisor stands
between the router and the command, ``exec``'d in place: the router's exit status, signal
included, is the command's own. A command started for ``Sandbox.start`` also appends a
line to :data:`REGISTRY` in the sandbox, which is how ``processes()`` finds it from any client.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agent_sandbox import tree
from agent_sandbox._tasks import spawn
from agent_sandbox.errors import SandboxError, StdinClosed, translating
from agent_sandbox.process import ExitStatus, ProcessHandle, Stream, exit_status

from . import _sdk
from ._errors import NAME, rows

REGISTRY = "/tmp/.agent-sandbox/processes"
"""One JSON line per process started with ``Sandbox.start``: ``{"ref", "command", "started_at"}``."""
RECORDED_COMMAND_CHARS = 4096
KILL_SECONDS = 30.0

_REGISTER = (
    'mkdir -p /tmp/.agent-sandbox 2>/dev/null && printf "%s\\n" "$0" >> '
    + REGISTRY
    + " 2>/dev/null; "
)


def wrap(argv: list[str], *, stdin: bool, record: str | None = None) -> list[str]:
    """The argv Modal runs for ``argv``: through ``sh``, stdin from ``/dev/null`` unless
    ``stdin``, registered in :data:`REGISTRY` when ``record`` is given."""
    script = 'exec "$@"' if stdin else 'exec "$@" </dev/null'
    if record is not None:
        script = _REGISTER + script
    return ["sh", "-c", script, record or "sh", *argv]


def record(ref: str, argv: list[str]) -> str:
    """The registry line of a started process (its command cut to a bound)."""
    command: list[str] = []
    size = 0
    for arg in argv:
        size += len(arg)
        if size > RECORDED_COMMAND_CHARS:
            break
        command.append(arg)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"ref": ref, "command": command, "started_at": started})


def status_of(end: tuple[str, int] | None) -> ExitStatus | None:
    """Our exit status from the router's ``("code" | "signal", n)``."""
    if end is None:
        return None
    kind, number = end
    return exit_status(None, number) if kind == "signal" else exit_status(number)


class ModalProcess(ProcessHandle):
    """One command: a task of this client pumps its output (and then its end) from the router
    into a small buffer that :meth:`read` takes from, so a cancelled read loses nothing."""

    def __init__(
        self,
        sandbox: Any,
        sandbox_id: str,
        task_id: str,
        ref: str,
        *,
        stdin_offset: int = 0,
        stdin_closed: bool = True,
    ) -> None:
        self.ref = ref
        self._sandbox = sandbox
        self._sandbox_id = sandbox_id
        self._task_id = task_id
        self._stdin_offset = stdin_offset
        self._stdin_closed = stdin_closed
        self._status: ExitStatus | None = None
        self._send: MemoryObjectSendStream[tuple[Stream, bytes] | SandboxError]
        self._receive: MemoryObjectReceiveStream[tuple[Stream, bytes] | SandboxError]
        self._send, self._receive = anyio.create_memory_object_stream(8)
        self._pumped = anyio.Event()
        self._pump_task = spawn(self._pump)

    def _translating(self, op: str) -> contextlib.AbstractContextManager[None]:
        return translating(NAME, op, self._sandbox_id, table=rows)

    async def _pump(self) -> None:
        try:
            async with self._send:
                try:
                    with self._translating("exec"):
                        stream = _sdk.output.aio(self._sandbox, self._task_id, self.ref)
                        try:
                            async for kind, value in stream:
                                if kind in ("stdout", "stderr"):
                                    await self._send.send((kind, value))
                                else:
                                    self._status = status_of((kind, value))
                        finally:
                            with anyio.CancelScope(shield=True):
                                await stream.aclose()
                except SandboxError as exc:
                    await self._send.send(exc)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._pumped.set()

    async def read(self) -> tuple[Stream, bytes] | None:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None
        if isinstance(item, SandboxError):
            raise item
        return item

    async def wait(self) -> ExitStatus:
        await self._pumped.wait()
        if self._status is None:
            with self._translating("exec"):
                self._status = status_of(
                    await _sdk.wait.aio(self._sandbox, self._task_id, self.ref)
                )
        if self._status is None:
            raise SandboxError(f"Modal reported no exit status for {self.ref}")
        return self._status

    async def kill(self) -> None:
        """Stop, then kill, the command and every process it started."""
        # No supervisor: the command is exec'd in place, so the walk starts from the marks alone.
        argv = wrap(["sh", "-c", tree.KILL, "kill", self.ref, ""], stdin=False)
        killer = str(uuid.uuid4())
        with self._translating("kill"), anyio.fail_after(KILL_SECONDS):
            task_id = await _sdk.start.aio(self._sandbox, killer, argv, "/", {}, None, None)
            await _sdk.wait.aio(self._sandbox, task_id, killer)

    async def write_stdin(self, data: bytes) -> None:
        if self._stdin_closed:
            raise StdinClosed(f"the stdin of {self.ref} is closed", provider=NAME, op="write_stdin")
        with self._translating("write_stdin"):
            await _sdk.write_stdin.aio(
                self._sandbox, self._task_id, self.ref, self._stdin_offset, data, False
            )
        self._stdin_offset += len(data)

    async def close_stdin(self) -> None:
        if self._stdin_closed:
            return
        self._stdin_closed = True
        with self._translating("close_stdin"):
            await _sdk.write_stdin.aio(
                self._sandbox, self._task_id, self.ref, self._stdin_offset, b"", True
            )

    async def close(self) -> None:
        if self._pump_task is not None and not self._pumped.is_set():
            self._pump_task.cancel()
        await self._pumped.wait()
        await self._receive.aclose()
