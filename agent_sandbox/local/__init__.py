"""The embedded default provider: sandboxes on this host, jailed with bubblewrap when present.

See :class:`LocalBackend` and ``docs/providers/local.md``.
"""

from .backend import LocalBackend, LocalOptions, default_root

__all__ = ["LocalBackend", "LocalOptions", "default_root"]
