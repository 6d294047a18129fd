"""The agent-sandbox command, run as a user runs it (a subprocess) on the local provider."""

from __future__ import annotations

import argparse
import base64
import json
import os
import pty
import re
import subprocess
import sys
import threading
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
        *args: str, stdin: bytes | None = None, cwd: Path | None = None, tty: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-m", "agent_sandbox.cli", *args]
        if tty:
            return _run_with_terminal_stderr(argv, env, cwd or tmp_path)
        return subprocess.run(
            argv, input=stdin, capture_output=True, env=env, cwd=cwd or tmp_path, timeout=120
        )

    yield run
    if root.exists():
        for state in root.glob("*/state.json"):
            run("rm", "-p", "local", state.parent.name)


def _run_with_terminal_stderr(
    argv: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with stderr on a pseudo-terminal, as a person's shell would have it."""
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            env=env,
            cwd=cwd,
            timeout=120,
            check=False,
        )
    finally:
        os.close(follower)
        reader.join(timeout=10)
        os.close(leader)
    return subprocess.CompletedProcess(argv, proc.returncode, proc.stdout, b"".join(chunks))


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
    assert listed[0]["provider"] == "local"
    assert sandbox_id in _ok(cli("ls"))

    assert _ok(cli("rm", sandbox_id)).strip() == sandbox_id
    again = cli("rm", sandbox_id)  # an id no provider knows is an error, not a silent success
    assert again.returncode == 125
    assert again.stderr.decode().count("\n") == 1
    assert b"sandbox_not_found" in again.stderr
    gone = cli("exec", sandbox_id, "--", "true")
    assert gone.returncode == 125
    assert b"sandbox_not_found" in gone.stderr


def test_rm_destroys_the_known_and_reports_the_unknown(cli: Cli) -> None:
    sandbox_id = _ok(cli("create")).strip()
    proc = cli("rm", "loc-doesnotexist", sandbox_id, "--json")
    assert proc.returncode == 125
    assert json.loads(proc.stdout) == {"destroyed": [sandbox_id]}
    assert json.loads(proc.stderr)["error"]["code"] == "sandbox_not_found"
    assert cli("exec", sandbox_id, "--", "true").returncode == 125


def test_exec_json_and_stdin(cli: Cli) -> None:
    sandbox_id = _ok(cli("create")).strip()
    result = json.loads(
        _ok(cli("exec", sandbox_id, "--json", "--stdin", "--", "cat", stdin=b"piped\n"))
    )
    assert result["exit_code"] == 0
    assert result["stdout"] == "piped\n"
    assert "stdout_base64" not in result
    assert result["stdout_truncated"] is False


def test_exec_json_keeps_bytes_that_are_not_utf8(cli: Cli) -> None:
    sandbox_id = _ok(cli("create")).strip()
    raw = b"ok \xff\xfe\x00 end"
    result = json.loads(
        _ok(cli("exec", sandbox_id, "--json", "--stdin", "--", "sh", "-c", "cat", stdin=raw))
    )
    assert base64.b64decode(result["stdout_base64"]) == raw
    assert result["stdout"].startswith("ok ")
    assert "stderr_base64" not in result


def test_exit_statuses(cli: Cli) -> None:
    sandbox_id = _ok(cli("create")).strip()
    assert cli("exec", sandbox_id, "--shell", "exit 2").returncode == 2  # the command's own
    assert cli("exec", sandbox_id, "--shell", "kill -TERM $$").returncode == 128 + 15

    timed_out = cli("exec", sandbox_id, "--timeout", "0.5", "--", "sleep", "30")
    assert timed_out.returncode == 124
    assert b"command_timeout" in timed_out.stderr

    usage = cli("exec", sandbox_id, "--no-such-flag")
    assert usage.returncode == 2
    assert b"unrecognized arguments" in usage.stderr

    unknown = cli("exec", "loc-0000", "--", "true")
    assert unknown.returncode == 125
    assert b"Traceback" not in unknown.stderr


def test_version_and_help(cli: Cli) -> None:
    from agent_sandbox import __version__

    assert _ok(cli("--version")).startswith(f"agent-sandbox {__version__} ")
    top = _ok(cli("--help"))
    for word in ("create", "exec", "cp", "mcp", "audit", "124", "125"):
        assert word in top
    for command in ("create", "run", "exec", "cp", "ls", "rm", "sweep", "providers", "doctor"):
        text = _ok(cli(command, "--help"))
        for markup in ("``", ":class:", ":func:", ":meth:"):
            assert markup not in text, (command, markup)


def test_every_option_has_help() -> None:
    from agent_sandbox.cli.parser import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, subparser in sub.choices.items():
        if not subparser.add_help:
            continue  # an external sub-command: its own parser documents it
        for action in subparser._actions:
            assert action.help, (name, action.dest)
            assert action.help.strip(), (name, action.dest)


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


def test_cp_streams_a_large_file_in_bounded_memory(cli: Cli, tmp_path: Path) -> None:
    # The copy's peak memory stays far below the file's size, both ways (it was one whole copy).
    sandbox_id = _ok(cli("create")).strip()
    size = 200 * 1024 * 1024
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        out.truncate(size)  # sparse: costs no disk to make
    env = {
        **os.environ,
        "AGENT_SANDBOX_LOCAL_ROOT": str(tmp_path / "state"),  # the fixture's, so it cleans up
        "AGENT_SANDBOX_PROVIDER": "local",
    }
    measure = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    back = tmp_path / "back.bin"
    for src, dst in ((str(big), f"{sandbox_id}:big.bin"), (f"{sandbox_id}:big.bin", str(back))):
        argv = [sys.executable, "-c", measure, sys.executable, "-m", "agent_sandbox.cli"]
        done = subprocess.run(
            [*argv, "cp", src, dst], capture_output=True, check=True, env=env, timeout=300
        )
        peak_kib = int(done.stdout)
        assert peak_kib * 1024 < size / 2, f"cp {src} {dst} peaked at {peak_kib // 1024} MiB"
    assert back.stat().st_size == size


def test_cp_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    sandbox_id = _ok(cli("create")).strip()
    _ok(cli("exec", sandbox_id, "--shell", "echo hi > there.txt"))
    cases = {
        "missing remote": (f"{sandbox_id}:nope.txt", str(tmp_path / "x"), b"file_not_found"),
        "missing local": (str(tmp_path / "absent.bin"), f"{sandbox_id}:x", b"absent.bin"),
        "unwritable local": (
            f"{sandbox_id}:there.txt",
            str(tmp_path / "in.bin" / "below"),
            b"is not a directory",
        ),
    }
    (tmp_path / "in.bin").write_bytes(b"a file, so nothing can be created below it")
    for name, (src, dst, expected) in cases.items():
        proc = cli("cp", src, dst)
        assert proc.returncode == 125, (name, proc.stderr)
        assert proc.stderr.count(b"\n") == 1, (name, proc.stderr)
        assert proc.stderr.startswith(b"agent-sandbox: "), (name, proc.stderr)
        assert expected in proc.stderr, (name, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_progress_on_a_terminal_and_quiet_when_piped(cli: Cli, tmp_path: Path) -> None:
    sandbox_id = _ok(cli("create")).strip()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(os.urandom(3_000_000))

    piped = cli("cp", str(tree), f"{sandbox_id}:piped")
    assert piped.returncode == 0
    assert piped.stderr == b""

    on_tty = cli("cp", str(tree), f"{sandbox_id}:tty", tty=True)
    assert on_tty.returncode == 0, on_tty.stderr
    assert b"copying " in on_tty.stderr
    assert re.search(rb"copied 3\.0 MB in [0-9.]+ s \([0-9.]+ [kMG]?B/s\)", on_tty.stderr)

    as_json = cli("cp", str(tree), f"{sandbox_id}:json", "--json", tty=True)
    assert as_json.returncode == 0
    assert as_json.stderr == b""
    assert json.loads(as_json.stdout)["bytes"] == 3_000_000


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


def test_bad_input_is_one_line_and_status_2(cli: Cli) -> None:
    cases = {
        "unknown provider": (("ls", "--provider", "nope"), b"unknown provider 'nope'"),
        "unknown option": (("ls", "-o", "colour=blue"), b"unknown option 'colour'"),
        "no command": (("run",), b"no command"),
        "two local sides": (("cp", "a", "b"), b"SANDBOX_ID:PATH"),
        "malformed label": (("create", "--label", "novalue"), b"KEY=VALUE"),
        "bad ttl": (("create", "--ttl", "-5"), b"ttl"),
        "bad number": (("create", "--cpus", "many"), b"invalid float value"),
        "unknown command": (("frobnicate",), b"invalid choice"),
        "unknown mcp option": (("mcp", "--no-such-option"), b"unrecognized arguments"),
        "audit without action": (("audit",), b"action"),
    }
    for name, (args, expected) in cases.items():
        proc = cli(*args)
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr)
        assert b"Traceback" not in proc.stderr, name
        assert expected in proc.stderr, (name, proc.stderr)
