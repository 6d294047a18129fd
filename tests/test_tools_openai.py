"""The OpenAI loops of docs/integrations/openai.md, through the real ``openai`` SDK against a fake
of the Chat Completions and Responses endpoints on 127.0.0.1; the tool calls run for real."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from agent_sandbox import Sandbox
from agent_sandbox.local import LocalBackend
from agent_sandbox.local.backend import LocalOptions
from agent_sandbox.tools import ToolKit


class FakeOpenAI:
    """Replays canned replies per path and keeps every request body."""

    def __init__(self, replies: dict[str, list[dict[str, Any]]]) -> None:
        self.replies = {path: list(items) for path, items in replies.items()}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                fake.requests.append((self.path, body))
                queue = fake.replies.get(self.path) or []
                if queue:
                    status, reply = 200, queue.pop(0)
                else:
                    status, reply = 400, {"error": {"message": "unexpected", "type": "invalid"}}
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
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def chat_reply(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-5",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def responses_reply(rid: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": 1_700_000_000,
        "model": "gpt-5",
        "status": "completed",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sb(tmp_path: Path) -> AsyncIterator[Sandbox]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "root", isolation="auto"))
    sandbox = await Sandbox.create(backend=backend)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()
        await backend.aclose()


@pytest.fixture
def chat_fake() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(
        {
            "/v1/chat/completions": [
                chat_reply(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            tool_call(
                                "call_1",
                                "write",
                                json.dumps({"file_path": "hi.txt", "content": "hello\n"}),
                            ),
                            tool_call("call_2", "bash", json.dumps({"command": "cat hi.txt"})),
                        ],
                    },
                    "tool_calls",
                ),
                chat_reply(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            tool_call("call_3", "read", '{"file_path": "missing.txt"}'),
                            tool_call("call_4", "grep", '{"pattern": "hel+o"'),
                        ],
                    },
                    "tool_calls",
                ),
                chat_reply({"role": "assistant", "content": "all done"}, "stop"),
            ]
        }
    )
    try:
        yield fake
    finally:
        fake.close()


async def chat_agent(client: AsyncOpenAI, toolkit: ToolKit, task: str) -> str | None:
    """The loop of docs/integrations/openai.md, as written there."""
    messages: list[Any] = [{"role": "user", "content": task}]
    while True:
        completion = await client.chat.completions.create(
            model="gpt-5",
            messages=messages,
            tools=toolkit.openai_tools(),  # type: ignore[arg-type]
        )
        message = completion.choices[0].message
        messages.append(message)
        if not message.tool_calls:
            return message.content
        for call in message.tool_calls:
            messages.append(await toolkit.handle_openai(call))


@pytest.mark.anyio
async def test_chat_completions_loop(chat_fake: FakeOpenAI, sb: Sandbox) -> None:
    toolkit = ToolKit(sb)
    async with AsyncOpenAI(api_key="test", base_url=chat_fake.url, max_retries=0) as client:
        answer = await chat_agent(client, toolkit, "say hello")
    assert answer == "all done"
    assert len(chat_fake.requests) == 3
    for _, body in chat_fake.requests:
        assert body["tools"] == toolkit.openai_tools()
    second = chat_fake.requests[1][1]["messages"]
    assert second[-2:] == [
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": f"wrote 6 bytes (1 lines) to {sb.path('hi.txt')}",
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "hello"},
    ]
    assert second[1]["role"] == "assistant"
    assert [c["id"] for c in second[1]["tool_calls"]] == ["call_1", "call_2"]
    third = chat_fake.requests[2][1]["messages"]
    assert third[-2]["tool_call_id"] == "call_3"
    assert third[-2]["content"].startswith("file not found")
    assert third[-1]["tool_call_id"] == "call_4"
    assert "not valid JSON" in third[-1]["content"]


@pytest.mark.anyio
async def test_responses_api_loop(sb: Sandbox) -> None:
    toolkit = ToolKit(sb)
    fake = FakeOpenAI(
        {
            "/v1/responses": [
                responses_reply(
                    "resp_1",
                    [
                        {
                            "type": "function_call",
                            "id": "fc_item_1",
                            "call_id": "fc_1",
                            "name": "bash",
                            "arguments": '{"command": "echo $((6*7))"}',
                            "status": "completed",
                        }
                    ],
                ),
                responses_reply(
                    "resp_2",
                    [
                        {
                            "type": "message",
                            "id": "msg_1",
                            "role": "assistant",
                            "status": "completed",
                            "content": [{"type": "output_text", "text": "42", "annotations": []}],
                        }
                    ],
                ),
            ]
        }
    )
    try:
        async with AsyncOpenAI(api_key="test", base_url=fake.url, max_retries=0) as client:
            tools: Any = toolkit.openai_responses_tools()
            response = await client.responses.create(model="gpt-5", input="6*7?", tools=tools)
            while True:
                calls = [item for item in response.output if item.type == "function_call"]
                if not calls:
                    break
                outputs: Any = [await toolkit.handle_openai(call) for call in calls]
                response = await client.responses.create(
                    model="gpt-5", previous_response_id=response.id, input=outputs, tools=tools
                )
        assert response.output_text == "42"
    finally:
        fake.close()
    assert len(fake.requests) == 2
    second = fake.requests[1][1]
    assert second["previous_response_id"] == "resp_1"
    assert second["input"] == [{"type": "function_call_output", "call_id": "fc_1", "output": "42"}]
    assert second["tools"] == toolkit.openai_responses_tools()
