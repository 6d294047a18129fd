"""The supervisor of one background process of the local provider (run as a script).

``python -I -S _supervisor.py DIR`` detaches from its client (new session, double fork), reads
``DIR/spec.json``, starts the command with stdout and stderr appended to ``DIR/stdout`` and
``DIR/stderr`` and stdin read from the FIFO ``DIR/stdin`` (or ``/dev/null``), and reports
``{"pid": N}`` (or ``{"error": "cwd", ...}``) as one line on its original stdout. Then it
serves single-byte requests on the FIFO ``DIR/ctl`` (``k``: kill the process tree, ``c``: close
stdin), kills the tree when the sandbox's TTL passes, and when the command ends writes
``DIR/exit.json`` (``{"returncode": N}``) and removes the sandbox's busy record. Any client can
therefore read the output, write stdin, kill and wait, from any process, at any time.

It uses the standard library only and imports nothing of agent-sandbox (``-S``: fast start).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time

CHUNK = 1 << 16


def _kill_tree(pgid: int, marker: bytes) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)
    needle = b"\0" + marker + b"\0"
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if needle in b"\0" + handle.read():
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def _write_json(path: str, data: dict[str, int]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def _report(line: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        os.write(1, (json.dumps(line) + "\n").encode())
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def main(directory: str) -> None:
    os.setsid()
    if os.fork():  # the client reaps this parent at once; the supervisor is nobody's child
        os._exit(0)
    with open(os.path.join(directory, "spec.json")) as handle:
        spec = json.load(handle)
    marker = spec["marker"].encode()
    out = os.open(os.path.join(directory, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    err = os.open(os.path.join(directory, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ctl = os.open(os.path.join(directory, "ctl"), os.O_RDWR | os.O_NONBLOCK)
    fifo = os.path.join(directory, "stdin")
    hold: int | None = None  # our write end: the command sees end-of-file only once we close it
    pending = b""
    if spec["stdin"]:
        hold = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        stdin = os.open(fifo, os.O_RDONLY)
        with contextlib.suppress(FileNotFoundError):
            with open(os.path.join(directory, "stdin.init"), "rb") as handle:
                pending = handle.read()
            os.unlink(os.path.join(directory, "stdin.init"))
        close_after_pending = not spec["stdin_open"]
    else:
        stdin = os.open(os.devnull, os.O_RDONLY)
        close_after_pending = True
    try:
        child = subprocess.Popen(
            spec["argv"],
            stdin=stdin,
            stdout=out,
            stderr=err,
            env=spec["env"],
            cwd=spec["cwd"],
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        if spec["cwd"] is not None and getattr(exc, "filename", None) == spec["cwd"]:
            _report({"error": "cwd", "message": str(exc)})
            return
        code = 126 if isinstance(exc, PermissionError) else 127
        reason = "Permission denied" if code == 126 else "command not found"
        os.write(err, f"{spec['argv'][0]}: {reason}\n".encode())
        _write_json(os.path.join(directory, "exit.json"), {"returncode": code})
        _report({"pid": 0})
        _done(spec)
        return
    os.close(stdin)
    _write_json(os.path.join(directory, "pids.json"), {"supervisor": os.getpid(), "pid": child.pid})
    _report({"pid": child.pid})
    try:
        pidfd: int | None = os.pidfd_open(child.pid)
    except OSError:  # Linux < 5.3: notice the exit by polling
        pidfd = None
    expired = False
    while True:
        poller = select.poll()
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        poller.register(ctl, select.POLLIN)
        if hold is not None and pending:
            poller.register(hold, select.POLLOUT)
        left = spec["expires"] - time.time()
        if left <= 0 and not expired:
            expired = True
            _kill_tree(child.pid, marker)
        timeout = None if expired else max(left, 0) * 1000
        if pidfd is None:
            timeout = 20 if timeout is None else min(timeout, 20)
        ready = dict(poller.poll(timeout))
        if pidfd in ready or (pidfd is None and child.poll() is not None):
            break
        if ctl in ready:
            with contextlib.suppress(BlockingIOError):
                for request in os.read(ctl, 64):
                    if request == ord("k"):
                        _kill_tree(child.pid, marker)
                    elif request == ord("c"):
                        close_after_pending = True
        if hold is not None and pending:
            try:
                pending = pending[os.write(hold, pending[:CHUNK]) :]
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                pending = b""
        if hold is not None and close_after_pending and not pending:
            os.close(hold)
            hold = None
            with contextlib.suppress(OSError):
                os.unlink(fifo)
    with contextlib.suppress(OSError):
        os.killpg(child.pid, signal.SIGKILL)  # nothing of its group outlives it
    returncode = child.wait()
    _write_json(os.path.join(directory, "exit.json"), {"returncode": returncode})
    _done(spec)


def _done(spec: dict[str, str]) -> None:
    with contextlib.suppress(OSError):
        os.unlink(spec["busy"])


if __name__ == "__main__":
    main(sys.argv[1])
