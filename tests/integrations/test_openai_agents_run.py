"""An agent run through the OpenAI Agents SDK's Runner, its sandbox on agent-sandbox.

The model is a fake of the OpenAI Responses API (``POST /v1/responses``, as documented in the
API reference and modelled by the ``openai`` package's ``Response`` type) on 127.0.0.1: it asks
for one ``exec_command`` call, then answers with what the tool returned.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("agents.sandbox", reason="the openai-agents extra is not installed")

from agents import RunConfig, Runner
from agents.models.openai_responses import OpenAIResponsesModel
from agents.sandbox import SandboxAgent, SandboxRunConfig
from agents.sandbox.capabilities import Shell
from frameworks_testkit import RUN_ID, RUN_LABEL, config, config_options
from openai import AsyncOpenAI

from agent_sandbox import Sandbox
from agent_sandbox.integrations.openai_agents import (
    AgentSandboxClient,
    AgentSandboxClientOptions,
)

COMMAND = "echo 6*7 > question.txt && python3 -c 'print(eval(open(\"question.txt\").read()))'"


def response(output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_700_000_000,
        "model": "gpt-5",
        "status": "completed",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 1,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 1,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 2,
        },
    }


def model_turn(body: dict[str, Any]) -> dict[str, Any]:
    """One exec_command call, then a message carrying the tool's output."""
    items = body["input"] if isinstance(body["input"], list) else []
    outputs = [item["output"] for item in items if item.get("type") == "function_call_output"]
    if outputs:
        text = f"The sandbox said: {outputs[-1]}"
        content = [{"type": "output_text", "text": text, "annotations": []}]
        message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed"}
        return response([{**message, "content": content}])
    call = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "exec_command",
        "arguments": json.dumps({"cmd": COMMAND}),
        "status": "completed",
    }
    return response([call])


class FakeResponsesAPI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                fake.requests.append(body)
                if self.path == "/v1/responses":
                    status, reply = 200, model_turn(body)
                else:
                    status, reply = 404, {"error": {"message": self.path, "type": "not_found"}}
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


@pytest.fixture
def fake_api() -> Iterator[FakeResponsesAPI]:
    fake = FakeResponsesAPI()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["local", "docker"])
async def test_a_runner_agent_runs_its_shell_calls_in_the_sandbox(
    provider: str, fake_api: FakeResponsesAPI
) -> None:
    model = OpenAIResponsesModel(
        model="gpt-5", openai_client=AsyncOpenAI(base_url=fake_api.url, api_key="test-key")
    )
    agent = SandboxAgent(
        name="calculator", instructions="Use the shell.", model=model, capabilities=[Shell()]
    )
    run_config = RunConfig(
        tracing_disabled=True,
        sandbox=SandboxRunConfig(
            client=AgentSandboxClient(),
            options=AgentSandboxClientOptions.model_validate(config(provider)),
        ),
    )

    result = await Runner.run(agent, "What is 6*7?", run_config=run_config)

    assert "The sandbox said:" in result.final_output
    assert "Process exited with code 0" in result.final_output
    assert result.final_output.rstrip().endswith("42")
    first, second = fake_api.requests
    assert "exec_command" in [tool.get("name") for tool in first["tools"]]
    [tool_output] = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert "42" in tool_output["output"]
    labels = {RUN_LABEL: RUN_ID, "agent-sandbox.integration": "openai-agents"}
    left = await Sandbox.list(labels, provider=provider, options=config_options(provider))
    assert left == [], "the Runner deletes the sandbox of a session it created"
