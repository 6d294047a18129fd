"""Testing support shipped with agent-sandbox.

- :class:`FakeBackend`: a real, in-memory provider to test agent code against (no processes,
  no network); script extra commands with :meth:`FakeBackend.register_command`. Needs nothing
  beyond agent-sandbox itself.
- :class:`ConformanceSuite`: the pytest tests every provider passes. Subclass it in a test
  module and provide a ``sandbox_backend`` fixture (see ``docs/conformance.md``); mark extra
  tests with :func:`requires` to skip them where a capability is missing. These need pytest,
  and the suite's plugin enabled: ``pytest -p agent_sandbox.testing.plugin``, or
  ``pytest_plugins = ["agent_sandbox.testing.plugin"]`` in a ``conftest.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .fake import CommandContext, FakeBackend, FakeOptions

if TYPE_CHECKING:
    from .conformance import ConformanceSuite, EgressServer, requires

_NEED_PYTEST = {"ConformanceSuite", "EgressServer", "requires"}

__all__ = [
    "CommandContext",
    "ConformanceSuite",
    "EgressServer",
    "FakeBackend",
    "FakeOptions",
    "requires",
]


def __getattr__(name: str) -> Any:
    """The conformance suite's names, imported on first use (they import pytest)."""
    if name in _NEED_PYTEST:
        return getattr(importlib.import_module(".conformance", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
