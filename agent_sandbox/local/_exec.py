"""Starting the local provider's commands: from argv and options to a process handle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import stat
import time

from ..errors import FileNotFound, Unsupported
from ..models import StartOptions
from ..process import CompletedHandle, ExitStatus, ProcessHandle
from . import _background, _jail
from ._process import Child, PipeHandle
from ._store import MARK_EXEC, MARK_SANDBOX, PROVIDER, Box, Store

_RECORD_AFTER = 0.05
_exec_counter = itertools.count(1)


class Launcher:
    """Spawns commands in the sandboxes of a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _missing_command(
        self, box: Box, argv0: str, cwd: str, path_var: str
    ) -> CompletedHandle | None:
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
        return _failed(argv0, denied)

    async def start(self, sandbox_id: str, argv: list[str], options: StartOptions) -> ProcessHandle:
        """Spawn ``argv`` in the sandbox: held through pipes by this client, or (``detached``)
        under a supervisor of its own. A command that cannot start is a 127/126 result."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise Unsupported(
                "the local provider runs commands only under asyncio (not trio)",
                provider=PROVIDER,
                op="exec",
            ) from None
        box = self.store.live(sandbox_id, "exec")
        nonce = f"{os.getpid()}-{next(_exec_counter)}-{secrets.token_hex(4)}"
        cwd = options.cwd or box.workdir
        if box.isolation == "bwrap":
            assert box.fs is not None
            if cwd != box.workdir:
                self._check_cwd_jail(box, cwd)
            path_var = options.env.get("PATH") or box.env.get("PATH", _jail.JAIL_PATH)
            failure = self._missing_command(box, argv[0], cwd, path_var)
            if failure is not None:
                return failure
            full = list(box.prefix)
            for key, value in options.env.items():
                full += ["--setenv", key, value]
            full += ["--chdir", cwd, "--", *box.inner, *argv]
            env = {MARK_SANDBOX: box.id, MARK_EXEC: nonce}
            host_cwd: str | None = box.dir
        else:
            full = argv
            env = {**box.env, **options.env, MARK_EXEC: nonce}
            host_cwd = cwd
        if box.wrap:
            full = [*box.wrap, *full]
        jailed = box.isolation == "bwrap"
        if options.detached:
            return await _background.start(
                box,
                full,
                env=env,
                cwd=host_cwd,
                shown_cwd=cwd,
                command=argv,
                stdin=options.stdin,
                stdin_open=options.stdin_open,
                marker=f"{MARK_EXEC}={nonce}",
                signal_from_status=jailed,
            )
        try:
            child = Child(
                full,
                env=env,
                cwd=host_cwd,
                stdin=options.stdin is not None or options.stdin_open,
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
            return _failed(argv[0], denied=False)
        except PermissionError:
            return _failed(argv[0], denied=True)
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

        def forget() -> None:
            record.remove()
            box.running -= 1
            self.store.touch(box, time.time())

        return PipeHandle(
            child,
            ref=nonce,
            stdin=options.stdin,
            keep_stdin_open=options.stdin_open,
            expires=box.expires,
            signal_from_status=jailed,
            sandbox_id=sandbox_id,
            on_close=forget,
        )

    def _check_cwd_jail(self, box: Box, cwd: str) -> None:
        assert box.fs is not None
        try:
            resolved = box.fs.resolve(_jail.normalise(cwd))
        except _jail.JailPathError:
            resolved = None
        if resolved == "/":  # the jail's own root: always there
            return
        located = None if resolved is None else box.fs.host_of(resolved)
        if located is None or not os.path.isdir(located[1]):
            raise FileNotFound(
                f"working directory not found: {cwd}",
                provider=PROVIDER,
                op="exec",
                sandbox_id=box.id,
            )


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


def _failed(argv0: str, denied: bool) -> CompletedHandle:
    """The result of a command that could not start: 126 (not executable) or 127 (not found)."""
    if denied:
        return CompletedHandle(
            ExitStatus(126), [("stderr", f"{argv0}: Permission denied\n".encode())]
        )
    return CompletedHandle(ExitStatus(127), [("stderr", f"{argv0}: command not found\n".encode())])
