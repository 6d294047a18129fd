"""The audit log: events, redaction, the hash chain and its verification, the sinks, and the
auditing backend on real backends (the in-memory fake and the local provider)."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_sandbox import Sandbox
from agent_sandbox.audit import (
    GENESIS_HASH,
    REDACTED,
    AuditingBackend,
    AuditLog,
    JsonlSink,
    LoggingSink,
    OtelSink,
    canonical_json,
    redact,
    verify_chain,
    verify_main,
)
from agent_sandbox.errors import CommandTimeout, PolicyDenied
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.models import ExecOptions
from agent_sandbox.policy import Policy
from agent_sandbox.testing import FakeBackend
from agent_sandbox.tools import ToolKit


class ListSink:
    """A sink keeping events in memory (a real sink: the protocol is one method)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- events -----------------------------------------------------------------------------------


def test_span_emits_one_complete_event() -> None:
    sink = ListSink()
    log = AuditLog(sink)
    args = {"command": "echo hi"}
    with log.span(
        "exec", sandbox_id="sb-1", provider="fake", arguments=args, call_id="c1"
    ) as record:
        record.decision = "allow"
        record.result = {"exit_code": 0, "stdout_bytes": 3}
    with log.span("destroy", sandbox_id="sb-1"):
        pass
    first, second = sink.events
    assert first["op"] == "exec"
    assert first["sandbox_id"] == "sb-1"
    assert first["provider"] == "fake"
    assert first["call_id"] == "c1"
    assert first["decision"] == "allow"
    assert first["result"] == {"exit_code": 0, "stdout_bytes": 3}
    assert first["arguments"] == args
    assert first["args_sha256"] == hashlib.sha256(canonical_json(args).encode()).hexdigest()
    assert first["error"] is None
    assert first["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["time"])
    assert re.fullmatch(r"[0-9a-f]{32}", first["trace_id"])
    assert (first["seq"], second["seq"]) == (1, 2)
    assert second["args_sha256"] is None


def test_exception_is_recorded_and_reraised() -> None:
    sink = ListSink()
    log = AuditLog(sink)
    with pytest.raises(CommandTimeout), log.span("exec", sandbox_id="s"):
        raise CommandTimeout("command timed out after 1s", timeout=1.0)
    (event,) = sink.events
    assert event["error"] == {
        "type": "CommandTimeout",
        "code": "command_timeout",
        "message": "command timed out after 1s",
    }
    with pytest.raises(KeyError), log.span("read_file"):
        raise KeyError("x")
    assert sink.events[1]["error"]["type"] == "KeyError"
    assert "code" not in sink.events[1]["error"]


def test_record_one_shot_event() -> None:
    sink = ListSink()
    log = AuditLog(sink)
    event = log.record(
        "tool_call",
        tool="bash",
        call_id="toolu_1",
        arguments={"command": "ls"},
        decision="deny",
        error="denied by policy",
    )
    assert sink.events == [event]
    assert event["decision"] == "deny"
    assert event["error"]["message"] == "denied by policy"


def test_a_failing_sink_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def emit(self, event: dict[str, Any]) -> None:
            raise OSError("disk full")

    good = ListSink()
    log = AuditLog(Broken(), good)
    with caplog.at_level(logging.ERROR), log.span("exec"):
        pass
    assert len(good.events) == 1
    assert "audit sink Broken failed" in caplog.text


# -- redaction ----------------------------------------------------------------------------------


def test_redaction_of_secret_names_values_and_shapes() -> None:
    args = {
        "env": {
            "GITHUB_TOKEN": "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "DB_PASSWORD": "hunter2hunter2",
            "AWS_SECRET_ACCESS_KEY": "abc/def",
            "OPENAI_API_KEY": "sk-proj-1234567890abcdefghij",
            "MY_SETTING": "marked secret by the caller",
            "PATH": "/usr/bin",
            "max_tokens_note": "not a secret? it is named like one",
        },
        "command": (
            "export FOO_TOKEN=s3cr3t-value && curl -H 'Authorization: Bearer abcdefghijklmnop' "
            "https://user:pa55word@example.invalid/?api_key=zzzzzzzz sk-ant-api03-abcdefghijklmnopqrst"
        ),
        "literal": "the value literal-secret-123 appears here",
        "count": 3,
        "data": b"\x00\x01",
    }
    log = AuditLog(ListSink(), secret_values=["literal-secret-123"])
    sink = log.sinks[0]
    with log.span("exec", arguments=args, secrets=["MY_SETTING"]):
        pass
    event = sink.events[0]  # type: ignore[attr-defined]
    env = event["arguments"]["env"]
    for key in ("GITHUB_TOKEN", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY"):
        assert env[key] == REDACTED
    assert env["MY_SETTING"] == REDACTED
    assert env["PATH"] == "/usr/bin"
    command = event["arguments"]["command"]
    for secret in ("s3cr3t-value", "abcdefghijklmnop", "pa55word", "zzzzzzzz", "sk-ant-api03"):
        assert secret not in command, secret
    assert "export FOO_TOKEN=" in command
    assert "curl" in command
    assert "literal-secret-123" not in event["arguments"]["literal"]
    assert event["arguments"]["count"] == 3
    assert event["arguments"]["data"] == {
        "bytes": 2,
        "sha256": hashlib.sha256(b"\x00\x01").hexdigest(),
    }
    # The digest is of the arguments after redaction (see tests/security for why).
    redacted = event["arguments"]
    assert event["args_sha256"] == hashlib.sha256(canonical_json(redacted).encode()).hexdigest()
    assert event["args_sha256"] == log.digest(args, secrets=["MY_SETTING"])
    assert "ghp_" not in json.dumps(event)


def test_redact_leaves_plain_text_alone() -> None:
    value = {"file_path": "/workspace/a.py", "old_string": "x = 1", "keys": ["a", "b"]}
    assert redact(value) == value


def test_error_messages_and_results_are_scrubbed_of_known_secrets() -> None:
    sink = ListSink()
    log = AuditLog(sink, secret_values=["tok-abcdef-123456"])

    def fail() -> None:
        with log.span("exec") as record:
            record.result = {"stdout": "printed tok-abcdef-123456"}
            raise RuntimeError("failed with tok-abcdef-123456")

    with pytest.raises(RuntimeError):
        fail()
    assert "tok-abcdef-123456" not in json.dumps(sink.events[0])


# -- the chain ----------------------------------------------------------------------------------


def write_events(path: Path, count: int, start: int = 0) -> None:
    with JsonlSink(path) as sink:
        log = AuditLog(sink)
        for i in range(start, start + count):
            with log.span("exec", sandbox_id="s", arguments={"i": i}) as record:
                record.decision = "allow"


def test_chain_verifies_and_resumes_when_reopened(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 3)
    write_events(path, 2, start=3)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["prev_hash"] == GENESIS_HASH
    assert [line["arguments"]["i"] for line in lines] == [0, 1, 2, 3, 4]
    for before, after in itertools.pairwise(lines):
        assert after["prev_hash"] == before["hash"]
    report = verify_chain(path)
    assert report.ok
    assert report.records == 5
    assert report.last_hash == lines[-1]["hash"]
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("tamper", "line", "reason"),
    [
        ("edit", 2, "modified"),
        ("delete", 2, "removed, inserted or reordered"),
        ("swap", 2, "removed, inserted or reordered"),
        ("garbage", 3, "not JSON"),
        ("cut", 4, "incomplete last line"),
    ],
)
def test_tampering_shows(tmp_path: Path, tamper: str, line: int, reason: str) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 4)
    lines = path.read_text().splitlines(keepends=True)
    if tamper == "edit":
        record = json.loads(lines[1])
        record["decision"] = "deny"
        lines[1] = json.dumps(record) + "\n"
    elif tamper == "delete":
        del lines[1]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "garbage":
        lines[2] = "{not json\n"
    else:
        lines[3] = lines[3][:-10]
    path.write_text("".join(lines))
    report = verify_chain(path)
    assert not report.ok
    assert report.bad_line == line
    assert reason in report.reason
    assert report.records == line - 1


def test_truncation_shows_against_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 3)
    anchor = verify_chain(path).last_hash
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))
    assert verify_chain(path).ok  # a cut chain is still a chain ...
    report = verify_chain(path, expect_last_hash=anchor)  # ... but the anchor is missing
    assert not report.ok
    assert "truncated" in report.reason


def test_reopening_a_non_chained_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"hello": "world"}\n')
    with pytest.raises(ValueError, match="not a chained record"):
        JsonlSink(path)


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    # Two sinks on one file (as two processes would have) and one log per sink, many threads.
    sinks = [JsonlSink(path), JsonlSink(path)]
    logs = [AuditLog(s) for s in sinks]

    def work(n: int) -> None:
        log = logs[n % 2]
        for i in range(40):
            with log.span("exec", arguments={"thread": n, "i": i}):
                pass

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in sinks:
        s.close()
    report = verify_chain(path)
    assert report.ok, report
    assert report.records == 240
    with pytest.raises(ValueError, match="closed"):
        sinks[0].emit({"op": "x"})


def test_verify_main_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 2)
    assert verify_main([str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 2 records")
    assert verify_main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    path.write_text(path.read_text().replace('"exec"', '"read_file"', 1))
    assert verify_main([str(path)]) == 1
    assert "BROKEN at line 1" in capsys.readouterr().out
    assert verify_main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_audit_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent_sandbox.cli import main

    path = tmp_path / "audit.jsonl"
    write_events(path, 1)
    assert main(["audit", "verify", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 1


# -- logging and OpenTelemetry sinks -------------------------------------------------------------


def test_logging_sink(caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(LoggingSink("test.audit"))
    with (
        caplog.at_level(logging.INFO, logger="test.audit"),
        log.span("tool_call", tool="bash", sandbox_id="sb-9") as record,
    ):
        record.decision = "allow"
    (entry,) = caplog.records
    assert "tool_call bash" in entry.getMessage()
    assert "sandbox=sb-9" in entry.getMessage()
    assert entry.audit["tool"] == "bash"  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Any:
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk not installed")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_otel_sink_follows_genai_conventions(spans: Any) -> None:
    provider, exporter = spans
    events = ListSink()
    log = AuditLog(OtelSink(provider), events)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("agent turn") as parent:
        with log.span(
            "tool_call", tool="bash", call_id="toolu_01", sandbox_id="sb", provider="fake"
        ) as record:
            record.decision = "allow"
            record.result = {"is_error": False, "chars": 12}
        with pytest.raises(CommandTimeout), log.span("exec", sandbox_id="sb"):
            raise CommandTimeout("timed out")
    finished = {s.name: s for s in exporter.get_finished_spans()}
    tool = finished["execute_tool bash"]
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "bash"
    assert tool.attributes["gen_ai.tool.call.id"] == "toolu_01"
    assert tool.attributes["agent_sandbox.sandbox_id"] == "sb"
    assert tool.attributes["agent_sandbox.result.chars"] == 12
    assert tool.parent.span_id == parent.get_span_context().span_id
    exec_span = finished["sandbox.exec"]
    assert exec_span.status.status_code.name == "ERROR"
    assert exec_span.attributes["error.type"] == "command_timeout"
    # The event's trace id is the trace the spans belong to.
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    assert {e["trace_id"] for e in events.events} == {trace_id}
    # One-shot records become spans too.
    log.record("destroy", sandbox_id="sb", decision="allow")
    assert "sandbox.destroy" in {s.name for s in exporter.get_finished_spans()}


# -- the auditing backend -------------------------------------------------------------------------


@pytest.fixture
async def local_backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "state"))
    try:
        yield backend
    finally:
        for info in await backend.list():
            await backend.destroy(info.id)
        await backend.aclose()


@pytest.mark.anyio
async def test_auditing_backend_records_every_operation(tmp_path: Path) -> None:
    sink = ListSink()
    inner = FakeBackend()
    backend = AuditingBackend(inner, AuditLog(sink), secrets=["MY_SETTING"])
    assert backend.name == "fake"
    assert backend.capabilities == inner.capabilities
    assert backend.options is inner.options
    sb = await Sandbox.create(backend=backend, env={"API_TOKEN": "t0ps3cr3t", "MY_SETTING": "x"})
    try:
        result = await sb.exec("echo hello; echo oops >&2; exit 3")
        await sb.write_file("a.txt", b"12345")
        assert await sb.read_file("a.txt") == b"12345"
        events = [e async for e in sb.exec_stream("echo streamed")]
        assert events[-1].exit_code == 0
        with pytest.raises(CommandTimeout):
            await sb.exec("sleep 5", timeout=0.2)
    finally:
        await sb.destroy()
    ops = [e["op"] for e in sink.events]
    assert ops == ["create", "exec", "write_file", "read_file", "exec_stream", "exec", "destroy"]
    create, run, write, read, stream, timeout, destroy = sink.events
    assert create["sandbox_id"] == sb.id
    assert create["arguments"]["env"] == {"API_TOKEN": REDACTED, "MY_SETTING": REDACTED}
    assert "t0ps3cr3t" not in json.dumps(sink.events)
    assert run["result"] == {"exit_code": 3, "stdout_bytes": 6, "stderr_bytes": 5}
    assert result.exit_code == 3
    assert write["arguments"]["sha256"] == hashlib.sha256(b"12345").hexdigest()
    assert write["result"] == {"bytes": 5}
    assert read["result"] == {"bytes": 5}
    assert stream["result"]["exit_code"] == 0
    assert stream["result"]["stdout_bytes"] == len("streamed\n")
    assert timeout["error"]["code"] == "command_timeout"
    assert destroy["sandbox_id"] == sb.id
    assert all(e["provider"] == "fake" for e in sink.events)
    assert all(e["decision"] == "allow" for e in sink.events)


@pytest.mark.anyio
async def test_policy_denials_raise_and_are_audited_and_nothing_runs() -> None:
    sink = ListSink()
    policy = Policy(deny_commands=[r"\brm\b"], deny_paths=["/workspace/secret*"])
    backend = AuditingBackend(FakeBackend(), AuditLog(sink), policy)
    async with await Sandbox.create(backend=backend) as sb:
        await sb.write_file("keep.txt", "data")
        with pytest.raises(PolicyDenied, match="deny_commands"):
            await sb.exec(["rm", "keep.txt"])
        with pytest.raises(PolicyDenied, match="deny_paths"):
            await sb.write_file("secret.txt", "x")
        with pytest.raises(PolicyDenied):
            [e async for e in sb.exec_stream("rm -f keep.txt")]
        assert await sb.read_text("keep.txt") == "data"
        with pytest.raises(PolicyDenied):  # reads of a denied path are denied as well
            await sb.exists("secret.txt")
        assert not await backend.inner.exists(sb.id, "/workspace/secret.txt")
        denied = [e for e in sink.events if e["decision"] == "deny"]
        assert [e["op"] for e in denied] == ["exec", "write_file", "exec_stream", "exists"]
        assert all(e["error"]["code"] == "policy_denied" for e in denied)
        assert all(e["result"] is None for e in denied)


@pytest.mark.anyio
async def test_derived_operations_use_the_inner_backends_own_versions(
    local_backend: LocalBackend,
) -> None:
    # The local provider's list_dir/stat/mkdir/remove are native (no command); wrapped, they
    # must stay one event each with no exec underneath.
    sink = ListSink()
    backend = AuditingBackend(local_backend, AuditLog(sink))
    async with await Sandbox.create(backend=backend) as sb:
        await sb.mkdir("d/e")
        await sb.write_file("d/e/f.txt", "x")
        entries = await sb.list_dir("d/e")
        assert [e.name for e in entries] == ["f.txt"]
        assert (await sb.stat("d/e/f.txt")).size == 1
        await sb.remove("d", recursive=True)
        assert not await sb.exists("d")
    ops = [e["op"] for e in sink.events]
    assert ops == [
        "create",
        "mkdir",
        "write_file",
        "list_dir",
        "stat",
        "remove",
        "exists",
        "destroy",
    ]


@pytest.mark.anyio
async def test_auditing_backend_without_audit_still_enforces_the_policy() -> None:
    backend = AuditingBackend(FakeBackend(), None, Policy(check=lambda a: a.op != "create"))
    with pytest.raises(PolicyDenied, match="check"):
        await Sandbox.create(backend=backend)


@pytest.mark.anyio
async def test_exec_options_reach_the_inner_backend_and_the_event() -> None:
    sink = ListSink()
    backend = AuditingBackend(FakeBackend(), AuditLog(sink))
    async with await Sandbox.create(backend=backend) as sb:
        result = await backend.exec(
            sb.id, "cat; echo $X", ExecOptions(stdin=b"in\n", env={"X": "1", "PASSWORD": "pw"})
        )
        assert result.stdout == "in\n1\n"
    exec_event = next(e for e in sink.events if e["op"] == "exec")
    assert exec_event["arguments"]["env"] == {"X": "1", "PASSWORD": REDACTED}
    assert exec_event["arguments"]["stdin"]["bytes"] == 3


@pytest.mark.anyio
async def test_toolkit_calls_are_audited_with_policy_decisions(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonlSink(path) as jsonl:
        log = AuditLog(jsonl)
        async with await Sandbox.create(backend=FakeBackend()) as sb:
            kit = ToolKit(sb, audit=log, policy=Policy(deny_tools=["write"]))
            ok = await kit.run("bash", {"command": "echo hi"}, call_id="toolu_1")
            denied = await kit.run("write", {"file_path": "x", "content": "y"}, call_id="toolu_2")
    assert not ok.is_error
    assert denied.is_error
    assert "deny_tools" in denied.content
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["tool"], e["call_id"], e["decision"]) for e in events] == [
        ("bash", "toolu_1", "allow"),
        ("write", "toolu_2", "deny"),
    ]
    assert events[1]["result"]["is_error"] is True
    assert verify_chain(path).ok


def test_concurrent_processes_keep_one_chain(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "audit.jsonl"
    script = (
        "import sys\n"
        "from agent_sandbox.audit import AuditLog, JsonlSink\n"
        "sink = JsonlSink(sys.argv[1])\n"
        "log = AuditLog(sink)\n"
        "for i in range(150):\n"
        "    log.record('exec', arguments={'proc': sys.argv[2], 'i': i})\n"
        "sink.close()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(n)]) for n in range(3)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    report = verify_chain(path)
    assert report.ok, report
    assert report.records == 450
