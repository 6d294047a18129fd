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
