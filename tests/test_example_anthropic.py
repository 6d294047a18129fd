"""The Anthropic example's agent loop, replayed offline.

The real ``anthropic`` SDK client talks to a fake Messages endpoint on 127.0.0.1 that answers with
a recorded conversation (assistant turns holding ``tool_use`` blocks for bash, write, read and
edit). The tool calls run for real in a local sandbox, and every request the SDK sends is checked:
it carries the toolkit's tool definitions and, after a tool-use turn, exactly the expected
``tool_result`` blocks (ids, ``is_error``, content).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import anthropic
import pytest
from anthropic.types import ToolResultBlockParam
from pydantic import TypeAdapter

from agent_sandbox import Sandbox
from agent_sandbox.local import LocalBackend
from agent_sandbox.local.backend import LocalOptions
from agent_sandbox.tools import ToolKit

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "anthropic_agent.py"
RECORDING = json.loads(
    (Path(__file__).parent / "fixtures" / "anthropic_agent_conversation.json").read_text()
)
API_KEY = "sk-ant-test-not-a-real-key"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("anthropic_agent_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeMessages:
    """A Messages API endpoint that replays recorded responses and keeps every request."""

    def __init__(self, responses: list[dict[str, Any]]) -> None:
        self.responses = list(responses)
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                fake.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body),
                    }
                )
                if self.path != "/v1/messages" or not fake.responses:
                    status, reply = (
                        400,
                        {
                            "type": "error",
                            "error": {
                                "type": "invalid_request_error",
                                "message": "unexpected call",
                            },
                        },
                    )
                else:
                    status, reply = 200, fake.responses.pop(0)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeMessages:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeMessages]:
    with FakeMessages([turn["response"] for turn in RECORDING["turns"]]) as server:
        yield server


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


def check_results(blocks: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    TypeAdapter(list[ToolResultBlockParam]).validate_python(blocks)
    assert [b["type"] for b in blocks] == ["tool_result"] * len(expected)
    assert [b["tool_use_id"] for b in blocks] == [e["tool_use_id"] for e in expected]
    for block, want in zip(blocks, expected, strict=True):
        assert block["is_error"] is want["is_error"], block
        if "content" in want:
            assert block["content"] == want["content"]
        for piece in want.get("contains", []):
            assert piece in block["content"], (piece, block)


@pytest.mark.anyio
async def test_recorded_conversation_replays_through_the_sdk(
    fake: FakeMessages, sb: Sandbox
) -> None:
    example = load_example()
    turns = RECORDING["turns"]
    async with anthropic.AsyncAnthropic(
        api_key=API_KEY, base_url=fake.url, max_retries=0
    ) as client:
        messages = await example.run_agent(RECORDING["task"], client=client, sandbox=sb)

    assert not fake.responses, "the loop stopped before the recorded conversation ended"
    assert len(fake.requests) == len(turns)
    expected_tools = ToolKit(sb).anthropic_tools()
    for index, request in enumerate(fake.requests):
        assert request["path"] == "/v1/messages"
        headers = request["headers"]
        assert API_KEY in (headers.get("x-api-key"), headers.get("authorization", "")[7:])
        assert "anthropic-version" in request["headers"]
        body = request["body"]
        assert body["model"] == example.MODEL
        assert body["tools"] == expected_tools
        sent = body["messages"]
        assert len(sent) == 1 + 2 * index
        assert sent[0] == {"role": "user", "content": RECORDING["task"]}
        if index == 0:
            continue
        previous = turns[index - 1]
        assistant, user = sent[-2], sent[-1]
        assert assistant["role"] == "assistant"
        replayed = [
            (b["type"], b.get("id"), b.get("input"), b.get("text")) for b in assistant["content"]
        ]
        recorded = [
            (b["type"], b.get("id"), b.get("input"), b.get("text"))
            for b in previous["response"]["content"]
        ]
        assert replayed == recorded
        assert user["role"] == "user"
        check_results(user["content"], previous["results"])

    # the conversation the example returns ends with the final answer
    assert messages[-1]["role"] == "assistant"
    assert messages[-1]["content"][0]["text"].startswith("Done:")
    # and the work really happened in the sandbox
    assert await sb.read_text("demo/total.py") == "print(sum(range(1, 101)))\n"


@pytest.mark.anyio
async def test_the_loop_survives_an_api_error_only_as_an_exception(
    fake: FakeMessages, sb: Sandbox
) -> None:
    """The tools never raise; an API failure is the SDK's exception, not a hang."""
    example = load_example()
    fake.responses.clear()
    async with anthropic.AsyncAnthropic(
        api_key=API_KEY, base_url=fake.url, max_retries=0
    ) as client:
        with pytest.raises(anthropic.BadRequestError):
            await example.run_agent("anything", client=client, sandbox=sb)


@pytest.mark.anyio
async def test_main_needs_an_api_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example()
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert await example.main([]) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err
