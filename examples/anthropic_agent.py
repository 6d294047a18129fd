"""A complete coding agent: Claude's tool-use loop, every tool call run in a sandbox.

    pip install "agent-sandbox" anthropic
    export ANTHROPIC_API_KEY=...
    python examples/anthropic_agent.py "Write fizzbuzz.py, run it for 1..15 and show the output"

The model sees six tools (bash, read, write, edit, glob, grep) and asks for them with
``tool_use`` blocks; :class:`agent_sandbox.ToolKit` runs each one in the sandbox and turns the
outcome into the ``tool_result`` block the next request carries. Failed calls come back to the
model as ``is_error`` results, so the loop never dies on a bad path or a timeout.

The sandbox comes from your configuration (``local`` when nothing is configured); set
``AGENT_SANDBOX_PROVIDER=docker`` (and install ``agent-sandbox[docker]``) to use Docker instead.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import anthropic

from agent_sandbox import Sandbox, ToolKit

MODEL = os.environ.get("ANTHROPIC_MODEL", "claude-sonnet-4-6")
SYSTEM = (
    "You are a careful software engineer working in a sandboxed Linux machine. Use the tools to "
    "inspect, create, edit and run files. Keep going until the task is done, then reply with a "
    "short summary of what you did."
)


async def run_agent(
    task: str,
    *,
    client: anthropic.AsyncAnthropic,
    sandbox: Sandbox,
    model: str = MODEL,
    max_turns: int = 40,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Let the model work on ``task`` until it stops asking for tools; return the conversation.

    Each turn sends the whole conversation; when the reply's ``stop_reason`` is ``tool_use``,
    every ``tool_use`` block is run in ``sandbox`` and answered, in order, in one user message.
    """
    toolkit = ToolKit(sandbox)
    tools: Any = toolkit.anthropic_tools()
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    for _ in range(max_turns):
        response = await client.messages.create(
            model=model,
            max_tokens=4096,
            system=SYSTEM,
            tools=tools,
            messages=messages,  # type: ignore[arg-type]
        )
        messages.append(
            {
                "role": "assistant",
                "content": [block.model_dump(exclude_none=True) for block in response.content],
            }
        )
        if verbose:
            for block in response.content:
                if block.type == "text":
                    print(f"\nassistant: {block.text}")
                elif block.type == "tool_use":
                    print(f"\n-> {block.name} {block.input}")
        if response.stop_reason != "tool_use":
            break
        results = []
        for block in response.content:
            if block.type == "tool_use":
                result = await toolkit.handle_anthropic(block)
                if verbose:
                    flag = " (error)" if result["is_error"] else ""
                    print(f"<- {result['content'][:500]}{flag}")
                results.append(result)
        messages.append({"role": "user", "content": results})
    return messages


async def main(argv: list[str]) -> int:
    if not os.environ.get("ANTHROPIC_API_KEY"):
        print("set ANTHROPIC_API_KEY to run this example against the real API", file=sys.stderr)
        return 2
    task = " ".join(argv) or "Write fizzbuzz.py, run it for 1..15 and show me the output."
    async with await Sandbox.create() as sandbox:
        print(f"sandbox {sandbox.provider}:{sandbox.id}")
        async with anthropic.AsyncAnthropic() as client:
            await run_agent(task, client=client, sandbox=sandbox, verbose=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
