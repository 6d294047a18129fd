"""Retrying what the provider says may succeed if simply tried again (``SandboxError.retryable``)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from .errors import SandboxError

T = TypeVar("T")


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 3,
    backoff: float = 0.5,
    max_backoff: float = 8.0,
) -> T:
    """``await call()``, again after a retryable ``SandboxError`` (at most ``attempts`` times in
    all), waiting ``backoff`` seconds doubled each time (capped, with jitter) in between.

    A non-retryable error, or the last attempt's, is raised as it is. For a create, make the
    call idempotent first (the vendor's idempotency key, or a name looked up before creating
    again), or a retry may leave a second sandbox behind.
    """
    attempt = 1
    while True:
        try:
            return await call()
        except SandboxError as exc:
            if not exc.retryable or attempt >= attempts:
                raise
        delay = min(max_backoff, backoff * 2 ** (attempt - 1))
        await anyio.sleep(delay * random.uniform(0.5, 1.0))
        attempt += 1
