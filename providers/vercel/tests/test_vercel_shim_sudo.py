"""The shim's tree kill reaches a child of ``sudo``: a process of another user (under the
command runner and under Perl alike).

Vercel's images give the sandbox's user passwordless ``sudo``, so a command can start children
as root that its own user may not signal. The fake cannot offer that (its root would be root
over this host), so this test runs the shim on this host instead, in a user namespace whose
root is an unused, unprivileged uid of this host (:data:`NS_ROOT`), with a setuid stand-in for
``sudo`` owned by that root: a real change of user, which the command's uid may not signal.
Needs Linux, root (to write the namespace's uid map) and the ``ziglang`` compiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_sandbox_vercel._shim import Status, decode, runner, wrap

NS_ROOT = 200_000
"""Host uid of the namespace's root; the namespace's uid N is ``NS_ROOT + N``."""
USER = 1000
CLONE_NEWUSER = 0x10000000
SUDO_C = r"""
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int i = argc > 1 && !strcmp(argv[1], "-n") ? 2 : 1;
  if (setgid(0) || setuid(0)) return 1;
  execvp(argv[i], argv + i);
  return 127;
}
"""


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory the namespace's user can reach: ``bin/sudo`` (setuid to the namespace's
    root) and ``work`` (the user's)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to map a user namespace's uids")
    if shutil.which("perl") is None:
        pytest.skip("the shim needs perl on this host")
    top = Path(tempfile.mkdtemp(prefix="asb-vercel-sudo-"))
    try:
        top.chmod(0o755)
        (top / "bin").mkdir(mode=0o755)
        (top / "work").mkdir()
        os.chown(top / "work", NS_ROOT + USER, NS_ROOT + USER)
        source = top / "sudo.c"
        source.write_text(SUDO_C)
        sudo = top / "bin" / "sudo"
        compiled = subprocess.run(
            [sys.executable, "-m", "ziglang", "cc", "-O1", "-o", str(sudo), str(source)],
            capture_output=True,
        )
        if compiled.returncode != 0:
            pytest.skip(f"cannot compile the sudo stand-in: {compiled.stderr[-300:]!r}")
        os.chown(sudo, NS_ROOT, NS_ROOT)
        sudo.chmod(0o4755)  # after chown, which clears the setuid bit
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _start_in_namespace(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Run ``argv`` as the namespace's user in a session of its own: (pid, its stdout)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work until exec
        try:
            os.setsid()
            if libc.unshare(CLONE_NEWUSER) == 0:
                os.write(ready_w, b"r")
                if os.read(go_r, 1) == b"g":
                    os.setgroups([])
                    os.setgid(USER)
                    os.setuid(USER)
                    os.dup2(out_w, 1)
                    os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    for fd in (ready_w, go_r, out_w):
        os.close(fd)
    try:
        assert os.read(ready_r, 1) == b"r", "the child could not make a user namespace"
        mapping = f"0 {NS_ROOT} {USER + 1}\n"
        Path(f"/proc/{pid}/uid_map").write_text(mapping)
        Path(f"/proc/{pid}/gid_map").write_text(mapping)
        os.write(go_w, b"g")
    finally:
        os.close(ready_r)
        os.close(go_w)
    return pid, out_r


def _session(sid: int) -> list[int]:
    """Pids of the processes of session ``sid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[4]) == sid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("under", ["runner", "perl"])
def test_kill_ends_a_child_of_sudo_that_the_commands_user_may_not_signal(
    place: Path, under: str
) -> None:
    work = place / "work"
    script = "sudo -n sh -c 'echo $(id -u) $$ > root.pid; exec sleep 600' & sleep 600"
    path = None
    if under == "runner":
        found = runner()
        assert found is not None, "no command runner in this installation"
        path = str(place / "bin" / "shim")
        Path(path).write_bytes(found[1])
        Path(path).chmod(0o755)
    command, args = wrap(["sh", "-c", script], str(work), "exec", 0, path)
    env = {"PATH": f"{place / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8"}
    shim, out = _start_in_namespace([command, *args], env)
    root = None
    try:
        deadline = time.monotonic() + 30
        while not (work / "root.pid").is_file() or not (work / "root.pid").read_text():
            assert time.monotonic() < deadline, "sudo's child never started"
            time.sleep(0.05)
        inner_uid, pid = (work / "root.pid").read_text().split()
        root = int(pid)
        assert inner_uid == "0"
        status = Path(f"/proc/{root}/status").read_text().splitlines()
        assert f"Uid:\t{NS_ROOT}\t{NS_ROOT}\t{NS_ROOT}\t{NS_ROOT}" in status  # another user

        os.kill(shim, signal.SIGUSR1)  # what kill() sends
        data = b""
        while select.select([out], [], [], 30)[0]:
            chunk = os.read(out, 65536)
            if not chunk:
                break
            data += chunk
        lines = data.decode().splitlines(keepends=True)
        assert lines, "the shim did not end: sudo's child still holds the command's output"
        assert decode(lines[-1]) == Status(exit_code=0, signal=9)  # the command was SIGKILLed
        os.waitpid(shim, 0)
        deadline = time.monotonic() + 5
        while _running(root):
            assert time.monotonic() < deadline, "sudo's child outlived the kill"
            time.sleep(0.05)
    finally:
        os.close(out)
        for left in {*_session(shim), *([root] if root else [])}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(left, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(shim, os.WNOHANG)
