"""The self-hosted worker: claims agent sessions from a work queue and runs their tool calls in
sandboxes, one sandbox per session.

Sources (see :func:`open_source`): :class:`SQLiteQueue` (one host, nothing to run),
``RedisQueue`` (many hosts; ``pip install "agent-sandbox[redis]"``) and
``AnthropicEnvironment`` (a self-hosted environment of Anthropic's managed agents;
``pip install "agent-sandbox[anthropic]"``). The :class:`Worker` serves any of them; the command
is ``agent-sandbox worker --source URL``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError, ProviderNotInstalled
from .dispatcher import Worker
from .lease import LeaseKeeper, heartbeat_interval
from .metrics import WorkerMetrics, serve_metrics
from .pool import WarmPool
from .source import (
    NO_HEARTBEAT,
    Lease,
    LeaseLost,
    QueueStats,
    SessionChannel,
    SessionClosed,
    ToolCall,
    WorkItem,
    WorkNotFound,
    WorkSource,
)
from .sqlite import Session, SQLiteQueue, SQLiteSessions

if TYPE_CHECKING:
    from .anthropic_env import AnthropicEnvironment
    from .redis_queue import RedisQueue

__all__ = [
    "NO_HEARTBEAT",
    "AnthropicEnvironment",
    "Lease",
    "LeaseKeeper",
    "LeaseLost",
    "QueueStats",
    "RedisQueue",
    "SQLiteQueue",
    "SQLiteSessions",
    "Session",
    "SessionChannel",
    "SessionClosed",
    "ToolCall",
    "WarmPool",
    "WorkItem",
    "WorkNotFound",
    "WorkSource",
    "Worker",
    "WorkerMetrics",
    "heartbeat_interval",
    "open_source",
    "serve_metrics",
]


def __getattr__(name: str) -> Any:
    # The Redis and Anthropic sources import their SDKs: load them only when asked for.
    if name == "RedisQueue":
        from .redis_queue import RedisQueue

        return RedisQueue
    if name == "AnthropicEnvironment":
        from .anthropic_env import AnthropicEnvironment

        return AnthropicEnvironment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_source(url: str, *, worker_id: str | None = None) -> WorkSource:
    """The work source a URL names.

    * ``sqlite:///var/lib/agent-sandbox/queue.db`` — the path after ``sqlite://`` (absolute
      when it starts with ``/``; ``sqlite://queue.db`` is relative to the current directory);
    * ``redis://[:password@]host[:port][/db][?queue=NAME]`` (or ``rediss://``) — Redis Streams
      under the key prefix ``NAME`` (default ``agent-sandbox``);
    * ``anthropic://ENVIRONMENT_ID`` — a self-hosted environment of Anthropic's managed agents;
      the environment key comes from ``ANTHROPIC_ENVIRONMENT_KEY`` (``ANTHROPIC_BASE_URL``
      overrides the API's address).

    Raises:
        ConfigError: an unknown scheme or a malformed URL.
        ProviderNotInstalled: the source's extra is not installed (the message says which).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"work source {url!r}: expected sqlite://, redis:// or anthropic://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest:
            raise ConfigError("work source sqlite:// needs a path, e.g. sqlite:///var/lib/q.db")
        return SQLiteQueue(rest, worker_id=worker_id)
    if scheme in ("redis", "rediss"):
        query = parse_qs(urlsplit(url).query)
        queue = query.get("queue", ["agent-sandbox"])[0]
        try:
            from .redis_queue import RedisQueue
        except ImportError as exc:
            raise ProviderNotInstalled(
                f'the Redis work source needs the redis extra ({exc}): pip install "agent-sandbox[redis]"'
            ) from exc
        return RedisQueue(url, queue=queue, worker_id=worker_id)
    if scheme == "anthropic":
        environment = rest.strip("/")
        if not environment or "/" in environment:
            raise ConfigError(f"work source {url!r}: expected anthropic://ENVIRONMENT_ID")
        key = os.environ.get("ANTHROPIC_ENVIRONMENT_KEY")
        if not key:
            raise ConfigError(
                "work source anthropic://: set ANTHROPIC_ENVIRONMENT_KEY to the environment key"
            )
        try:
            from .anthropic_env import AnthropicEnvironment
        except ImportError as exc:
            raise ProviderNotInstalled(
                "the Anthropic work source needs the anthropic extra "
                f'({exc}): pip install "agent-sandbox[anthropic]"'
            ) from exc
        return AnthropicEnvironment(environment, environment_key=key, worker_id=worker_id)
    raise ConfigError(
        f"work source {url!r}: unknown scheme {scheme!r}; expected sqlite, redis or anthropic"
    )
