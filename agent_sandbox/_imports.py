"""Importing a vendor SDK off the event loop (some take a second or more to import)."""

from __future__ import annotations

import importlib
from types import ModuleType

import anyio.to_thread

_loaded: set[str] = set()


async def import_in_thread(*modules: str) -> ModuleType:
    """The first of ``modules``, all of them imported in a worker thread the first time."""
    if not _loaded.issuperset(modules):
        await anyio.to_thread.run_sync(lambda: [importlib.import_module(m) for m in modules])
        _loaded.update(modules)
    return importlib.import_module(modules[0])
