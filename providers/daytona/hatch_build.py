"""Build hooks shared by the provider distributions.

* :class:`PinCore` pins agent-sandbox to this release. Each provider's ``pyproject.toml`` lists its
  own requirements under ``[tool.hatch.metadata.hooks.custom] requires``; this hook adds
  ``agent-sandbox==<version>``, the version read from ``agent_sandbox/_version.py``, so a provider
  installs only beside the core it was released with.
* :class:`BuildStatic` compiles the C program of a provider that ships one, with
  ``build_static.py``: ``[tool.hatch.build.targets.wheel.hooks.custom]`` names its ``source`` and
  its ``targets`` (architectures); the binaries go into the package's ``_bin/``, in the wheel.

Every provider holds a byte-identical copy of this file (a source distribution must build on its
own); ``tests/test_packaging.py`` checks that they agree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface


class PinCore(MetadataHookInterface):
    """Set ``dependencies`` to the core at the same version plus the provider's own."""

    def update(self, metadata: dict[str, Any]) -> None:
        core = f"agent-sandbox=={metadata['version']}"
        metadata["dependencies"] = [core, *self.config["requires"]]


class BuildStatic(BuildHookInterface):  # type: ignore[type-arg]
    """Before the wheel (or the editable install) is assembled, build ``<package>/_bin/``."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        spec = importlib.util.spec_from_file_location(
            "build_static", Path(self.root, "build_static.py")
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        (package,) = self.build_config.packages
        source = Path(self.root, self.config["source"])
        module.build(source, self.config["targets"], Path(self.root, package, "_bin"))
        build_data["artifacts"].append(f"{package}/_bin/{source.stem}-*")
