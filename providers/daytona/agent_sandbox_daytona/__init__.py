"""Daytona provider for agent-sandbox: a thin translation onto the official ``daytona`` SDK.

The SDK is imported lazily (it costs about a second to import), so ``import agent_sandbox_daytona``
stays cheap until a backend is used. See ``docs/providers/daytona.md`` for what maps to what.
"""

from __future__ import annotations

from .backend import DaytonaBackend, DaytonaOptions

__all__ = ["DaytonaBackend", "DaytonaOptions"]
