"""The ``bash`` tool: a persistent shell in the sandbox.

Where the provider streams stdin to a running process (``Capabilities.stdin_streaming``), the
shell is one long-lived process started with ``Sandbox.start``: each call writes the command to
its stdin and reads its output up to a marker line carrying the exit status, so the working
directory, variables, functions and background jobs carry over as in a terminal. Elsewhere each
call runs a fresh shell that restores the previous call's working directory, variables and
functions from a state directory in the sandbox. A call that times out kills the shell (and
everything it started); the next call gets a new one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from .. import _scripts
from ..errors import CommandTimeout
from ..models import ExecEvent
from ..process import Process
from ._inputs import BashInput
from ._schema import ToolResult

if TYPE_CHECKING:
    from ..sandbox import Sandbox
    from .toolkit import ToolKit

DESCRIPTION = """Run a shell command in the sandbox and return its combined stdout and stderr.
The shell is persistent: the working directory, exported variables, shell variables and functions \
carry over from one call to the next. Set restart to true to get a fresh shell. Commands run \
non-interactively with no stdin; a command that runs longer than timeout_ms (default {default}, \
at most {maximum}) is \
killed and the shell restarted. Long output is cut, and the whole output is saved to a file whose \
path is given."""

CAPTURE_LIMIT = 8 * 1024 * 1024
"""Bytes of a command's output kept in memory; beyond that the output is cut at the source."""
_MARKER_ROOM = 256


@dataclass
class ShellOutput:
    """One call's result: the output (stdout and stderr interleaved), its exit status."""

    output: bytes
    exit_code: int
    truncated: bool = False
    ended: bool = False
    """The shell itself exited (``exit`` in the command): the next call starts a new one."""
    timed_out: bool = False
    """The call ran out of time: the shell and what it started were killed."""


class Shell:
    """One toolkit's shell in one sandbox."""

    def __init__(self, sandbox: Sandbox, state_dir: str | None) -> None:
        self.sandbox = sandbox
        self.token = uuid.uuid4().hex[:12]
        self._state_base = "" if state_dir is None else (state_dir.rstrip("/") or "/")
        self._generation = 0
        self._process: Process | None = None
        self._events: AsyncIterator[ExecEvent] | None = None

    @property
    def persistent(self) -> bool:
        """Whether this shell is one long-lived process (else state restored per call)."""
        return self.sandbox.backend.capabilities.stdin_streaming

    async def restart(self) -> None:
        """Start afresh: the next call sees no previous state (and nothing it left running)."""
        self._generation += 1
        await self.close()

    async def close(self) -> None:
        """Kill the shell process, if one runs."""
        process, self._process = self._process, None
        self._events = None
        if process is not None:
            await process.end()

    async def run(self, command: str, timeout: float, cwd: str | None) -> ShellOutput:
        """Run ``command``; after ``timeout`` seconds the shell is killed (``timed_out``)."""
        if not self.persistent:
            return await self._run_fresh(command, timeout, cwd)
        if self._process is None:
            self._process = await self.sandbox.start(_scripts.SHELL, stdin=True, cwd=cwd)
            self._events = self._process.__aiter__()
        marker = f"__asb_{uuid.uuid4().hex}"
        pattern = re.compile(rb"\n" + marker.encode() + rb" (\d+)\n$")
        kept = bytearray()
        truncated = False
        try:
            with anyio.fail_after(timeout):
                await self._process.write_stdin(_scripts.shell_call(command, marker))
                assert self._events is not None
                async for event in self._events:
                    if event.kind == "exit":
                        self._process = self._events = None
                        return ShellOutput(bytes(kept), event.exit_code or 0, truncated, True)
                    kept += event.data
                    offset = max(len(kept) - _MARKER_ROOM, 0)
                    found = pattern.search(kept, offset)
                    if found is not None:
                        output = bytes(kept[: found.start()])
                        return ShellOutput(output, int(found.group(1)), truncated)
                    if len(kept) > CAPTURE_LIMIT + _MARKER_ROOM:
                        # keep the head, and the tail where the marker will show
                        del kept[CAPTURE_LIMIT : len(kept) - _MARKER_ROOM]
                        truncated = True
        except TimeoutError:
            await self.close()
            return ShellOutput(bytes(kept[:CAPTURE_LIMIT]), 137, truncated, timed_out=True)
        except BaseException:  # a provider's failure, or the call cancelled: the shell is
            with anyio.CancelScope(shield=True):  # mid-command, so it goes, with what it started
                await self.close()
            raise
        await self.close()  # its output ended without an exit event: nothing more will come
        return ShellOutput(bytes(kept), 0, truncated, True)

    async def _run_fresh(self, command: str, timeout: float, cwd: str | None) -> ShellOutput:
        has_stdin = self.sandbox.backend.capabilities.stdin
        name = f"{self.token}-{self._generation}"
        argv = ["sh", "-c", _scripts.SHELL_LAUNCHER, "sh", _scripts.SHELL_WRAPPER]
        argv += [self._state_base, name] + ([] if has_stdin else [command])
        try:
            result = await self.sandbox.exec(
                argv,
                stdin=command if has_stdin else None,
                timeout=timeout,
                cwd=cwd,
                output_limit=CAPTURE_LIMIT,
            )
        except CommandTimeout as exc:
            self._generation += 1
            return ShellOutput(exc.stdout, 137, timed_out=True)
        return ShellOutput(result.stdout_bytes, result.exit_code, result.stdout_truncated)


async def run(kit: ToolKit, args: BashInput) -> ToolResult:
    """The ``bash`` tool."""
    async with kit.shell_lock:
        notes: list[str] = []
        if args.restart:
            await kit.shell.restart()
            notes.append("The shell was restarted.")
        if args.command is None or not args.command.strip():
            if args.restart:
                return ToolResult(" ".join(notes))
            return ToolResult("no command given (pass command, or restart: true)", True)
        timeout_ms = args.timeout_ms or kit.default_timeout_ms
        if timeout_ms > kit.max_timeout_ms:
            notes.append(f"[timeout_ms lowered to the maximum, {kit.max_timeout_ms}]")
            timeout_ms = kit.max_timeout_ms
        result = await kit.shell.run(args.command, timeout_ms / 1000, await kit.cwd())
        if result.timed_out:
            partial = result.output.decode("utf-8", errors="replace")
            message = (
                f"[the command timed out after {timeout_ms} ms and was killed; the shell was "
                "restarted, so the working directory and variables are reset]"
            )
            return ToolResult((partial + "\n" + message) if partial else message, True)
        return ToolResult(_render(result, notes))


def _render(result: ShellOutput, notes: list[str]) -> str:
    output = result.output.decode("utf-8", errors="replace")
    parts = [*notes]
    if output:
        parts.append(output.rstrip("\n"))
    if result.truncated:
        parts.append(
            f"[output beyond {CAPTURE_LIMIT} bytes was discarded at the source; redirect it to a "
            "file to keep it all]"
        )
    if result.ended:
        parts.append("[the shell exited; the next command starts a new one]")
    if result.exit_code != 0:
        parts.append(f"[exit code: {result.exit_code}]")
    if not output and result.exit_code == 0 and not result.ended:
        parts.append("(no output)")
    return "\n".join(parts)
