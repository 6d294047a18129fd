"""Ending what a test left in a local provider's root."""

from __future__ import annotations

from pathlib import Path

import anyio.from_thread

from agent_sandbox.local import LocalBackend, LocalOptions


def end_sandboxes(root: Path) -> None:
    """End every sandbox left in the local root ``root`` as ``destroy`` ends one (its processes
    killed, its cgroups removed, its uid freed, its directory deleted), and every destroy cut
    short. Callable from sync and async tests alike."""
    if root.exists():
        ids = [entry.name for entry in root.iterdir() if entry.name.startswith("loc-")]
        # In a thread of its own: the test's event loop may still be open.
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(_end_sandboxes, root, ids)


async def _end_sandboxes(root: Path, ids: list[str]) -> None:
    backend = LocalBackend(LocalOptions(root=root, isolation="none"))
    try:
        for sandbox_id in ids:
            await backend.destroy(sandbox_id)
        await backend.sweep()  # the destroys cut short (moved aside, not finished)
    finally:
        await backend.aclose()
