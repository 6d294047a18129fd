"""E2B provider for agent-sandbox: :class:`E2BBackend` on the official ``e2b`` SDK.

Install with ``pip install "agent-sandbox[e2b]"``; select with ``provider="e2b"``.
The SDK is imported on first use, in a worker thread.
"""

from .backend import E2BBackend, E2BOptions

__all__ = ["E2BBackend", "E2BOptions"]
