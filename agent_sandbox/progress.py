"""Progress of a slow provider step (an image pull, a build), for whoever shows it to a person.

A provider calls :func:`report` as such a step advances; a program that shows progress wraps its
call in :func:`listening`. With no one listening a report costs a context-variable lookup. The
listener travels in a context variable, so it follows the call into worker threads (anyio copies
the context into them) and stays with the task that asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """Where a step stands."""

    what: str
    """What is happening, for a person: ``"pulling python:3.12-slim"``."""
    done: int | None = None
    """Bytes done so far, when counted."""
    total: int | None = None
    """Bytes expected in all, when known."""


Listener = Callable[[Step], None]

_listener: ContextVar[Listener | None] = ContextVar("agent_sandbox_progress", default=None)


def report(what: str, done: int | None = None, total: int | None = None) -> None:
    """Tell the listener, if any, where a step stands. Called by providers; never raises."""
    listener = _listener.get()
    if listener is not None:
        listener(Step(what, done, total))


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the :func:`report` calls made inside the block (and the threads it starts) to
    ``listener``. The listener may be called from a worker thread."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
