"""Processes through the engine's own exec API: the fallback for a sandbox whose exec agent
cannot run (another architecture, a read-only image), and for commands run as another user.

Each exec runs under a one-line ``sh`` wrapper that reports its process group on stderr, so
``kill`` ends the whole group from inside the container. Such a process cannot be attached
again, and it is not listed.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from agent_sandbox._tasks import spawn
from agent_sandbox.errors import SandboxError, StdinClosed
from agent_sandbox.models import StartOptions
from agent_sandbox.process import ExitStatus, ProcessHandle, Stream, exit_status

from ._errors import PROVIDER
from ._stream import DockerStream

if TYPE_CHECKING:
    from ._backend import DockerBackend

_WRAPPER = 'echo "$$" >&2; exec "$@"'  # an exec starts as a session leader: $$ is its group
_KILL = 'kill -KILL "-$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null; exit 0'


class EngineProcess(ProcessHandle):
    """One exec of the engine, its attach stream read without a thread."""

    def __init__(self, backend: DockerBackend, sandbox_id: str, ref: str, stream: Any) -> None:
        self.ref = ref
        self._backend = backend
        self._sandbox_id = sandbox_id
        self._stream: DockerStream = stream
        self._chunks: deque[tuple[Stream, bytes]] = deque()
        self._pgid: int | None = None
        self._head = b""  # stderr until the wrapper's line is complete
        self._ended = False
        self._feeder = anyio.CancelScope()
        self._stdin_open = False

    @classmethod
    async def start(
        cls, backend: DockerBackend, sandbox_id: str, argv: list[str], options: StartOptions
    ) -> EngineProcess:
        """Create and start the exec; feed ``options.stdin`` in the background."""
        piped = options.stdin is not None or options.stdin_open

        def run(api: Any) -> tuple[str, DockerStream]:
            made = api.exec_create(
                sandbox_id,
                ["/bin/sh", "-c", _WRAPPER, "sh", *argv],
                stdin=piped,
                environment=[f"{k}={v}" for k, v in options.env.items()] or None,
                workdir=options.cwd,
                user=options.user or "",
            )
            body = {"Tty": False, "Detach": False}
            return made["Id"], DockerStream.open(api, "/exec/{0}/start", made["Id"], data=body)

        proc = cls(backend, sandbox_id, *await backend._call("exec", run, sandbox_id=sandbox_id))
        proc._stdin_open = options.stdin_open
        if options.stdin:
            spawn(lambda: proc._feed(options.stdin or b"", close=not options.stdin_open))
        elif piped and not options.stdin_open:
            proc._stream.shutdown_write()
        return proc

    async def _feed(self, data: bytes, *, close: bool) -> None:
        with self._feeder, contextlib.suppress(SandboxError):
            await self._stream.send(data)
            if close:
                self._stream.shutdown_write()

    async def _next(self) -> bool:
        """Receive more of the stream into ``_chunks``; ``False`` once it has ended."""
        frames = None if self._ended else await self._stream.frames()
        if frames is None:
            self._ended = True
            if self._head:
                self._chunks.append(("stderr", self._head))
                self._head = b""
            return False
        for kind, data in frames:
            if kind == "stderr" and self._pgid is None:
                line, newline, rest = (self._head + data).partition(b"\n")
                if not newline:
                    self._head = line
                    continue
                self._head, data = b"", rest
                if line.isdigit():
                    self._pgid = int(line)
                else:  # not the wrapper's line (it could not run): the command's own
                    self._pgid, data = 0, line + newline + rest
            if data:
                self._chunks.append(("stdout" if kind == "stdout" else "stderr", data))
        return True

    async def read(self) -> tuple[Stream, bytes] | None:
        while not self._chunks:
            if not await self._next():
                break
        return self._chunks.popleft() if self._chunks else None

    async def wait(self) -> ExitStatus:
        delay = 0.002
        while True:  # a command that closed its output may outlive its stream: ask the engine
            info = await self._backend._call(
                "exec", lambda api: api.exec_inspect(self.ref), sandbox_id=self._sandbox_id
            )
            if not info.get("Running") and info.get("ExitCode") is not None:
                code = int(info["ExitCode"])
                return (
                    exit_status(None, code - 128) if 128 < code <= 128 + 64 else exit_status(code)
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def kill(self) -> None:
        with anyio.move_on_after(5):
            while self._pgid is None and await self._next():
                pass
        if self._pgid:
            argv = ["/bin/sh", "-c", _KILL, "sh", str(self._pgid)]

            def run(api: Any) -> None:
                made = api.exec_create(self._sandbox_id, argv, user="0")
                api.exec_start(made["Id"])

            await self._backend._call("exec", run, sandbox_id=self._sandbox_id)

    async def write_stdin(self, data: bytes) -> None:
        if not self._stdin_open:
            raise StdinClosed("the process's stdin is closed", provider=PROVIDER, op="write_stdin")
        with anyio.CancelScope(shield=True):
            await self._stream.send(data)

    async def close_stdin(self) -> None:
        self._stdin_open = False
        self._stream.shutdown_write()

    async def close(self) -> None:
        self._feeder.cancel()
        self._stream.close()
