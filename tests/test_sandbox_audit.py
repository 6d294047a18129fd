"""Sandbox.create/connect with audit= and policy=: every operation recorded, denials raised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_sandbox import (
    AuditLog,
    JsonlSink,
    Policy,
    PolicyDenied,
    Sandbox,
    verify_chain,
)
from agent_sandbox.testing import FakeBackend

pytestmark = pytest.mark.anyio


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_every_operation_of_the_handle_is_audited(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    sink = JsonlSink(log_path)
    backend = FakeBackend()
    try:
        async with await Sandbox.create(backend=backend, audit=AuditLog(sink)) as sb:
            await sb.exec(["echo", "hi"])
            await sb.write_file("a.txt", b"abc")
            assert await sb.read_file("a.txt") == b"abc"
    finally:
        sink.close()
        await backend.aclose()
    ops = [e["op"] for e in _events(log_path)]
    assert ops[0] == "create"
    assert ops[-1] == "destroy"
    assert {"exec", "write_file", "read_file"} <= set(ops)
    assert verify_chain(log_path).ok


async def test_policy_denies_before_the_command_runs(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    sink = JsonlSink(log_path)
    backend = FakeBackend()
    policy = Policy(deny_commands=[r"\brm\s+-rf\b"])
    try:
        async with await Sandbox.create(backend=backend, audit=AuditLog(sink), policy=policy) as sb:
            await sb.write_file("keep.txt", b"x")
            with pytest.raises(PolicyDenied) as denied:
                await sb.exec("rm -rf .")
            assert isinstance(denied.value, PermissionError)
            assert await sb.read_file("keep.txt") == b"x"
            reconnected = await Sandbox.connect(sb.id, backend=backend, policy=policy)
            with pytest.raises(PolicyDenied):
                await reconnected.exec(["sh", "-c", "rm -rf ."])
    finally:
        sink.close()
        await backend.aclose()
    decisions = [(e["op"], e["decision"]) for e in _events(log_path)]
    assert ("exec", "deny") in decisions
