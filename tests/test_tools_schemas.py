"""Tool schemas and their three renderings, checked against the vendors' own SDK types and a JSON
Schema validator; the glob matcher the glob tool uses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import TypeAdapter, ValidationError

from agent_sandbox import Sandbox
from agent_sandbox.local import LocalBackend
from agent_sandbox.local.backend import LocalOptions
from agent_sandbox.tools import ToolKit
from agent_sandbox.tools._glob import compile_glob, split_static_prefix

BUILTIN = ["bash", "read", "write", "edit", "glob", "grep"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def kit(tmp_path: Path) -> AsyncIterator[ToolKit]:
    backend = LocalBackend(LocalOptions(root=tmp_path / "root", isolation="none"))
    sandbox = await Sandbox.create(backend=backend)
    try:
        yield ToolKit(sandbox)
    finally:
        await sandbox.destroy()
        await backend.aclose()


@pytest.mark.anyio
async def test_builtin_tools_and_input_shapes(kit: ToolKit) -> None:
    assert kit.names == BUILTIN
    props = {tool.name: tool.input_schema for tool in kit.tools}
    # the shapes of the managed-agents built-in tools, so their tool_use input passes straight through
    assert set(props["bash"]["properties"]) == {"command", "timeout_ms", "restart"}
    assert set(props["read"]["properties"]) == {"file_path", "view_range"}
    assert set(props["write"]["properties"]) == {"file_path", "content"}
    assert set(props["edit"]["properties"]) == {
        "file_path",
        "old_string",
        "new_string",
        "replace_all",
    }
    assert set(props["glob"]["properties"]) == {"pattern", "path"}
    assert set(props["grep"]["properties"]) == {"pattern", "path"}
    assert props["read"]["required"] == ["file_path"]
    assert props["edit"]["required"] == ["file_path", "old_string", "new_string"]
    assert "required" not in props["bash"]
    assert props["read"]["properties"]["view_range"] == {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 2,
        "maxItems": 2,
        "description": props["read"]["properties"]["view_range"]["description"],
    }
    for schema in props.values():
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert "title" not in schema
        assert "anyOf" not in str(schema)
        jsonschema.Draft202012Validator.check_schema(schema)
        for prop in schema["properties"].values():
            assert prop["description"]


@pytest.mark.anyio
async def test_schema_and_validation_agree(kit: ToolKit) -> None:
    samples: list[tuple[str, dict[str, Any]]] = [
        ("bash", {"command": "ls", "timeout_ms": 1000, "restart": False}),
        ("bash", {"restart": True}),
        ("read", {"file_path": "a", "view_range": [1, -1]}),
        ("read", {"file_path": "a", "view_range": [1]}),
        ("read", {"path": "a"}),
        ("write", {"file_path": "a", "content": "x"}),
        ("write", {"file_path": "a"}),
        ("edit", {"file_path": "a", "old_string": "x", "new_string": "y", "replace_all": True}),
        ("edit", {"file_path": "a", "old_string": "x", "new_string": 3}),
        ("glob", {"pattern": "*.py", "path": "src"}),
        ("grep", {"pattern": "x", "extra": 1}),
    ]
    for name, args in samples:
        tool = kit.get(name)
        schema_ok = jsonschema.Draft202012Validator(tool.input_schema).is_valid(args)
        try:
            tool.parse(args)
            model_ok = True
        except ValidationError:
            model_ok = False
        assert schema_ok == model_ok, (name, args)


@pytest.mark.anyio
async def test_anthropic_rendering_matches_the_sdk_types(kit: ToolKit) -> None:
    from anthropic.types import ToolParam

    tools = kit.anthropic_tools()
    adapter = TypeAdapter(list[ToolParam])
    adapter.validate_python(tools)
    for tool in tools:
        assert set(tool) == {"name", "description", "input_schema"}
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", tool["name"])
    assert [t["name"] for t in kit.anthropic_tools(["read", "bash"])] == ["read", "bash"]


@pytest.mark.anyio
async def test_openai_renderings_match_the_sdk_types(kit: ToolKit) -> None:
    from openai.types.chat import ChatCompletionFunctionToolParam
    from openai.types.responses import FunctionToolParam

    chat = kit.openai_tools()
    TypeAdapter(list[ChatCompletionFunctionToolParam]).validate_python(chat)
    for tool in chat:
        assert tool["type"] == "function"
        assert set(tool["function"]) == {"name", "description", "parameters"}
    responses = kit.openai_responses_tools()
    TypeAdapter(list[FunctionToolParam]).validate_python(responses)
    assert {t["name"] for t in responses} == set(BUILTIN)
    assert all(t["type"] == "function" and "parameters" in t for t in responses)
    # the same schema in every rendering, and the renderings are copies
    assert chat[1]["function"]["parameters"] == kit.get("read").input_schema
    chat[1]["function"]["parameters"]["properties"].clear()
    assert kit.get("read").input_schema["properties"]


@pytest.mark.anyio
async def test_mcp_rendering_matches_the_sdk_types(kit: ToolKit) -> None:
    import mcp.types

    for definition in kit.mcp_tools():
        assert set(definition) == {"name", "description", "inputSchema"}
        tool = mcp.types.Tool.model_validate(definition)
        assert tool.name == definition["name"]
        assert tool.model_dump(by_alias=True)["inputSchema"] == definition["inputSchema"]


@pytest.mark.anyio
async def test_tool_registry_management(kit: ToolKit) -> None:
    with pytest.raises(ValueError, match="already registered"):
        kit.add_tool(kit.get("bash"))
    kit.remove_tool("bash")
    assert "bash" not in kit.names
    result = await kit.run("bash", {"command": "true"})
    assert result.is_error
    assert "unknown tool" in result.content


def _matches(pattern: str, paths: list[str]) -> list[str]:
    regex = compile_glob(pattern)
    return [p for p in paths if regex.match(p)]


def test_glob_matcher() -> None:
    paths = [
        "a.py",
        "b.txt",
        ".hidden.py",
        "src/c.py",
        "src/deep/d.py",
        "src/deep/e.ts",
        "src/deep/f.tsx",
        "x/src/g.py",
    ]
    assert _matches("*.py", paths) == ["a.py", ".hidden.py"]
    assert _matches("**/*.py", paths) == [
        "a.py",
        ".hidden.py",
        "src/c.py",
        "src/deep/d.py",
        "x/src/g.py",
    ]
    assert _matches("src/**", paths) == [
        "src/c.py",
        "src/deep/d.py",
        "src/deep/e.ts",
        "src/deep/f.tsx",
    ]
    assert _matches("src/**/*.py", paths) == ["src/c.py", "src/deep/d.py"]
    assert _matches("**/*.{ts,tsx}", paths) == ["src/deep/e.ts", "src/deep/f.tsx"]
    assert _matches("?.py", paths) == ["a.py"]
    assert _matches("[ab].*", paths) == ["a.py", "b.txt"]
    assert _matches("[!a].*", paths) == ["b.txt"]
    assert _matches("src/*", paths) == ["src/c.py"]
    assert _matches("a.(py)", ["a.(py)", "a.py"]) == ["a.(py)"]  # regex characters are literal


def test_static_prefix_split() -> None:
    assert split_static_prefix("/src/app/**/*.py") == ("/src/app", "**/*.py")
    assert split_static_prefix("*.py") == ("", "*.py")
    assert split_static_prefix("src/*.py") == ("src", "*.py")
    assert split_static_prefix("src/a.py") == ("src", "a.py")
    assert split_static_prefix("s*/a/*.py") == ("", "s*/a/*.py")
