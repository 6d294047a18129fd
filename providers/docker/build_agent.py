"""Wheel build hook: compile the exec agent (``agent/agent.c``) for x86_64 and aarch64 into
``agent_sandbox_docker/_bin/`` (see ``agent/build.py``), and ship the binaries in the wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class BuildAgent(BuildHookInterface):  # type: ignore[type-arg]
    """Runs before the wheel (or the editable install) is assembled."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        spec = importlib.util.spec_from_file_location(
            "agent_build", Path(self.root, "agent", "build.py")
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build(Path(self.root, "agent_sandbox_docker", "_bin"))
        build_data["artifacts"].append("agent_sandbox_docker/_bin/agent-*")
