"""AgentSandboxProvider's lifecycle (the deepagents CLI's sandbox-provider interface) and a deep
agent whose (fake) chat model runs its shell and file tools in the sandbox."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest

pytest.importorskip("deepagents", reason="the deepagents extra needs Python 3.11+")

from deepagents import create_deep_agent
from frameworks_testkit import config
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage

from agent_sandbox import SandboxNotFound
from agent_sandbox.integrations.deepagents import (
    AgentSandboxBackend,
    AgentSandboxProvider,
)

pytestmark = pytest.mark.parametrize("provider", ["local", "docker"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def params(provider: str) -> dict[str, Any]:
    """What the CLI would pass from its ``[sandboxes.providers.agent_sandbox]`` params."""
    return config(provider)


def test_the_entry_point_names_the_provider(provider: str) -> None:
    [entry] = [
        e
        for e in importlib.metadata.entry_points(group="deepagents_code.sandbox_providers")
        if e.name == "agent_sandbox"
    ]
    provider_class = entry.load()
    assert provider_class is AgentSandboxProvider
    assert provider_class().metadata is None  # deepagents' CLI is not installed here


def test_create_get_and_idempotent_delete(provider: str) -> None:
    lifecycle = AgentSandboxProvider()
    setup = params(provider)
    options = {"provider": setup["provider"], "options": setup.get("options")}
    created = lifecycle.get_or_create(**setup)
    try:
        assert created.execute("echo hello").output.strip() == "hello"
        again = lifecycle.get_or_create(sandbox_id=created.id, **options)
        assert again.id == created.id
        again.upload_files([("/tmp/shared.txt", b"seen by both")])
        assert created.download_files(["/tmp/shared.txt"])[0].content == b"seen by both"
    finally:
        lifecycle.delete(sandbox_id=created.id, **options)
    lifecycle.delete(sandbox_id=created.id, **options)
    lifecycle.delete(sandbox_id="definitely-not-a-real-sandbox-id", **options)
    with pytest.raises(SandboxNotFound):
        lifecycle.get_or_create(sandbox_id=created.id, **options)


@pytest.mark.anyio
async def test_async_create_and_delete(provider: str) -> None:
    lifecycle = AgentSandboxProvider()
    setup = params(provider)
    options = {"provider": setup["provider"], "options": setup.get("options")}
    created = await lifecycle.aget_or_create(**setup)
    try:
        assert (await created.aexecute("echo hi")).output.strip() == "hi"
    finally:
        await lifecycle.adelete(sandbox_id=created.id, **options)
    with pytest.raises(SandboxNotFound):
        await lifecycle.aget_or_create(sandbox_id=created.id, **options)


def test_execute_merges_streams_and_reports_timeouts(provider: str) -> None:
    setup = params(provider)
    backend = AgentSandboxBackend.create(
        provider=setup.pop("provider"), options=setup.pop("options", None), **setup
    )
    try:
        merged = backend.execute("echo out; echo err >&2; exit 3")
        assert merged.exit_code == 3
        assert sorted(merged.output.split()) == ["err", "out"]
        timed_out = backend.execute("echo started; sleep 30", timeout=1)
        assert timed_out.exit_code == 124
        assert timed_out.output.startswith("started")
        assert "timed out after 1 seconds" in timed_out.output
        backend.output_limit = 1000
        capped = backend.execute("head -c 5000 /dev/zero | tr '\\0' x")
        assert (capped.output, capped.truncated) == ("x" * 1000, True)
    finally:
        backend.destroy()


class ToolCallingFakeChatModel(GenericFakeChatModel):
    """langchain-core's fake chat model, accepting the tools an agent binds to it."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def test_a_deep_agent_runs_its_tools_in_the_sandbox(provider: str) -> None:
    setup = params(provider)
    backend = AgentSandboxBackend.create(
        provider=setup.pop("provider"), options=setup.pop("options", None), **setup
    )
    try:
        script = "/tmp/agent/answer.py"
        model = ToolCallingFakeChatModel(
            messages=iter(
                [
                    AIMessage(
                        content="",
                        tool_calls=[
                            {
                                "name": "write_file",
                                "args": {"file_path": script, "content": "print(6 * 7)\n"},
                                "id": "call_write",
                            }
                        ],
                    ),
                    AIMessage(
                        content="",
                        tool_calls=[
                            {
                                "name": "execute",
                                "args": {"command": f"python3 {script}"},
                                "id": "call_run",
                            }
                        ],
                    ),
                    AIMessage(content="The answer is 42."),
                ]
            )
        )
        agent = create_deep_agent(model=model, backend=backend)

        result = agent.invoke({"messages": [{"role": "user", "content": "What is 6*7?"}]})

        tool_results = {
            m.tool_call_id: str(m.content) for m in result["messages"] if isinstance(m, ToolMessage)
        }
        assert "42" in tool_results["call_run"]
        assert result["messages"][-1].content == "The answer is 42."
        [download] = backend.download_files([script])
        assert download.content == b"print(6 * 7)\n"
    finally:
        backend.destroy()
