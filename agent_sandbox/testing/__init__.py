"""Testing support shipped with agent-sandbox.

- :class:`FakeBackend`: a real, in-memory provider to test agent code against (no processes,
  no network); script extra commands with :meth:`FakeBackend.register_command`.
- :class:`ConformanceSuite`: the pytest tests every provider passes. Subclass it in a test
  module and provide a ``sandbox_backend`` fixture (see ``docs/conformance.md``); mark extra
  tests with :func:`requires` to skip them where a capability is missing.
"""

from .conformance import ConformanceSuite, EgressServer, requires
from .fake import CommandContext, FakeBackend, FakeOptions

__all__ = [
    "CommandContext",
    "ConformanceSuite",
    "EgressServer",
    "FakeBackend",
    "FakeOptions",
    "requires",
]
