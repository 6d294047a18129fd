"""Custom tools: Python functions registered with ``@toolkit.tool`` run inside the sandbox."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import Field

from agent_sandbox import Sandbox
from agent_sandbox.local import LocalBackend
from agent_sandbox.local.backend import LocalOptions
from agent_sandbox.tools import ToolKit

BUSYBOX = "agent-sandbox/busybox:latest"
PYTHON_IMAGE = "agent-sandbox/debian-python:bookworm"
DOCKER_LABEL = "agent-sandbox.test-run"
DOCKER_RUN = uuid.uuid4().hex[:12]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def _docker_cleanup() -> Iterator[None]:
    """Force-remove this module's containers, however the tests end."""
    yield
    try:
        import docker

        client = docker.APIClient(version="auto", timeout=10)
        for row in client.containers(all=True, filters={"label": f"{DOCKER_LABEL}={DOCKER_RUN}"}):
            client.remove_container(row["Id"], force=True)
    except Exception:
        pass


def _docker_backend(image: str) -> Any:
    try:
        import docker

        client = docker.APIClient(version="auto", timeout=10)
        client.inspect_image(image)
        from agent_sandbox_docker import DockerBackend
    except Exception as exc:
        pytest.skip(f"needs a Docker engine with {image} ({type(exc).__name__}: {exc})")
    return DockerBackend()


@pytest.fixture(params=["bwrap", "none", "docker"])
async def sb(
    request: pytest.FixtureRequest, tmp_path: Path, _docker_cleanup: None
) -> AsyncIterator[Sandbox]:
    if request.param == "docker":
        backend = _docker_backend(PYTHON_IMAGE)
        sandbox = await Sandbox.create(
            backend=backend, image=PYTHON_IMAGE, labels={DOCKER_LABEL: DOCKER_RUN}
        )
    else:
        backend = LocalBackend(LocalOptions(root=tmp_path / "root", isolation=request.param))
        if request.param == "bwrap" and backend.isolation != "bwrap":
            pytest.skip("bubblewrap cannot build a jail on this host")
        sandbox = await Sandbox.create(backend=backend)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()
        await backend.aclose()


def host_pid() -> int:
    return os.getpid()


@pytest.mark.anyio
async def test_decorated_function_runs_inside_the_sandbox(sb: Sandbox) -> None:
    kit = ToolKit(sb)

    @kit.tool
    def word_count(
        path: Annotated[str, Field(description="file to count")], min_length: int = 1
    ) -> dict[str, int]:
        """Count the words of a file.

        Args:
            path: ignored here, described by the annotation instead.
            min_length: shortest word counted.
        """
        import os

        with open(path) as handle:
            words = [w for w in handle.read().split() if len(w) >= min_length]
        return {"words": len(words), "pid": os.getpid(), "cwd": os.getcwd()}

    assert callable(word_count)  # the decorator returns the function unchanged
    assert "word_count" in kit.names
    definition = kit.get("word_count").anthropic()
    assert definition["description"] == "Count the words of a file."
    schema = definition["input_schema"]
    assert schema["required"] == ["path"]
    assert schema["properties"]["path"] == {"type": "string", "description": "file to count"}
    assert schema["properties"]["min_length"]["type"] == "integer"
    assert schema["properties"]["min_length"]["default"] == 1
    assert schema["properties"]["min_length"]["description"] == "shortest word counted."

    await sb.write_file("text.txt", "a bb ccc dddd\n")
    result = await kit.run("word_count", {"path": "text.txt", "min_length": 2})
    assert not result.is_error, result.content
    assert '"words": 3' in result.content
    # it ran in the sandbox: another process, in the sandbox's workdir
    assert f'"pid": {host_pid()}' not in result.content
    assert f'"cwd": "{sb.info.workdir}"' in result.content


@pytest.mark.anyio
async def test_custom_tool_output_errors_and_validation(sb: Sandbox) -> None:
    kit = ToolKit(sb)

    @kit.tool(name="shout", description="Upper-case a text.")
    async def loud(text: str, times: int = 1) -> str:
        print("working on it")
        return (text.upper() + " ") * times

    @kit.tool
    def explode(reason: str) -> None:
        raise RuntimeError(reason)

    @kit.tool
    def silent() -> None:
        pass

    result = await kit.run("shout", {"text": "hi", "times": 2})
    assert not result.is_error
    assert result.content == "working on it\nHI HI "
    assert kit.get("shout").description == "Upper-case a text."
    failed = await kit.run("explode", {"reason": "kaboom"})
    assert failed.is_error
    assert "RuntimeError: kaboom" in failed.content
    assert "Traceback" in failed.content
    assert (await kit.run("silent", {})).content == "(no output)"
    bad = await kit.run("shout", {"times": "many"})
    assert bad.is_error
    assert "text: Field required" in bad.content
    assert "times" in bad.content


@pytest.mark.anyio
async def test_custom_tool_timeout(sb: Sandbox) -> None:
    kit = ToolKit(sb)

    @kit.tool(timeout=1)
    def nap() -> str:
        import time

        time.sleep(30)
        return "woke"

    result = await kit.run("nap", {})
    assert result.is_error
    assert "timed out after 1 s" in result.content


def test_register_refuses_what_cannot_travel() -> None:
    from agent_sandbox.tools._python import function_source, input_model_of

    with pytest.raises(TypeError, match="source"):
        function_source(len)

    def star(*args: Any) -> None:
        pass

    with pytest.raises(TypeError, match=r"\*args"):
        input_model_of(star, "star")


@pytest.mark.anyio
@pytest.mark.usefixtures("_docker_cleanup")
async def test_custom_tool_without_python3_says_so() -> None:
    sandbox = await Sandbox.create(
        backend=_docker_backend(BUSYBOX), image=BUSYBOX, labels={DOCKER_LABEL: DOCKER_RUN}
    )
    try:
        kit = ToolKit(sandbox)

        @kit.tool
        def anything() -> str:
            return "x"

        result = await kit.run("anything", {})
        assert result.is_error
        assert "has no python3" in result.content
        # the built-in tools still work without bash or python
        assert (await kit.run("bash", {"command": "export A=1"})).content == "(no output)"
        assert (await kit.run("bash", {"command": "echo $A"})).content == "1"
        await kit.run("write", {"file_path": "/tmp/x/y.txt", "content": "hello\n"})
        assert "hello" in (await kit.run("grep", {"pattern": "hel+", "path": "/tmp/x"})).content
        assert (await kit.run("glob", {"pattern": "/tmp/x/*.txt"})).content == "/tmp/x/y.txt"
    finally:
        await sandbox.destroy()
        await sandbox.backend.aclose()
