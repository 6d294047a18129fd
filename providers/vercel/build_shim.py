"""Wheel build hook: compile the command runner (``shim/shim.c``) for x86_64 into
``agent_sandbox_vercel/_bin/`` (see ``shim/build.py``), and ship it in the wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class BuildShim(BuildHookInterface):  # type: ignore[type-arg]
    """Runs before the wheel (or the editable install) is assembled."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        spec = importlib.util.spec_from_file_location(
            "shim_build", Path(self.root, "shim", "build.py")
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build(Path(self.root, "agent_sandbox_vercel", "_bin"))
        build_data["artifacts"].append("agent_sandbox_vercel/_bin/shim-*")
