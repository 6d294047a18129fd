"""The agent-sandbox command, run as a user runs it (a subprocess) on the local provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Cli = Callable[..., "subprocess.CompletedProcess[bytes]"]


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """Run ``agent-sandbox ARGS`` with its own local state root; destroy what is left after."""
    root = tmp_path / "state"
    env = {
        **os.environ,
        "AGENT_SANDBOX_LOCAL_ROOT": str(root),
        "AGENT_SANDBOX_PROVIDER": "local",
    }

    def run(
        *args: str, stdin: bytes | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "agent_sandbox.cli", *args],
            input=stdin,
            capture_output=True,
            env=env,
            cwd=cwd or tmp_path,
            timeout=120,
        )

    yield run
    if root.exists():
        for state in root.glob("*/state.json"):
            run("rm", state.parent.name)


def _ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_create_exec_ls_rm(cli: Cli) -> None:
    sandbox_id = _ok(cli("create", "--label", "team=cli", "--env", "GREETING=hello")).strip()
    assert sandbox_id.startswith("loc-")

    out = _ok(cli("exec", sandbox_id, "--", "sh", "-c", 'echo "$GREETING"; echo oops >&2'))
    assert out == "hello\n"

    failing = cli("exec", sandbox_id, "--shell", "exit 3")
    assert failing.returncode == 3

    listed = json.loads(_ok(cli("ls", "--label", "team=cli", "--json")))
    assert [item["id"] for item in listed] == [sandbox_id]

    _ok(cli("rm", sandbox_id))
    _ok(cli("rm", sandbox_id))  # idempotent
    gone = cli("exec", sandbox_id, "--", "true")
    assert gone.returncode == 2
    assert b"sandbox_not_found" in gone.stderr


def test_exec_json_and_stdin(cli: Cli) -> None:
    sandbox_id = _ok(cli("create")).strip()
    result = json.loads(
        _ok(cli("exec", sandbox_id, "--json", "--stdin", "--", "cat", stdin=b"piped\n"))
    )
    assert result["exit_code"] == 0
    assert result["stdout"] == "piped\n"
    assert result["stdout_truncated"] is False


def test_cp_both_directions(cli: Cli, tmp_path: Path) -> None:
    sandbox_id = _ok(cli("create")).strip()
    local_file = tmp_path / "in.bin"
    local_file.write_bytes(b"\x00\x01binary\xff")
    _ok(cli("cp", str(local_file), f"{sandbox_id}:data/in.bin"))

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("A")
    _ok(cli("cp", str(tree), f"{sandbox_id}:copied"))
    assert _ok(cli("exec", sandbox_id, "--", "cat", "copied/sub/a.txt")) == "A"

    out_file = tmp_path / "out.bin"
    _ok(cli("cp", f"{sandbox_id}:data/in.bin", str(out_file)))
    assert out_file.read_bytes() == local_file.read_bytes()

    out_tree = tmp_path / "back"
    _ok(cli("cp", f"{sandbox_id}:copied", str(out_tree)))
    assert (out_tree / "sub" / "a.txt").read_text() == "A"

    missing = cli("cp", f"{sandbox_id}:nope.txt", str(tmp_path / "x"))
    assert missing.returncode == 2
    assert b"file_not_found" in missing.stderr


def test_run_is_create_exec_destroy(cli: Cli, tmp_path: Path) -> None:
    assert _ok(cli("run", "--", "sh", "-c", "echo $((6*7))")) == "42\n"
    assert not list((tmp_path / "state").glob("*/state.json"))


def test_sweep_removes_expired(cli: Cli, tmp_path: Path) -> None:
    sandbox_id = _ok(cli("create", "--ttl", "0.5")).strip()
    live_id = _ok(cli("create")).strip()
    time.sleep(1.0)
    removed = json.loads(_ok(cli("sweep", "--json")))["removed"]
    assert sandbox_id in removed
    assert live_id not in removed


def test_providers_and_doctor(cli: Cli) -> None:
    rows = json.loads(_ok(cli("providers", "--json")))
    by_name = {row["name"]: row for row in rows}
    assert by_name["local"]["installed"] is True
    assert by_name["local"]["default"] is True
    assert by_name["docker"]["install"] == 'pip install "agent-sandbox[docker]"'

    report = json.loads(_ok(cli("doctor", "--json")))
    assert report["ok"] is True
    assert any(check["name"] == "config" for check in report["checks"])


def test_bad_input_is_a_clear_error(cli: Cli) -> None:
    unknown = cli("ls", "--provider", "nope")
    assert unknown.returncode == 2
    assert b"unknown provider 'nope'" in unknown.stderr

    bad_option = cli("ls", "-o", "colour=blue")
    assert bad_option.returncode == 2
    assert b"unknown option 'colour'" in bad_option.stderr

    no_command = cli("run")
    assert no_command.returncode == 2
    assert b"no command" in no_command.stderr

    both_sides = cli("cp", "a", "b")
    assert both_sides.returncode == 2
    assert b"SANDBOX_ID:PATH" in both_sides.stderr
