"""Attacks on the audit log by someone who can read it: recovering a redacted secret from the
argument digest, or reading file content the log promised to keep out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_sandbox import Sandbox
from agent_sandbox.audit import AuditLog, JsonlSink, canonical_json
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.tools import ToolKit

pytestmark = pytest.mark.anyio

SECRET = "ghp_" + "Q" * 36


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_digest_does_not_confirm_a_guessed_secret(tmp_path: Path) -> None:
    log_file = tmp_path / "audit.jsonl"
    audit = AuditLog(JsonlSink(log_file))
    for secret in (SECRET, "ghp_" + "R" * 36):
        arguments = {"command": "make deploy", "env": {"GITHUB_TOKEN": secret}}
        with audit.span("exec", sandbox_id="sb", arguments=arguments):
            pass
    first, second = events(log_file)
    assert SECRET not in log_file.read_text()
    # A reader with a dictionary of candidate tokens rebuilds the arguments around each one:
    # no candidate may be confirmed by the digest, the right one included.
    for candidate in (SECRET, "ghp_" + "A" * 36, "hunter2"):
        guess = {"command": "make deploy", "env": {"GITHUB_TOKEN": candidate}}
        assert hashlib.sha256(canonical_json(guess).encode()).hexdigest() != first["args_sha256"]
    # Two different secrets leave the same digest: it depends on what was recorded only.
    assert first["args_sha256"] == second["args_sha256"]
    # Matching a known (non-secret) input still works.
    assert first["args_sha256"] == audit.digest(
        {"command": "make deploy", "env": {"GITHUB_TOKEN": "anything"}}
    )


@pytest.fixture
async def toolkit(tmp_path: Path) -> AsyncIterator[tuple[ToolKit, Path]]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
    log_file = tmp_path / "audit.jsonl"
    sandbox = await Sandbox.create(backend=backend)
    try:
        yield ToolKit(sandbox, audit=AuditLog(JsonlSink(log_file))), log_file
    finally:
        await sandbox.destroy()


async def test_write_and_edit_records_keep_size_and_digest_not_content(
    toolkit: tuple[ToolKit, Path],
) -> None:
    kit, log_file = toolkit
    content = "db_url = postgres://app@db/prod\nlaunch code 0000-1111\n"
    wrote = await kit.run("write", {"file_path": "config.ini", "content": content})
    assert not wrote.is_error, wrote.content
    edited = await kit.run(
        "edit",
        {"file_path": "config.ini", "old_string": "0000-1111", "new_string": "2222-3333"},
    )
    assert not edited.is_error, edited.content
    text = log_file.read_text()
    for fragment in ("postgres://app@db/prod", "0000-1111", "2222-3333"):
        assert fragment not in text
    calls = [e for e in events(log_file) if e["op"] == "tool_call"]
    write_args, edit_args = (c["arguments"] for c in calls)
    assert isinstance(write_args, dict)
    assert isinstance(edit_args, dict)
    data = content.encode()
    assert write_args["content"] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert write_args["file_path"] == "config.ini"
    assert edit_args["old_string"] == {
        "bytes": 9,
        "sha256": hashlib.sha256(b"0000-1111").hexdigest(),
    }
    assert set(edit_args["new_string"]) == {"bytes", "sha256"}
