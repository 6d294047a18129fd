"""The public API of ``agent_sandbox``: every name resolves, and importing the package is cheap."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import agent_sandbox

INIT = Path(agent_sandbox.__file__)


def _type_checking_names() -> dict[str, str]:
    tree = ast.parse(INIT.read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    names = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name} must be re-exported as itself"
            names[alias.name] = "." + str(node.module)
    return names


def test_the_table_and_the_type_checking_imports_agree() -> None:
    assert _type_checking_names() == agent_sandbox._EXPORTS


def test_every_public_name_resolves_to_its_module() -> None:
    for name, module in agent_sandbox._EXPORTS.items():
        home = importlib.import_module(module, "agent_sandbox")
        assert getattr(agent_sandbox, name) is getattr(home, name), name
    assert set(agent_sandbox.__all__) == {"__version__", *agent_sandbox._EXPORTS}
    assert set(agent_sandbox.__all__) <= set(dir(agent_sandbox))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        agent_sandbox.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def test_import_loads_nothing_heavy() -> None:
    loaded = _modules_after("import agent_sandbox")
    heavy = {
        "pydantic",
        "anyio",
        "httpx",
        "agent_sandbox.audit",
        "agent_sandbox.tools",
        "agent_sandbox.models",
        "opentelemetry",
        "docker",
        "e2b",
        "daytona",
        "modal",
        "mcp",
    }
    assert not heavy & loaded


def test_using_the_sandbox_loads_no_vendor_sdk_nor_tools() -> None:
    loaded = _modules_after("from agent_sandbox import Sandbox")
    for module in (
        "docker",
        "e2b",
        "daytona",
        "modal",
        "mcp",
        "opentelemetry",
        "agent_sandbox.tools",
        "agent_sandbox.audit",
        "agent_sandbox.policy",
        "agent_sandbox.archive",
        "tarfile",
    ):
        assert module not in loaded
