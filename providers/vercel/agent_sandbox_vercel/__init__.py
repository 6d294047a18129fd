"""Vercel provider for agent-sandbox: :class:`VercelBackend` on the official ``vercel-sandbox`` SDK.

Install with ``pip install "agent-sandbox[vercel]"``; select with ``provider="vercel"``.
The SDK is imported lazily, on first use.
"""

from .backend import VercelBackend, VercelOptions

__all__ = ["VercelBackend", "VercelOptions"]
