"""What every framework adapter is configured with: a provider, its options, and a sandbox spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from .. import Sandbox, SandboxSpec

INTEGRATION_LABEL = "agent-sandbox.integration"
"""Label naming the framework adapter that created a sandbox (``inspect``, ``openai-agents``, ...)."""


class SandboxConfig(SandboxSpec):
    """A :class:`SandboxSpec` plus the provider to create it on.

    ``provider`` and ``options`` are what ``Sandbox.create(provider=..., options=...)`` takes:
    ``None`` and ``{}`` mean the configured default (``AGENT_SANDBOX_*`` environment variables,
    ``agent-sandbox.toml``, else ``local``). Every other field is a ``SandboxSpec`` field.
    Unknown keys are an error that names the key.
    """

    provider: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    def spec(self, labels: Mapping[str, str] | None = None) -> SandboxSpec:
        """The sandbox spec, with ``labels`` added to the configured ones."""
        # Filtered after dumping: a subclass's serializer may add keys of its own.
        fields = {k: v for k, v in self.model_dump().items() if k in SandboxSpec.model_fields}
        fields["labels"] = {**self.labels, **(labels or {})}
        return SandboxSpec.model_validate(fields)

    async def create(self, labels: Mapping[str, str] | None = None) -> Sandbox:
        """Create a sandbox from this config, with ``labels`` added.

        Raises ``ConfigError``, ``ProviderNotInstalled`` and the provider's typed errors.
        """
        return await Sandbox.create(
            self.spec(labels), provider=self.provider, options=self.options or None
        )

    async def connect(self, sandbox_id: str) -> Sandbox:
        """Reattach to a sandbox of this config's provider. Raises ``SandboxNotFound``."""
        return await Sandbox.connect(
            sandbox_id, provider=self.provider, options=self.options or None
        )
