"""The inspect adapter's own contract: config forms, error mapping, lifecycle (local provider)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("inspect_ai", reason="the inspect extra needs Python 3.11+")

from frameworks_testkit import RUN_ID, RUN_LABEL, config, config_options
from inspect_ai.util import (
    OutputLimitExceededError,
    SandboxEnvironmentSpec,
    SandboxUnavailableError,
)
from inspect_ai.util._sandbox.limits import override_max_exec_output_size
from inspect_ai.util._sandbox.registry import registry_find_sandboxenv

from agent_sandbox import ConfigError, Sandbox
from agent_sandbox.integrations.inspect import (
    AgentSandboxConfig,
    AgentSandboxEnvironment,
    _load_config,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def env() -> AsyncIterator[AgentSandboxEnvironment]:
    settings = AgentSandboxConfig.model_validate(config("local"))
    environments = await AgentSandboxEnvironment.sample_init("adapter", settings, {})
    try:
        yield environments["default"].as_type(AgentSandboxEnvironment)
    finally:
        await AgentSandboxEnvironment.sample_cleanup("adapter", settings, environments, False)


def test_the_entry_point_registers_the_environment() -> None:
    assert registry_find_sandboxenv("agent_sandbox") is AgentSandboxEnvironment


def test_a_spec_dict_deserializes_to_the_config_model() -> None:
    spec = SandboxEnvironmentSpec.model_validate(
        {"type": "agent_sandbox", "config": {"provider": "docker", "image": "python:3.12-slim"}}
    )
    assert spec.config == AgentSandboxConfig(provider="docker", image="python:3.12-slim")


def test_an_unknown_config_key_is_named() -> None:
    with pytest.raises(ConfigError, match="imagee"):
        AgentSandboxEnvironment.config_deserialize({"provider": "docker", "imagee": "x"})


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("sandbox.toml", 'provider = "docker"\nimage = "busybox"\n[options]\npull = "never"\n'),
        ("sandbox.yaml", "provider: docker\nimage: busybox\noptions:\n  pull: never\n"),
        (
            "sandbox.json",
            '{"provider": "docker", "image": "busybox", "options": {"pull": "never"}}',
        ),
    ],
)
async def test_a_config_file_is_read_by_its_suffix(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    await AgentSandboxEnvironment.task_init("task", str(path))
    assert _load_config(str(path)) == AgentSandboxConfig(
        provider="docker", image="busybox", options={"pull": "never"}
    )


async def test_a_bad_config_file_fails_the_task_before_any_sample(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.ini"
    path.write_text("provider=docker")
    with pytest.raises(ConfigError, match=r"\.json, \.toml, \.yaml"):
        await AgentSandboxEnvironment.task_init("task", str(path))


async def test_output_beyond_inspects_limit_raises(env: AgentSandboxEnvironment) -> None:
    with override_max_exec_output_size(1024), pytest.raises(OutputLimitExceededError) as info:
        await env.exec(["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x"])
    assert info.value.truncated_output == "x" * 1024


async def test_cwd_env_and_input_reach_the_command(env: AgentSandboxEnvironment) -> None:
    await env.exec(["mkdir", "-p", "sub"])
    result = await env.exec(
        ["sh", "-c", 'pwd; echo "$GREETING"; cat'], cwd="sub", env={"GREETING": "hi"}, input="in"
    )
    assert result.success
    assert result.stdout.splitlines() == [f"{env.sandbox.info.workdir}/sub", "hi", "in"]


async def test_read_file_keeps_crlf(env: AgentSandboxEnvironment) -> None:
    await env.write_file("crlf.txt", b"a\r\nb\r\n")
    assert await env.read_file("crlf.txt") == "a\r\nb\r\n"


async def test_a_destroyed_sandbox_is_unavailable(env: AgentSandboxEnvironment) -> None:
    await env.sandbox.destroy()
    with pytest.raises(SandboxUnavailableError):
        await env.exec(["true"])


async def test_connection_names_the_sandbox(env: AgentSandboxEnvironment) -> None:
    connection = await env.connection()
    assert connection.type == "agent_sandbox"
    assert connection.command == f"agent-sandbox exec --provider local {env.sandbox.id} -- sh"


async def test_task_cleanup_destroys_what_samples_left() -> None:
    settings = AgentSandboxConfig.model_validate(config("local"))
    environments = await AgentSandboxEnvironment.sample_init("crashy-task", settings, {})
    left = environments["default"].as_type(AgentSandboxEnvironment).sandbox
    await left.close()  # the sample "crashed": its sandbox was never destroyed

    await AgentSandboxEnvironment.task_cleanup("crashy-task", settings, cleanup=True)

    remaining = await Sandbox.list(
        {RUN_LABEL: RUN_ID}, provider="local", options=config_options("local")
    )
    assert left.id not in [info.id for info in remaining]
