"""Launching the local provider's commands: from argv and options to a spawned :class:`Child`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import stat
import time
from typing import Any

from ..backend import argv_of, exit_status
from ..errors import CommandTimeout, FileNotFound, Unsupported
from ..models import Command, ExecEvent, ExecOptions
from . import _jail
from ._process import Child, Deadline
from ._store import MARK_EXEC, MARK_SANDBOX, PROVIDER, Box, Store

_RECORD_AFTER = 0.05
_exec_counter = itertools.count(1)


class Launcher:
    """Spawns commands in the sandboxes of a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _deadline(self, box: Box, timeout: float | None) -> tuple[float | None, str]:
        """Monotonic deadline of a command: its timeout or the sandbox's TTL, whichever first
        (a running command keeps the sandbox from being idle)."""
        left = box.expires - time.time()
        if timeout is not None and timeout <= left:
            return time.monotonic() + timeout, "timeout"
        return time.monotonic() + max(left, 0.0), "expired"

    def _missing_command(self, box: Box, argv0: str, cwd: str, path_var: str) -> ExecEvent | None:
        """In a jail, tell "not found" (127) and "not executable" (126) apart before spawning:
        bwrap itself would exit 1 for both."""
        fs = box.fs
        assert fs is not None
        if "/" in argv0:
            candidates = [_jail.normalise(os.path.join(cwd, argv0))]
        else:
            candidates = [_jail.normalise(d or ".") + "/" + argv0 for d in path_var.split(":")]
        denied = False
        for jail_path in candidates:
            located = fs.host_of(jail_path)
            if (
                located is not None
                and os.access(located[1], os.X_OK)
                and not os.path.isdir(located[1])
            ):
                return None
            try:
                resolved = fs.host_of(fs.resolve(jail_path))
            except _jail.JailPathError:
                continue
            if resolved is None or not os.path.exists(resolved[1]):
                continue
            st = os.stat(resolved[1])
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                return None
            denied = True
        if denied:
            return ExecEvent(kind="stderr", data=f"{argv0}: Permission denied\n".encode())
        return ExecEvent(kind="stderr", data=f"{argv0}: command not found\n".encode())

    def launch(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> Run | list[ExecEvent]:
        """Spawn a command; the running command, or the events of one that could not start
        (127 not found, 126 not executable)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise Unsupported(
                "the local provider runs commands only under asyncio (not trio)",
                provider=PROVIDER,
                op="exec",
            ) from None
        box = self.store.live(sandbox_id, "exec")
        argv = argv_of(command)
        if options.user is not None:
            raise Unsupported(
                "the local provider does not support running as another user",
                provider=PROVIDER,
                op="exec",
            )
        nonce = f"{os.getpid()}-{next(_exec_counter)}-{secrets.token_hex(4)}"
        cwd = options.cwd or box.workdir
        if box.isolation == "bwrap":
            assert box.fs is not None
            if cwd != box.workdir:
                self._check_cwd_jail(box, cwd)
            path_var = options.env.get("PATH") or box.env.get("PATH", _jail.JAIL_PATH)
            failure = self._missing_command(box, argv[0], cwd, path_var)
            if failure is not None:
                code = 126 if b"Permission denied" in failure.data else 127
                return [failure, ExecEvent(kind="exit", exit_code=code)]
            full = list(box.prefix)
            for key, value in options.env.items():
                full += ["--setenv", key, value]
            full += ["--chdir", cwd, "--", *argv]
            env = {MARK_SANDBOX: box.id, MARK_EXEC: nonce}
            host_cwd: str | None = box.dir
        else:
            full = argv
            env = {**box.env, **options.env, MARK_EXEC: nonce}
            host_cwd = cwd
        if box.wrap:
            full = [*box.wrap, *full]
        deadline, reason = self._deadline(box, options.timeout)
        try:
            child = Child(
                full,
                env=env,
                cwd=host_cwd,
                stdin=options.stdin,
                marker=f"{MARK_EXEC}={nonce}".encode(),
            )
        except FileNotFoundError as exc:
            if host_cwd is not None and exc.filename == host_cwd:
                raise FileNotFound(
                    f"working directory not found: {cwd}",
                    provider=PROVIDER,
                    op="exec",
                    sandbox_id=sandbox_id,
                ) from exc
            return [
                ExecEvent(kind="stderr", data=f"{argv[0]}: command not found\n".encode()),
                ExecEvent(kind="exit", exit_code=127),
            ]
        except PermissionError:
            return [
                ExecEvent(kind="stderr", data=f"{argv[0]}: Permission denied\n".encode()),
                ExecEvent(kind="exit", exit_code=126),
            ]
        except NotADirectoryError as exc:
            raise FileNotFound(
                f"working directory not found: {cwd}",
                provider=PROVIDER,
                op="exec",
                sandbox_id=sandbox_id,
            ) from exc
        # A command still running after a moment is recorded on disk, so that a destroy or sweep
        # from another process can kill it; short commands skip the cost (~0.1 ms on ext4).
        record = _Record(os.path.join(box.procs, f"{child.pid}.{nonce}"))
        box.running += 1
        return Run(self.store, box, child, record, deadline, reason, options.timeout)

    def _check_cwd_jail(self, box: Box, cwd: str) -> None:
        assert box.fs is not None
        try:
            located = box.fs.host_of(box.fs.resolve(_jail.normalise(cwd)))
        except _jail.JailPathError:
            located = None
        if located is None or not os.path.isdir(located[1]):
            raise FileNotFound(
                f"working directory not found: {cwd}",
                provider=PROVIDER,
                op="exec",
                sandbox_id=box.id,
            )


class Run:
    """A spawned command of a sandbox, from launch to reaping."""

    def __init__(
        self,
        store: Store,
        box: Box,
        child: Child,
        record: _Record,
        deadline: float | None,
        reason: str,
        timeout: float | None,
    ) -> None:
        self.store, self.box, self.child, self.record = store, box, child, record
        self.deadline, self.reason, self.timeout = deadline, reason, timeout
        self.finished = False
        self.closed = False

    def finish(self) -> tuple[int, int | None]:
        """Reap the (exited or killed) command: ``(exit_code, signal)``."""
        returncode = self.child.finish()
        self.finished = True
        code, sig = exit_status(returncode)
        if self.box.isolation == "bwrap" and sig is None and 128 < code <= 128 + 64:
            # bwrap reports a command killed by signal N as exit status 128+N.
            sig = code - 128
        return code, sig

    def timed_out(self, deadline: Deadline) -> CommandTimeout:
        """Reap the killed command; the error to raise."""
        self.finish()
        where: dict[str, Any] = {
            "provider": PROVIDER,
            "op": "exec",
            "sandbox_id": self.box.id,
            "timeout": self.timeout,
        }
        if deadline.reason == "expired":
            return CommandTimeout(
                f"sandbox {self.box.id} reached its TTL while the command ran; killed", **where
            )
        return CommandTimeout(
            f"command timed out after {self.timeout}s; its process tree was killed", **where
        )

    def close(self) -> None:
        """Kill whatever still runs (an abandoned stream), reap, and forget the command."""
        if self.closed:
            return
        self.closed = True
        if not self.finished:
            self.child.kill()
            self.child.finish()
        self.record.remove()
        self.box.running -= 1
        self.store.touch(self.box, time.time())


class _Record:
    """The on-disk trace of a running command, written only if it runs past ``_RECORD_AFTER``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            _RECORD_AFTER, self._write
        )

    def _write(self) -> None:
        self.timer = None
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.written = True
        except OSError:
            pass

    def remove(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.written:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.written = False
