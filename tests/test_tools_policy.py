"""The ToolKit under a Policy and an AuditLog: denials are error results, every call is audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_sandbox import Sandbox
from agent_sandbox.audit import AuditLog, JsonlSink, OtelSink, verify_chain
from agent_sandbox.local import LocalBackend
from agent_sandbox.local.backend import LocalOptions
from agent_sandbox.policy import Action, Decision, Policy
from agent_sandbox.tools import ToolKit


class ListSink:
    """Keeps the events in memory."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["bwrap", "none"])
async def sb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sandbox]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "root", isolation=request.param))
    if request.param == "bwrap" and backend.isolation != "bwrap":
        pytest.skip("bubblewrap cannot build a jail on this host")
    sandbox = await Sandbox.create(backend=backend)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()
        await backend.aclose()


@pytest.mark.anyio
async def test_denied_tools_and_commands_do_not_run(sb: Sandbox) -> None:
    policy = Policy(deny_tools=["write"], deny_commands=[r"\brm\s+-rf\b"])
    kit = ToolKit(sb, policy=policy)
    denied = await kit.run("write", {"file_path": "x.txt", "content": "x"})
    assert denied.is_error
    assert denied.content == "denied by policy: tool 'write' is denied (deny_tools: 'write')"
    assert not await sb.exists("x.txt")
    await sb.write_file("keep/me.txt", "still here\n")
    rm = await kit.run("bash", {"command": "rm -rf keep"})
    assert rm.is_error
    assert rm.content.startswith("denied by policy: command matches a denied pattern")
    assert await sb.read_text("keep/me.txt") == "still here\n"
    assert (await kit.run("bash", {"command": "echo allowed"})).content == "allowed"
    block = {"type": "tool_use", "id": "toolu_9", "name": "write", "input": {"file_path": "y"}}
    reply = await kit.handle_anthropic(block)
    assert reply["is_error"] is True
    assert reply["content"].startswith("denied by policy")


@pytest.mark.anyio
async def test_path_rules_see_absolute_paths(sb: Sandbox) -> None:
    project = sb.path("project")
    kit = ToolKit(sb, policy=Policy(allow_paths=[project]))
    await sb.write_file("project/a.txt", "a\n")
    await sb.write_file("other.txt", "o\n")
    assert not (await kit.run("read", {"file_path": "project/a.txt"})).is_error
    outside = await kit.run("read", {"file_path": "project/../other.txt"})
    assert outside.is_error
    assert f"path '{sb.path('other.txt')}' is outside allow_paths" in outside.content
    assert (await kit.run("grep", {"pattern": "o", "path": "project"})).content.startswith(
        "no matches"
    )
    assert (await kit.run("grep", {"pattern": "o"})).is_error  # the default path is the workdir
    assert not (await kit.run("bash", {"command": "cat other.txt"})).is_error  # no path


@pytest.mark.anyio
async def test_the_check_callable_sees_the_whole_action(sb: Sandbox) -> None:
    seen: list[Action] = []

    def check(action: Action) -> Decision | None:
        seen.append(action)
        if action.tool == "edit":
            return Decision(False, "no edits on Fridays")
        return None

    kit = ToolKit(sb, policy=Policy(check=check))
    await kit.run("bash", {"command": "true"}, call_id="c1")
    await kit.run("read", {"file_path": "notes.txt"}, call_id="c2")
    edit = await kit.run(
        "edit", {"file_path": "n", "old_string": "a", "new_string": "b"}, call_id="c3"
    )
    assert edit.content == "denied by policy: no edits on Fridays"
    bash, read, _ = seen
    assert bash == Action(
        op="tool_call",
        sandbox_id=sb.id,
        tool="bash",
        call_id="c1",
        input={"command": "true"},
        command="true",
        path=None,
    )
    assert read.path == sb.path("notes.txt")
    assert read.command is None
    assert read.input == {"file_path": "notes.txt"}

    def broken(action: Action) -> Any:
        raise RuntimeError("policy bug")

    strict = ToolKit(sb, policy=Policy(check=broken))
    failed = await strict.run("bash", {"command": "echo should-not-run"})
    assert failed.is_error
    assert "policy check failed (RuntimeError: policy bug)" in failed.content


@pytest.mark.anyio
async def test_every_call_is_audited(sb: Sandbox, tmp_path: Path) -> None:
    sink = ListSink()
    jsonl = JsonlSink(tmp_path / "audit.jsonl")
    audit = AuditLog(sink, jsonl)
    kit = ToolKit(sb, audit=audit, policy=Policy(deny_tools=["glob"]), output_budget=500)
    await kit.run("bash", {"command": "echo hi"}, call_id="toolu_1")
    await kit.run("bash", {"command": "seq 1 2000"}, call_id="toolu_2")
    await kit.run("glob", {"pattern": "*"}, call_id="toolu_3")
    await kit.run("read", {"nope": 1}, call_id="toolu_4")
    await kit.run("teleport", {}, call_id="toolu_5")
    await kit.run("bash", {"command": "echo no id"})
    jsonl.close()

    events = sink.events
    assert [e["call_id"] for e in events[:5]] == [f"toolu_{n}" for n in range(1, 6)]
    assert events[5]["call_id"].startswith("call_")  # generated when the caller has none
    assert {e["op"] for e in events} == {"tool_call"}
    assert [e["tool"] for e in events] == ["bash", "bash", "glob", "read", "teleport", "bash"]
    assert [e["decision"] for e in events] == ["allow", "allow", "deny", "allow", "deny", "allow"]
    assert [e["result"]["is_error"] for e in events] == [False, False, True, True, True, False]
    assert all(e["sandbox_id"] == sb.id and e["provider"] == sb.provider for e in events)
    assert events[0]["arguments"] == {"command": "echo hi"}
    assert events[0]["result"]["chars"] == 2
    assert events[0]["args_sha256"]
    assert events[0]["duration_ms"] is not None
    cut = events[1]["result"]
    assert cut["truncated"] is True
    assert cut["full_output_path"].endswith(".txt")
    assert cut["chars"] <= 500
    report = verify_chain(tmp_path / "audit.jsonl")
    assert report.ok, report
    assert report.to_dict()["records"] == 6


@pytest.mark.anyio
async def test_tool_calls_become_execute_tool_spans(sb: Sandbox) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    kit = ToolKit(sb, audit=AuditLog(OtelSink(provider)))
    await kit.run("bash", {"command": "echo traced"}, call_id="toolu_t1")
    await kit.run("read", {"file_path": "missing.txt"}, call_id="toolu_t2")
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["execute_tool bash", "execute_tool read"]
    ok, failed = spans
    assert ok.attributes is not None
    assert failed.attributes is not None
    assert ok.attributes["gen_ai.operation.name"] == "execute_tool"
    assert ok.attributes["gen_ai.tool.call.id"] == "toolu_t1"
    assert ok.status.is_ok
    assert failed.attributes["gen_ai.tool.name"] == "read"
    assert not failed.status.is_ok
