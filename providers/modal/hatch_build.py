"""Build hook shared by the provider distributions: pin agent-sandbox to this release.

Each provider's ``pyproject.toml`` lists its own requirements under
``[tool.hatch.metadata.hooks.custom] requires``; this hook adds ``agent-sandbox==<version>``,
the version read from ``agent_sandbox/_version.py``, so a provider installs only beside the core
it was released with. Every provider holds a byte-identical copy of this file (a source
distribution must build on its own); ``tests/test_packaging.py`` checks that they agree.
"""

from __future__ import annotations

from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface


class PinCore(MetadataHookInterface):
    """Set ``dependencies`` to the core at the same version plus the provider's own."""

    def update(self, metadata: dict[str, Any]) -> None:
        core = f"agent-sandbox=={metadata['version']}"
        metadata["dependencies"] = [core, *self.config["requires"]]
