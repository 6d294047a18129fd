"""The blocking twin of :class:`agent_sandbox.Sandbox`, for code without an event loop.

Every method has the async one's arguments, return value and errors::

    from agent_sandbox.sync import Sandbox

    with Sandbox.create() as sb:
        print(sb.exec("echo hi").stdout)

Calls run on one background event-loop thread (a daemon) shared by the process (a forked child
starts its own). Called from inside a running event loop they raise ``BlockingCallInEventLoop``:
use the async API there.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import concurrent.futures
import contextlib
import os
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .backend import close_stream
from .derived import DOWNLOAD_LIMIT
from .errors import BlockingCallInEventLoop
from .models import (
    DEFAULT_OUTPUT_LIMIT,
    DEFAULT_READ_LIMIT,
    Command,
    ExecEvent,
    ExecResult,
    FileInfo,
    FoundFiles,
    GrepResult,
    ProcessInfo,
    SandboxInfo,
)
from .process import Process as AsyncProcess
from .sandbox import Sandbox as AsyncSandbox

T = TypeVar("T")

_portal: BlockingPortal | None = None
_portal_lock = threading.Lock()
_open_iterators: weakref.WeakSet[_Events] = weakref.WeakSet()
_exiting = False


def _serve_portal(ready: threading.Event, holder: list[BlockingPortal]) -> None:
    async def serve() -> None:
        async with BlockingPortal() as portal:
            holder.append(portal)
            ready.set()
            await portal.sleep_until_stopped()

    anyio.run(serve)


def _get_portal() -> BlockingPortal:
    """The process's event-loop thread, started on first use.

    A daemon thread of our own (not anyio's ``start_blocking_portal``, whose worker thread is
    joined at interpreter exit and would keep the process alive forever).
    """
    global _portal
    with _portal_lock:
        if _portal is None:
            ready = threading.Event()
            holder: list[BlockingPortal] = []
            thread = threading.Thread(
                target=_serve_portal, args=(ready, holder), name="agent-sandbox-sync", daemon=True
            )
            thread.start()
            ready.wait()
            _portal = holder[0]
        return _portal


def _forget_portal_after_fork() -> None:
    """In a forked child the event-loop thread does not exist: start afresh on first use."""
    global _portal, _portal_lock, _open_iterators
    _portal = None
    _portal_lock = threading.Lock()
    _open_iterators = weakref.WeakSet()


os.register_at_fork(after_in_child=_forget_portal_after_fork)


@atexit.register
def _close_open_iterators() -> None:
    """At exit, end the commands of streams and processes still being iterated (while the
    event-loop thread still runs); a generator finalised later must not wait for it."""
    global _exiting
    _exiting = True
    if _portal is None:
        return
    for events in list(_open_iterators):
        with contextlib.suppress(Exception):
            events.close(timeout=5)


def _check_no_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise BlockingCallInEventLoop(
            "agent_sandbox.sync was called from inside a running event loop, which it would "
            "block; use the async API there (await agent_sandbox.Sandbox.create(...), "
            "await sb.exec(...))"
        )


def _run(func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    _check_no_running_loop()

    async def call() -> T:
        return await func(*args, **kwargs)

    return _get_portal().call(call)


class _Events:
    """A blocking iterator over an async iterator of events, driven on the portal."""

    def __init__(self, events: AsyncIterator[ExecEvent], on_close: Callable[[], Awaitable[None]]):
        self._events = events
        self._on_close = on_close
        self._closed = False
        _open_iterators.add(self)

    def __iter__(self) -> Iterator[ExecEvent]:
        return self

    def __next__(self) -> ExecEvent:
        if self._closed:
            raise StopIteration
        try:
            return _run(self._events.__anext__)
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None

    def close(self, timeout: float | None = None) -> None:
        """End the iteration (and the command, where leaving early kills it)."""
        if self._closed:
            return
        self._closed = True
        _open_iterators.discard(self)
        if _portal is None or sys.is_finalizing():
            return
        future = _portal.start_task_soon(self._on_close)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            future.result(timeout)

    def __del__(self) -> None:
        # Never block a finalising interpreter on the event-loop thread (it may be gone).
        if not self._closed and not _exiting and not sys.is_finalizing():
            with contextlib.suppress(Exception):
                self.close(timeout=5)


class Process:
    """A background process whose methods block. Mirrors :class:`agent_sandbox.Process`.

    Iterate it for events (``for event in proc``); leaving the loop does not kill it. As a
    context manager it kills the process on exit.
    """

    def __init__(self, inner: AsyncProcess) -> None:
        self.aio = inner
        """The underlying async process."""

    @property
    def ref(self) -> str:
        """Reaches the process again through :meth:`Sandbox.attach`, from any client."""
        return self.aio.ref

    @property
    def exit_code(self) -> int | None:
        """The exit status once the process ended and was waited for, else ``None``."""
        return self.aio.exit_code

    def __iter__(self) -> Iterator[ExecEvent]:
        events = self.aio.__aiter__()
        return _Events(events, lambda: close_stream(events))

    def wait(self) -> ExecResult:
        """Wait for the process to end; see :meth:`agent_sandbox.Process.wait`."""
        return _run(self.aio.wait)

    def kill(self) -> None:
        """Kill the process and everything it started."""
        _run(self.aio.kill)

    def write_stdin(self, data: bytes | str) -> None:
        """Write to the process's stdin."""
        _run(self.aio.write_stdin, data)

    def close_stdin(self) -> None:
        """Close the process's stdin."""
        _run(self.aio.close_stdin)

    def close(self) -> None:
        """Release the client's hold; a process still running keeps running."""
        _run(self.aio.close)

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _run(self.aio.end)

    def __repr__(self) -> str:
        return f"<sync.Process {self.aio.provider}:{self.aio.sandbox_id} {self.ref}>"


class Sandbox:
    """A sandbox handle whose methods block. Mirrors :class:`agent_sandbox.Sandbox`."""

    def __init__(self, inner: AsyncSandbox) -> None:
        self.aio = inner
        """The underlying async handle."""

    @classmethod
    def create(cls, spec: Any = None, **kwargs: Any) -> Sandbox:
        """Create a sandbox; same arguments as :meth:`agent_sandbox.Sandbox.create`."""
        return cls(_run(AsyncSandbox.create, spec, **kwargs))

    @classmethod
    def connect(cls, sandbox_id: str, **kwargs: Any) -> Sandbox:
        """Attach to an existing sandbox by id. Raises ``SandboxNotFound``."""
        return cls(_run(AsyncSandbox.connect, sandbox_id, **kwargs))

    @staticmethod
    def list(labels: Mapping[str, str] | None = None, **kwargs: Any) -> builtins.list[SandboxInfo]:
        """Sandboxes of a provider that carry all of ``labels``."""
        return _run(AsyncSandbox.list, labels, **kwargs)

    @staticmethod
    def sweep(**kwargs: Any) -> builtins.list[str]:
        """Destroy expired managed sandboxes; return their ids."""
        return _run(AsyncSandbox.sweep, **kwargs)

    @property
    def id(self) -> str:
        """The provider's id of this sandbox."""
        return self.aio.id

    @property
    def provider(self) -> str:
        """The provider's name."""
        return self.aio.provider

    @property
    def info(self) -> SandboxInfo:
        """The sandbox's description as last fetched."""
        return self.aio.info

    def destroy(self) -> None:
        """Destroy the sandbox (idempotent)."""
        _run(self.aio.destroy)

    def close(self) -> None:
        """Release the client, leaving the sandbox to its TTL."""
        _run(self.aio.close)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _run(self.aio.__aexit__, exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<sync.Sandbox {self.provider}:{self.id}>"

    def exec(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        user: str | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> ExecResult:
        """Run a command to completion; see :meth:`agent_sandbox.Sandbox.exec`."""
        return _run(
            self.aio.exec,
            command,
            cwd=cwd,
            env=env,
            stdin=stdin,
            timeout=timeout,
            user=user,
            output_limit=output_limit,
        )

    def exec_stream(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        timeout: float | None = None,
        user: str | None = None,
    ) -> Iterator[ExecEvent]:
        """Run a command, yielding output chunks then the exit; leaving early kills it."""
        stream = self.aio.exec_stream(
            command, cwd=cwd, env=env, stdin=stdin, timeout=timeout, user=user
        )
        return _Events(stream, lambda: close_stream(stream))

    def start(
        self,
        command: Command,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | bool | None = None,
        timeout: float | None = None,
        user: str | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> Process:
        """Start a command in the background; see :meth:`agent_sandbox.Sandbox.start`."""
        return Process(
            _run(
                self.aio.start,
                command,
                cwd=cwd,
                env=env,
                stdin=stdin,
                timeout=timeout,
                user=user,
                output_limit=output_limit,
            )
        )

    def attach(self, ref: str, *, output_limit: int = DEFAULT_OUTPUT_LIMIT) -> Process:
        """The process with this ref; see :meth:`agent_sandbox.Sandbox.attach`."""
        return Process(_run(self.aio.attach, ref, output_limit=output_limit))

    def processes(self) -> builtins.list[ProcessInfo]:
        """Processes started with :meth:`start`, running or ended."""
        return _run(self.aio.processes)

    def read_file(self, path: str, *, max_bytes: int = DEFAULT_READ_LIMIT) -> bytes:
        """The bytes of a regular file (see :meth:`agent_sandbox.Sandbox.read_file`)."""
        return _run(self.aio.read_file, path, max_bytes=max_bytes)

    def read_text(
        self, path: str, encoding: str = "utf-8", *, max_bytes: int = DEFAULT_READ_LIMIT
    ) -> str:
        """A file decoded as text."""
        return _run(self.aio.read_text, path, encoding, max_bytes=max_bytes)

    def write_file(self, path: str, data: bytes | str) -> None:
        """Create or replace a file."""
        _run(self.aio.write_file, path, data)

    def list_dir(self, path: str = ".") -> builtins.list[FileInfo]:
        """Entries of a directory."""
        return _run(self.aio.list_dir, path)

    def stat(self, path: str) -> FileInfo:
        """Describe a path."""
        return _run(self.aio.stat, path)

    def exists(self, path: str) -> bool:
        """True when ``path`` exists. Raises ``PermissionDenied`` when the
        sandbox's user cannot look (a directory on the way is not searchable)."""
        return _run(self.aio.exists, path)

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file or (recursive) a tree."""
        _run(self.aio.remove, path, recursive=recursive)

    def mkdir(self, path: str) -> None:
        """Create a directory with its parents."""
        _run(self.aio.mkdir, path)

    def upload_file(
        self, local: str | Path, path: str, *, on_progress: Callable[[int], None] | None = None
    ) -> None:
        """Copy a local file in, streamed; see :meth:`agent_sandbox.Sandbox.upload_file`."""
        _run(self.aio.upload_file, local, path, on_progress=on_progress)

    def download_file(
        self,
        path: str,
        local: str | Path,
        *,
        max_bytes: int = DOWNLOAD_LIMIT,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Copy a file out, streamed; see :meth:`agent_sandbox.Sandbox.download_file`."""
        _run(self.aio.download_file, path, local, max_bytes=max_bytes, on_progress=on_progress)

    def realpath(self, path: str) -> str:
        """``path`` with every symlink resolved; see :meth:`agent_sandbox.Sandbox.realpath`."""
        return _run(self.aio.realpath, path)

    def find(self, path: str = ".") -> FoundFiles:
        """Files below a directory; see :meth:`agent_sandbox.Sandbox.find`."""
        return _run(self.aio.find, path)

    def grep(self, pattern: str, path: str = ".") -> GrepResult:
        """Matching lines; see :meth:`agent_sandbox.Sandbox.grep`."""
        return _run(self.aio.grep, pattern, path)

    def read_lines(
        self, path: str, start: int = 1, end: int | None = None, *, max_bytes: int = 1 << 20
    ) -> bytes:
        """Some lines of a file; see :meth:`agent_sandbox.Sandbox.read_lines`."""
        return _run(self.aio.read_lines, path, start, end, max_bytes=max_bytes)

    def upload(self, local_dir: str | Path, remote_dir: str = ".") -> None:
        """Copy a local directory tree into the sandbox."""
        _run(self.aio.upload, local_dir, remote_dir)

    def download(self, remote_dir: str, local_dir: str | Path) -> None:
        """Copy a directory tree out of the sandbox."""
        _run(self.aio.download, remote_dir, local_dir)

    def expose_port(self, port: int) -> str:
        """A URL reaching ``port`` inside the sandbox."""
        return _run(self.aio.expose_port, port)

    def snapshot(self) -> str:
        """Save the filesystem; returns a snapshot id."""
        return _run(self.aio.snapshot)

    def pause(self) -> None:
        """Suspend the sandbox."""
        _run(self.aio.pause)

    def resume(self) -> None:
        """Resume a paused sandbox."""
        _run(self.aio.resume)
