"""Tasks that belong to no task group of the caller (a process's reader outlives the call
that started it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

_TASKS: set[Any] = set()


def spawn(func: Callable[[], Awaitable[None]]) -> asyncio.Task[None] | None:
    """Start ``func`` as a task of the running event loop (asyncio or trio), owned by nobody;
    the asyncio task (``None`` under trio)."""
    import asyncio  # not at import time: ``import agent_sandbox`` stays light

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio  # type: ignore[import-not-found,unused-ignore]

        trio.lowlevel.spawn_system_task(func)
        return None
    task: asyncio.Task[None] = loop.create_task(func())  # type: ignore[arg-type]
    _TASKS.add(task)  # a strong reference, or the task could be collected while it runs
    task.add_done_callback(_TASKS.discard)
    return task
