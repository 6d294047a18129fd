"""Bad input at the API gets a typed error with a message that says what to do, and loses
nothing: no file half-written, no sandbox that never ends, no policy silently misread."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_sandbox import ConfigError, Sandbox, SandboxSpec
from agent_sandbox.audit import AuditLog, JsonlSink
from agent_sandbox.errors import ArgumentTypeError
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.policy import Policy

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
    sb = await Sandbox.create(backend=backend)
    try:
        yield sb
    finally:
        await sb.destroy()


@pytest.mark.parametrize("ttl", [math.inf, 1e30, math.nan, 400 * 24 * 3600])
async def test_a_sandbox_must_end_in_finite_time(ttl: float, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ttl_seconds"):
        SandboxSpec(ttl_seconds=ttl)
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
    with pytest.raises(ConfigError, match="ttl_seconds"):
        await Sandbox.create(backend=backend, ttl_seconds=ttl)
    assert await backend.list() == []
    with pytest.raises(ValidationError, match="idle_timeout_seconds"):
        SandboxSpec(idle_timeout_seconds=ttl)


@pytest.mark.parametrize("data", [5, None, 3.5, ["a"], {"a": 1}])
async def test_write_file_refuses_what_is_not_bytes_or_text(sandbox: Sandbox, data: object) -> None:
    with pytest.raises(ArgumentTypeError, match="bytes or str") as caught:
        await sandbox.write_file("f.bin", data)  # type: ignore[arg-type]
    assert isinstance(caught.value, TypeError)
    assert not await sandbox.exists("f.bin")


async def test_write_file_refuses_text_that_is_not_unicode(sandbox: Sandbox) -> None:
    with pytest.raises(ConfigError, match="pass bytes"):
        await sandbox.write_file("f.txt", "lone \ud800 surrogate")
    assert not await sandbox.exists("f.txt")
    await sandbox.write_file("ok.bin", memoryview(b"\x00\xff"))
    assert await sandbox.read_file("ok.bin") == b"\x00\xff"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.json", "{not json", "not valid JSON"),
        ("p.toml", "deny_tools = [", "not valid TOML"),
        ("p.json", '["write"]', "a table of rules"),
        ("p.json", '{"deny_tool": ["write"]}', "unknown policy key.*deny_tool"),
        ("p.json", '{"deny_tools": "write"}', "must be a list of strings"),
        ("p.json", '{"deny_tools": [1]}', "must be a list of strings"),
        ("p.json", '{"deny_commands": ["(unclosed"]}', "invalid deny_commands pattern"),
        ("p.toml", "[policy]\nallow_paths = 3\n", "must be a list of strings"),
        ("p.json", b"\xff\xfe", "cannot read"),
    ],
)
def test_invalid_policy_files_name_the_file_and_the_problem(
    tmp_path: Path, name: str, text: str | bytes, message: str
) -> None:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        Policy.from_file(path)
    assert str(path) in str(caught.value)


def test_a_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        Policy.from_file(tmp_path / "nope.toml")


def test_a_rule_given_as_one_string_is_not_read_letter_by_letter() -> None:
    # tuple("write") would deny the tools "w", "r", "i", "t" and "e", and not "write".
    with pytest.raises(ArgumentTypeError, match=r"deny_tools=\['write'\]"):
        Policy(deny_tools="write")
    with pytest.raises(ArgumentTypeError):
        Policy(allow_paths="/workspace")


def test_invalid_audit_files_are_config_errors(tmp_path: Path) -> None:
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("shopping list\n")
    with pytest.raises(ConfigError, match="audit verify"):
        JsonlSink(not_a_log)
    assert not_a_log.read_text() == "shopping list\n"  # untouched
    with pytest.raises(ConfigError, match="cannot open the audit file"):
        JsonlSink(tmp_path)
    with pytest.raises(ConfigError, match="cannot open the audit file"):
        AuditLog(JsonlSink(tmp_path / "missing-dir" / "audit.jsonl"))


def test_the_mcp_command_reports_a_bad_policy_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mcp", reason="the MCP server needs the mcp extra")
    from agent_sandbox.mcp.server import main as mcp_main

    bad = tmp_path / "policy.json"
    bad.write_text("{oops")
    assert mcp_main(["--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "not valid JSON" in err
    assert mcp_main(["--audit", str(tmp_path)]) == 2
    assert "cannot open the audit file" in capsys.readouterr().err
