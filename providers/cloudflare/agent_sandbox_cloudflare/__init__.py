"""Cloudflare provider for agent-sandbox: :class:`CloudflareBackend`, sandboxes as Cloudflare
Containers through the Worker in ``providers/cloudflare/worker`` (Cloudflare's sandbox bridge
plus the routes this provider needs).

Install with ``pip install "agent-sandbox[cloudflare]"``; select with ``provider="cloudflare"``.
"""

from ._api import table
from .backend import CloudflareBackend, CloudflareOptions

__all__ = ["CloudflareBackend", "CloudflareOptions", "table"]
