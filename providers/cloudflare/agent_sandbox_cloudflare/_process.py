"""A process in a Cloudflare sandbox, followed over the Worker's event stream.

The Worker streams a process's output as ``stdout``/``stderr`` events (base64 chunks), then
``exit``. A task of the handle's own reads the stream into a small queue (so a read cancelled at
the core's deadline loses nothing, and a slow reader holds the stream back). When a response ends
with ``more`` (its share of output or time is used up), or is cut, the task follows the process
again from the byte offsets it has reached: nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import anyio
import httpx

from agent_sandbox._tasks import spawn
from agent_sandbox.errors import (
    ProviderError,
    ProviderUnavailable,
    SandboxError,
    translate,
    translating,
)
from agent_sandbox.process import ExitStatus, ProcessHandle, Stream, exit_status

from ._api import PROVIDER, Api, BridgeError, events, table

_BUFFERED = 4
"""Chunks read ahead of the reader (each at most 256 KiB)."""
_CUTS = 3
"""Broken streams in a row (no progress between them) before giving up."""

_TRANSIENT = ("exec_transport_error", "exec_error")
"""Codes of an ``error`` event after which the process is followed again (the stream from the
container broke: the sandbox may be gone, or the stream only)."""

Outcome = Literal["exit", "more", "cut"]


class BridgeProcess(ProcessHandle):
    """One process, from the response that started it (or a first ``follow``)."""

    def __init__(self, api: Api, sandbox_id: str, ref: str, response: httpx.Response) -> None:
        self.ref = ref
        self._api = api
        self._sandbox_id = sandbox_id
        self._offsets: dict[Stream, int] = {"stdout": 0, "stderr": 0}
        self._send, self._receive = anyio.create_memory_object_stream[
            tuple[Stream, bytes] | SandboxError
        ](_BUFFERED)
        self._status: ExitStatus | None = None
        self._error: SandboxError | None = None
        self._ended = False
        self._done = anyio.Event()
        self._task: asyncio.Task[None] | None = spawn(lambda: self._pump(response))

    # -- the reader task -------------------------------------------------------------------

    async def _pump(self, response: httpx.Response) -> None:
        try:
            async with self._send:
                try:
                    await self._follow(response)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    raise
                except Exception as exc:
                    self._error = translate(
                        exc, provider=PROVIDER, op="exec", sandbox_id=self._sandbox_id, table=table
                    )
                    await self._send.send(self._error)  # the reader's next read raises it
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the reader left
        finally:
            self._done.set()

    async def _follow(self, response: httpx.Response) -> None:
        """Relay responses until the exit, following again after ``more`` or a cut."""
        cuts = 0
        while True:
            before = sum(self._offsets.values())
            try:
                outcome = await self._relay(response)
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
            if outcome == "exit":
                return
            progress = sum(self._offsets.values()) > before
            cuts = 0 if outcome == "more" or progress else cuts + 1
            if cuts >= _CUTS:
                raise ProviderUnavailable(
                    f"the Worker's event stream of process {self.ref} kept breaking"
                )
            response = await self._api.follow(
                self._sandbox_id, self.ref, self._offsets["stdout"], self._offsets["stderr"]
            )

    async def _relay(self, response: httpx.Response) -> Outcome:
        """Forward one response's chunks; how it ended."""
        try:
            async for event in events(response):
                if event.name in ("stdout", "stderr"):
                    data = event.chunk()
                    stream: Stream = "stdout" if event.name == "stdout" else "stderr"
                    self._offsets[stream] += len(data)
                    await self._send.send((stream, data))
                elif event.name == "exit":
                    self._status = exit_status(event.json().get("exit_code"))
                    return "exit"
                elif event.name == "more":
                    return "more"
                elif event.name == "error":
                    body = event.json()
                    if body.get("code") in _TRANSIENT:
                        return "cut"  # following again says whether the sandbox is still there
                    raise BridgeError(502, str(body.get("code")), str(body.get("error")))
                elif event.name != "start":
                    raise ProviderError(f"unknown event {event.name!r} from the Worker")
        except (httpx.TransportError, httpx.StreamError):
            return "cut"
        return "cut"

    # -- the handle ------------------------------------------------------------------------

    async def read(self) -> tuple[Stream, bytes] | None:
        if self._ended:
            return None
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._ended = True
            return None
        if isinstance(item, SandboxError):
            self._ended = True
            raise item
        return item

    async def wait(self) -> ExitStatus:
        await self._done.wait()
        if self._status is not None:
            return self._status
        raise self._error or ProviderError(
            f"the event stream of process {self.ref} ended without its exit status",
            provider=PROVIDER,
            op="exec",
            sandbox_id=self._sandbox_id,
        )

    async def kill(self) -> None:
        if self._status is not None:
            return
        with translating(PROVIDER, "kill", self._sandbox_id, table=table):
            await self._api.kill(self._sandbox_id, self.ref)

    async def write_stdin(self, data: bytes) -> None:
        with translating(PROVIDER, "write_stdin", self._sandbox_id, table=table):
            await self._api.stdin(self._sandbox_id, self.ref, data, close=False)

    async def close_stdin(self) -> None:
        with translating(PROVIDER, "close_stdin", self._sandbox_id, table=table):
            await self._api.stdin(self._sandbox_id, self.ref, b"", close=True)

    async def close(self) -> None:
        if self._task is not None and not self._done.is_set():
            self._task.cancel()
        await self._done.wait()
        await self._receive.aclose()
