"""E2B provider for agent-sandbox: :class:`E2BBackend` on the official ``e2b`` SDK.

Install with ``pip install "agent-sandbox[e2b]"``; select with ``provider="e2b"``.
The SDK is imported lazily, on first use.
"""

from .backend import E2BBackend, E2BOptions, translate

__all__ = ["E2BBackend", "E2BOptions", "translate"]
