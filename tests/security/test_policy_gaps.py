"""Attacks on the policy: reaching past ``allow_paths`` with a glob pattern, past ``deny_paths``
with a doubled slash, and past a sandbox's ``deny_commands`` through the bash tool (whose
command travels on the shell's stdin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_sandbox import PolicyDenied, Sandbox
from agent_sandbox.audit import AuditingBackend
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.policy import Action, Policy
from agent_sandbox.tools import ToolKit

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


@pytest.mark.parametrize(
    "arguments",
    [
        {"pattern": "/etc/pass*"},
        {"pattern": "../../../../../../../../etc/pass*"},
        {"pattern": "../../../../../../../../etc/**/pass*", "path": "."},
        {"pattern": "/etc/*", "path": "."},
    ],
)
async def test_a_glob_pattern_cannot_reach_past_allow_paths(
    sandbox: Sandbox, arguments: dict[str, str]
) -> None:
    kit = ToolKit(sandbox, policy=Policy(allow_paths=[sandbox.info.workdir]))
    await sandbox.write_file("inside.txt", b"x")
    inside = await kit.run("glob", {"pattern": "*.txt"})
    assert not inside.is_error, inside.content
    assert "inside.txt" in inside.content
    escaped = await kit.run("glob", arguments)
    assert escaped.is_error
    assert "outside allow_paths" in escaped.content
    assert "passwd" not in escaped.content


@pytest.mark.parametrize("path", ["//etc/passwd", "///etc/passwd", "//etc//./passwd"])
def test_a_doubled_slash_does_not_slip_past_deny_paths(path: str) -> None:
    policy = Policy(deny_paths=["/etc"])
    assert not policy.decide(Action(op="read_file", path=path)).allowed
    assert not policy.decide(Action(op="tool_call", tool="mine", input={"file_path": path}))
    assert not Policy(deny_paths=["//etc"]).decide(Action(op="read_file", path="/etc/passwd"))
    assert not Policy(allow_paths=["/workspace"]).decide(Action(op="stat", path="//etc"))


async def test_a_doubled_slash_does_not_slip_past_a_guarded_backend(tmp_path: Path) -> None:
    inner = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
    guarded = AuditingBackend(inner, policy=Policy(deny_paths=["/etc"]))
    async with await Sandbox.create(backend=guarded) as sb:
        with pytest.raises(PolicyDenied, match="deny_paths"):
            await guarded.read_file(sb.id, "//etc/passwd")


async def test_a_sandbox_policy_sees_the_commands_the_bash_tool_runs(tmp_path: Path) -> None:
    backend = LocalBackend(LocalOptions(root=tmp_path / "state", isolation="none"))
    policy = Policy(deny_commands=[r"\bshred\b"])
    async with await Sandbox.create(backend=backend, policy=policy) as sb:
        await sb.write_file("victim.txt", b"keep me")
        with pytest.raises(PolicyDenied):  # the policy holds for a direct exec ...
            await sb.exec("shred -u victim.txt")
        kit = ToolKit(sb)  # ... and for the bash tool, whose command goes to a shell's stdin
        ran = await kit.run("bash", {"command": "shred -u victim.txt"})
        assert ran.is_error
        assert "deny_commands" in ran.content
        assert await sb.read_file("victim.txt") == b"keep me"
        fine = await kit.run("bash", {"command": "echo allowed"})
        assert not fine.is_error, fine.content
        assert "allowed" in fine.content
