"""The exec agent shipped in the package is what the project's build makes from its source:
compiling ``agent/agent.c`` again (Zig's C compiler, the pinned ``ziglang``) gives the same bytes,
for every architecture we ship."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import pytest

AGENT_DIR = Path(__file__).resolve().parents[1] / "agent"


def test_the_shipped_agents_are_rebuilt_byte_for_byte(tmp_path: Path) -> None:
    pytest.importorskip("ziglang", reason="the ziglang compiler is a dev dependency")
    spec = importlib.util.spec_from_file_location("agent_build", AGENT_DIR / "build.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for binary in build.build(tmp_path):
        shipped = resources.files("agent_sandbox_docker") / "_bin" / binary.name
        assert shipped.is_file(), f"no {binary.name} in the package"
        assert binary.read_bytes() == shipped.read_bytes(), f"{binary.name} differs when rebuilt"
        assert binary.read_bytes()[:4] == b"\x7fELF"
