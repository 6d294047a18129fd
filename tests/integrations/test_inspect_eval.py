"""A real ``inspect eval`` end to end: a mock model calls inspect's bash tool, which runs in an
agent_sandbox sandbox; the scorer reads back what the command wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("inspect_ai", reason="the inspect extra needs Python 3.11+")

from frameworks_testkit import RUN_ID, RUN_LABEL, config, config_options
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ChatMessageTool, ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer
from inspect_ai.solver import TaskState, generate, use_tools
from inspect_ai.tool import bash
from inspect_ai.util import sandbox

from agent_sandbox import Sandbox

COMMAND = "python3 -c 'print(eval(open(\"question.txt\").read()))' > answer.txt && cat answer.txt"


def mock_model_turn(messages: list[Any], *_: Any) -> ModelOutput:
    """Call bash once, then answer with what the tool printed."""
    last = messages[-1]
    if isinstance(last, ChatMessageTool):
        output = ModelOutput.from_content("mockllm/model", f"The answer is {last.text.strip()}")
    else:
        output = ModelOutput.for_tool_call("mockllm/model", "bash", {"command": COMMAND})
    # Usage given, so mockllm does not count tokens with tiktoken (whose encoding it would
    # download).
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output


@scorer(metrics=[accuracy()])
def answer_file() -> Any:
    async def score(state: TaskState, target: Target) -> Score:
        written = (await sandbox().read_file("answer.txt")).strip()
        return Score(value=CORRECT if written == target.text else INCORRECT, answer=written)

    return score


def arithmetic_task() -> Task:
    return Task(
        dataset=[
            Sample(input="What is 6*7?", target="42", files={"question.txt": "6*7"}),
            Sample(input="What is 2**10?", target="1024", files={"question.txt": "2**10"}),
        ],
        solver=[use_tools(bash(timeout=60)), generate()],
        scorer=answer_file(),
    )


@pytest.mark.parametrize("provider", ["local", "docker"])
def test_inspect_eval_runs_tool_calls_in_the_sandbox(provider: str, tmp_path: Path) -> None:
    config_file = tmp_path / "sandbox.json"
    config_file.write_text(json.dumps(config(provider)))
    model = get_model("mockllm/model", custom_outputs=mock_model_turn)

    [log] = eval(
        arithmetic_task(),
        model=model,
        sandbox=("agent_sandbox", str(config_file)),
        log_dir=str(tmp_path / "logs"),
        display="none",
    )

    assert log.status == "success", log.error
    assert log.samples is not None
    answers = sorted(sample.scores["answer_file"].answer or "" for sample in log.samples)
    assert answers == ["1024", "42"]
    assert log.results is not None
    assert log.results.scores[0].metrics["accuracy"].value == 1.0

    async def leftovers() -> list[str]:
        labels = {RUN_LABEL: RUN_ID, "agent-sandbox.integration": "inspect"}
        infos = await Sandbox.list(labels, provider=provider, options=config_options(provider))
        return [info.id for info in infos]

    assert anyio.run(leftovers) == [], "every sample's sandbox is destroyed when it ends"
