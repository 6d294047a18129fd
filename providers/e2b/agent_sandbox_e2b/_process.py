"""A command run by E2B's envd, seen through the process seam.

The command runs under :data:`agent_sandbox.tree.SUPERVISE` (envd signals one process only) in
``bash -l -c`` like the SDK's ``commands.run``, tagged with its ref so any client can ``Connect``
to it, feed its stdin or list it. Output stays bytes, stdout and stderr apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agent_sandbox import tree
from agent_sandbox.errors import SandboxError, StdinClosed
from agent_sandbox.process import QueuedHandle, exit_status, from_shell

STDIN_CHUNK = 1 << 20
_AHEAD = 16  # chunks read ahead of the caller; past them envd holds the command back
# Go's names of signals (envd reports ``ProcessState.String()``: "signal: killed").
_GO_SIGNALS = {"hangup": 1, "interrupt": 2, "quit": 3, "aborted": 6, "killed": 9,
               "segmentation fault": 11, "broken pipe": 13, "alarm clock": 14, "terminated": 15}  # fmt: skip


def pb(message: str, **fields: Any) -> Any:
    """An envd process-service message; ``(name, value)`` tuples become oneof values."""
    from e2b.envd.process import process_pb
    from protobuf import Oneof

    values = {k: Oneof(*v) if isinstance(v, tuple) else v for k, v in fields.items()}
    return getattr(process_pb, message)(**values)


def wrapper_args(ref: str, records: str, argv: list[str]) -> list[str]:
    """``bash`` arguments running ``argv`` under the supervisor, recorded in ``records``."""
    return ["-l", "-c", tree.SUPERVISE, "asb", ref, records, ref, *argv]


class EnvdProcess(QueuedHandle):
    """A command's envd stream (``Start`` or ``Connect``), read ahead by a task of its own."""

    def __init__(
        self,
        ref: str,
        events: AsyncIterator[Any],
        rpc: Any,
        headers: dict[str, str],
        kill: Callable[[int], Awaitable[None]],
        translate: Callable[[BaseException], SandboxError],
    ) -> None:
        super().__init__(ref, translate, lambda: kill(self.pid), _AHEAD)
        self.pid = 0
        self._events, self._rpc, self._headers = events, rpc, headers

    async def begin(self, stdin: bytes | None, keep_open: bool) -> None:
        """Wait for the start event (a missing cwd, a gone process surface here), then follow
        the stream; ``stdin`` is fed (then closed unless ``keep_open``) while output flows."""
        try:
            event = (await self._events.__anext__()).event.event
        except Exception as exc:
            raise self._translate(exc) from exc
        if event is None or event.field != "start":
            raise self._translate(EOFError(f"envd did not start the process: {event!r}"))
        self.pid = int(event.value.pid)
        self.follow()
        self.feed(stdin, not keep_open)

    async def pump(self) -> None:
        async for message in self._events:
            event = message.event.event if message.event is not None else None
            if event is not None and event.field == "data":
                out = event.value.output
                if out is not None and out.value and out.field in ("stdout", "stderr"):
                    await self.emit(out.field, bytes(out.value))
            elif event is not None and event.field == "end":
                end = event.value
                name = str(end.status).removeprefix("signal: ").split(" (")[0]
                signal = exit_status(None, _GO_SIGNALS.get(name, 9))
                self.status = from_shell(end.exit_code) if end.exited else signal

    async def write_stdin(self, data: bytes) -> None:
        for start in range(0, len(data), STDIN_CHUNK):
            chunk = pb("ProcessInput", input=("stdin", data[start : start + STDIN_CHUNK]))
            request = pb("SendInputRequest", process=selector(self.ref), input=chunk)
            try:
                await self._rpc.send_input(request, headers=self._headers)
            except Exception as exc:
                error = self._translate(exc)
                if "closed" in str(error) or "not found" in str(error):
                    raise StdinClosed(f"stdin of {self.ref} is closed: {error}") from exc
                raise error from exc

    async def close_stdin(self) -> None:
        if not self.ended.is_set():
            try:
                request = pb("CloseStdinRequest", process=selector(self.ref))
                await self._rpc.close_stdin(request, headers=self._headers)
            except Exception as exc:
                raise self._translate(exc) from exc

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(Exception):
            await self._events.aclose()  # type: ignore[attr-defined]


def selector(ref: str) -> Any:
    """envd's selector of the process tagged ``ref``."""
    return pb("ProcessSelector", selector=("tag", ref))
