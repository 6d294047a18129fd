"""A command run in a Daytona session, seen through the process seam.

The daemon relays a session command's output through shell ``read`` loops, one line at a time
(NUL bytes are lost, a newline is added, a partial line waits for its newline), and ends a log
stream only a second after the output stops. So the command runs under :data:`WRAPPER`: its
stdout and stderr are each encoded in base64 lines as they come (``dd`` reads whatever is there,
so output streams), its stdin is decoded from base64 lines sent as input (``.`` ends it), and
the wrapper itself writes control lines starting with ``.``: ``.+`` once started, ``.!`` when the
cwd is missing, then ``.<status>`` on stdout and ``.-`` on stderr once all output is flushed, so
the client stops reading at once, and exits with that status (the daemon's record of it) (every control line is three bytes at least: the SDK's
demultiplexer holds back fewer bytes after a stream marker until the stream ends). The command carries :data:`agent_sandbox.tree.MARK`; what it
leaves behind is killed by :data:`agent_sandbox.tree.REAP` in the background once it ends (the
output ends when what held it is gone; the status does not wait for the rest).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from agent_sandbox import tree
from agent_sandbox.errors import FileNotFound, ProviderError, SandboxError
from agent_sandbox.process import ExitStatus, QueuedHandle, Stream, from_shell

LINE = 48 * 1024  # bytes per input line (64 KiB of base64)
MAX_LINE = 2 * 64 * 1024  # characters of a partial output line: the wrapper writes 64 Ki at most

UNTRAP = "trap - TERM; "
"""Prefix of every command line. The daemon sources the line in the session's shell after its
own wrapper set ``trap cleanup TERM`` there, so deleting the session would wait out the
daemon's whole termination grace period for a shell that ignores SIGTERM; with the trap
undone the shell ends at once."""

# $1 ref, $2 "1" when stdin is streamed, $3 cwd ("" for the session's), $4 N, then N KEY=VALUE
# and the argv.
WRAPPER = f"""
m=$1 in=$2 cwd=$3 n=$4
shift 4
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
if [ -n "$cwd" ] && ! cd -- "$cwd" 2>/dev/null; then echo '.!'; echo .- >&2; exit 1; fi
echo .+
exec 3>&1 4>&2
enc() {{ while c=$(dd bs=49152 count=1 2>/dev/null | base64 -w0) && [ -n "$c" ]; do echo "$c"; done; }}
dec='while IFS= read -r l && [ "$l" != . ]; do printf %s "$l" | base64 -d; done'
run() {{
  {tree.MARK}=$m "$@" 3>&- 4>&- 6>&-
  s=$?
  {{ {tree.REAP}; }} </dev/null >/dev/null 2>&1 3>&- 4>&- 6>&- &
  echo "$s" >&6
}}
s=$( {{ {{ if [ "$in" = 1 ]; then {tree.MARK}=$m sh -c "$dec" | run "$@"; else run "$@" </dev/null; fi | enc >&3; }} 2>&1 | enc >&4; }} 6>&1 )
echo ".${{s:-137}}"
echo .- >&2
exit "${{s:-137}}"
"""


def encode_input(data: bytes) -> str:
    """Input for the wrapper's decoder: base64 lines."""
    return "".join(
        base64.b64encode(data[i : i + LINE]).decode() + "\n" for i in range(0, len(data), LINE)
    )


class SessionProcess(QueuedHandle):
    """A session command's log stream (the SDK's ``get_session_command_logs_async``), read by a
    task of its own and decoded; stdin through ``send_session_command_input``."""

    def __init__(
        self,
        ref: str,
        process: Any,
        session: str,
        cmd_id: str,
        kill: Callable[[], Awaitable[None]],
        translate: Callable[[BaseException], SandboxError],
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(ref, translate, kill)
        self._process, self._session, self._cmd_id = process, session, cmd_id
        self._on_close = on_close
        self._lines = {"stdout": "", "stderr": ""}
        self._done: set[str] = set()
        self._started = anyio.Event()
        self._missing_cwd = False

    async def begin(self, stdin: bytes | None, keep_open: bool) -> None:
        """Follow the log until the wrapper says it started (``FileNotFound`` for a missing
        cwd); ``stdin`` is then fed (and closed unless ``keep_open``)."""
        self.follow()
        await self._started.wait()
        if self._missing_cwd:
            raise FileNotFound("working directory not found")
        if self.error is not None and self.status is None:
            raise self.error
        self.feed(stdin, not keep_open)

    async def pump(self) -> None:
        try:
            follow = self._process.get_session_command_logs_async
            out, err = (functools.partial(self._take, kind) for kind in ("stdout", "stderr"))
            await follow(self._session, self._cmd_id, out, err)
        finally:
            self._started.set()

    async def _take(self, kind: Stream, text: str) -> None:
        *lines, self._lines[kind] = (self._lines[kind] + text).split("\n")
        if len(self._lines[kind]) > MAX_LINE:  # not the wrapper's: something wrote to the log
            raise ProviderError("an output line from the sandbox is longer than the wrapper writes")
        for line in lines:
            if kind in self._done:
                continue
            if not line.startswith("."):
                try:
                    await self.emit(kind, base64.b64decode(line, validate=True))
                except binascii.Error:
                    raise ProviderError(
                        f"undecodable output line from the sandbox: {line[:40]!r}"
                    ) from None
            elif line == ".+":
                self._started.set()
            elif line == ".!":
                self._missing_cwd = True
                self._started.set()
            else:
                self._done.add(kind)
                if kind == "stdout" and line[1:].isdigit():
                    self.status = from_shell(int(line[1:]))
        if self._done == {"stdout", "stderr"}:  # all output is in: stop following at once
            self._started.set()
            self.stop_following()

    async def final_status(self) -> ExitStatus:
        try:  # the stream ended without the wrapper's word: what the daemon recorded
            cmd = await self._process.get_session_command(self._session, self._cmd_id)
        except Exception as exc:
            raise self._translate(exc) from exc
        if cmd.exit_code is None:
            raise self.error or ProviderError("the command's log ended without an exit status")
        return from_shell(int(cmd.exit_code))

    async def write_stdin(self, data: bytes) -> None:
        await self._input(encode_input(data))

    async def close_stdin(self) -> None:
        await self._input(".\n")

    async def _input(self, text: str) -> None:
        if text:
            try:
                await self._process.send_session_command_input(self._session, self._cmd_id, text)
            except Exception as exc:
                raise self._translate(exc) from exc

    async def close(self) -> None:
        await super().close()
        if self._on_close is not None:
            await self._on_close()
