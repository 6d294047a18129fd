"""``agent-sandbox worker`` arguments and work-source URLs: bad input is a clear, typed error."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_sandbox.cli import main
from agent_sandbox.errors import ConfigError
from agent_sandbox.worker import SQLiteQueue, open_source


def test_sqlite_urls_name_absolute_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absolute = open_source(f"sqlite://{tmp_path}/queue.db")
    assert isinstance(absolute, SQLiteQueue)
    assert absolute.path == f"{tmp_path}/queue.db"
    monkeypatch.chdir(tmp_path)
    relative = open_source("sqlite://here.db")
    assert isinstance(relative, SQLiteQueue)
    assert relative.url == f"sqlite:///{tmp_path / 'here.db'}"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("queue.db", "expected sqlite://"),
        ("ftp://host/q", "unknown scheme 'ftp'"),
        ("sqlite://", "needs a path"),
        ("sqlite:///no/such/dir/q.db", "does not exist"),
    ],
)
def test_bad_source_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source(url)


def test_redis_url_keeps_the_password_out_of_its_name() -> None:
    queue = open_source("redis://:hunter2-secret@127.0.0.1:1/0?queue=jobs")
    assert "hunter2" not in queue.url
    assert queue.url == "redis://127.0.0.1:1/0?queue=jobs"


def test_command_reports_a_bad_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--source", "ftp://nowhere"]) == 2
    assert "unknown scheme 'ftp'" in capsys.readouterr().err


def test_command_reports_a_bad_policy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('deny_tools = ["write"]\nallow_everything = true\n')
    code = main(["worker", "--source", f"sqlite://{tmp_path}/q.db", "--policy", str(policy)])
    assert code == 2
    assert "allow_everything" in capsys.readouterr().err


def test_source_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["worker"])
    assert exit_info.value.code == 2
    assert "--source" in capsys.readouterr().err


def test_importing_the_worker_loads_no_vendor_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, agent_sandbox.worker, agent_sandbox.worker.cli; "
        "print(sorted(m for m in ('redis', 'anthropic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
