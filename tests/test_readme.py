"""The README's quickstart and main command run as written, on the embedded default provider."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_async_quickstart_runs(tmp_path: Path) -> None:
    quickstart = _python_blocks()[0]
    assert "Sandbox.create()" in quickstart
    env = {**os.environ, "AGENT_SANDBOX_LOCAL_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", quickstart], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("exit")


def test_main_command_prints_the_answer(tmp_path: Path) -> None:
    env = {**os.environ, "AGENT_SANDBOX_LOCAL_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent_sandbox.cli", "run", "--", "python3", "-c", "print(6*7)"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "42\n"
    assert not list(tmp_path.glob("*/state.json")), "the sandbox outlived `run`"
