"""A script using the blocking API exits when it is done (the event-loop thread is a daemon)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from agent_sandbox.sync import Sandbox
from agent_sandbox.testing import FakeBackend

with Sandbox.create(backend=FakeBackend()) as sb:
    assert sb.exec("echo hi").stdout == "hi\\n"
    kinds = [event.kind for event in sb.exec_stream("echo hi")]
    assert kinds[-1] == "exit", kinds
print("done")
"""


def test_interpreter_exits_after_using_the_sync_api() -> None:
    # A hang here is the bug: the timeout turns it into a failure instead of a stuck suite.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"


UNCLOSED_STREAM = """
from agent_sandbox.sync import Sandbox
from agent_sandbox.testing import FakeBackend

sb = Sandbox.create(backend=FakeBackend())
events = sb.exec_stream("echo first; sleep 300")
print(next(iter(events)).data.decode().strip())
kept = events  # never exhausted, never closed: the interpreter must still exit
"""

FORKED_CHILD = """
import os, sys
from agent_sandbox.sync import Sandbox
from agent_sandbox.testing import FakeBackend

backend = FakeBackend()
sb = Sandbox.create(backend=backend)
assert sb.exec("echo parent").stdout == "parent\\n"
pid = os.fork()
if pid == 0:  # the child's first call starts its own event-loop thread
    other = Sandbox.create(backend=FakeBackend())
    ok = other.exec("echo child").stdout == "child\\n"
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def _run_script(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


def test_interpreter_exits_with_an_unclosed_exec_stream() -> None:
    proc = _run_script(UNCLOSED_STREAM)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "first"


def test_a_forked_child_can_use_the_sync_api() -> None:
    proc = _run_script(FORKED_CHILD)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "child 0"
