"""The Redis Streams work queue: workers on many hosts share one Redis.

Keys live under a prefix (the queue name, default ``agent-sandbox``):

* ``{q}:work`` — a stream of queued work items, read by the consumer group ``workers``
  (``XREADGROUP`` blocks for new ones; ``XAUTOCLAIM`` hands out again those polled but never
  acknowledged); an acknowledged item's entry is removed.
* ``{q}:item:{id}`` — an item's state, attempt, lease (``last_heartbeat``, expiry); ``{q}:leases``
  — held items by lease expiry, so a poll puts expired ones back in the queue.
* ``{q}:session:{id}``, ``{q}:calls:{id}`` (a stream of the session's calls, and a close marker),
  ``{q}:answers:{id}``, ``{q}:started:{id}``, and ``{q}:reply:{call}`` (a list the caller waits on
  with ``BLPOP``).

Every step that reads and then writes (claim, ack, heartbeat's compare-and-swap, stop, answer)
is one Lua script, so it is atomic; times are the Redis server's, so the hosts' clocks do not
matter. A closed session's keys expire after a day.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
except ImportError as exc:  # pragma: no cover - depends on the environment
    from ..errors import ProviderNotInstalled

    raise ProviderNotInstalled(
        f'the Redis work source needs the redis extra ({exc}): pip install "agent-sandbox[redis]"'
    ) from exc

from ..errors import ConfigError, OperationTimeout, ProviderError, ProviderUnavailable
from ..tools import ToolResult
from .source import (
    Lease,
    LeaseLost,
    QueueStats,
    SessionChannel,
    SessionClosed,
    ToolCall,
    WorkItem,
    WorkNotFound,
    WorkState,
)
from .sqlite import DEFAULT_LEASE_TTL, DEFAULT_RECLAIM_MS, MAX_LEASE_TTL, MIN_LEASE_TTL, Session

__all__ = ["RedisQueue", "RedisSessions"]

T = TypeVar("T")
GROUP = "workers"
RETENTION_SECONDS = 86_400
POLLING_WINDOW_MS = 30_000
SOCKET_TIMEOUT = 30.0

# Shared Lua helpers: the server's time in milliseconds, and queueing an item.
_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function queue_item(p, item, session, attempt, now, ttl)
  local key = p .. ':item:' .. item
  local entry = redis.call('XADD', p .. ':work', '*', 'item', item)
  redis.call('HSET', key, 'session', session, 'state', 'queued', 'attempt', attempt,
    'queued_at', now, 'ttl', ttl, 'entry', entry)
  redis.call('HDEL', key, 'polled_at', 'last_heartbeat', 'lease_expires')
  redis.call('HSET', p .. ':session:' .. session, 'item', item)
end
"""

# KEYS: none. ARGV: prefix, consumer. Puts expired leases back in the queue.
_REQUEUE = (
    _LIB
    + """
local p = ARGV[1]
local now = now_ms()
redis.call('ZADD', p .. ':pollers', now, ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', p .. ':leases', '-inf', now)
for _, item in ipairs(expired) do
  redis.call('ZREM', p .. ':leases', item)
  local key = p .. ':item:' .. item
  local state = redis.call('HGET', key, 'state')
  if state == 'starting' or state == 'active' or state == 'stopping' then
    local h = redis.call('HMGET', key, 'session', 'attempt', 'ttl')
    queue_item(p, item, h[1], tonumber(h[2]) + 1, now, h[3])
  end
end
return now
"""
)

# ARGV: prefix, item, entry. Marks a delivered entry polled; false if the item is not queued.
_CLAIM = (
    _LIB
    + """
local p = ARGV[1]
local key = p .. ':item:' .. ARGV[2]
local h = redis.call('HMGET', key, 'state', 'entry', 'session', 'attempt')
if h[1] ~= 'queued' or h[2] ~= ARGV[3] then
  redis.call('XACK', p .. ':work', 'workers', ARGV[3])
  redis.call('XDEL', p .. ':work', ARGV[3])
  return false
end
redis.call('HSET', key, 'polled_at', now_ms())
local meta = redis.call('HGET', p .. ':session:' .. h[3], 'metadata') or '{}'
return {h[3], h[4], meta}
"""
)

# ARGV: prefix, item.
_ACK = (
    _LIB
    + """
local p = ARGV[1]
local key = p .. ':item:' .. ARGV[2]
local h = redis.call('HMGET', key, 'state', 'entry', 'ttl')
if not h[1] then return 'missing' end
if h[1] == 'queued' then
  local now = now_ms()
  local expires = now + math.floor(tonumber(h[3]) * 1000)
  redis.call('HSET', key, 'state', 'starting', 'acked_at', now, 'lease_expires', expires)
  redis.call('ZADD', p .. ':leases', expires, ARGV[2])
  redis.call('XACK', p .. ':work', 'workers', h[2])
  redis.call('XDEL', p .. ':work', h[2])
end
return h[1]
"""
)

# ARGV: prefix, item, expected, desired ttl ('' for none).
_HEARTBEAT = (
    _LIB
    + """
local p = ARGV[1]
local key = p .. ':item:' .. ARGV[2]
local h = redis.call('HMGET', key, 'state', 'last_heartbeat', 'ttl', 'lease_expires')
if not h[1] then return {'missing'} end
local current = h[2] or 'NO_HEARTBEAT'
if h[1] == 'stopping' or h[1] == 'stopped' then return {'ok', current, '0', h[1], h[3]} end
if h[1] == 'queued' or current ~= ARGV[3] then return {'conflict', current, h[1]} end
local now = now_ms()
local ttl = h[3]
if ARGV[4] ~= '' then ttl = ARGV[4] end
local token = now * 1000
if h[2] and tonumber(h[2]) and token <= tonumber(h[2]) then token = tonumber(h[2]) + 1 end
token = string.format('%.0f', token)
local expires = now + math.floor(tonumber(ttl) * 1000)
redis.call('HSET', key, 'state', 'active', 'last_heartbeat', token, 'ttl', ttl,
  'lease_expires', expires)
redis.call('ZADD', p .. ':leases', expires, ARGV[2])
return {'ok', token, '1', 'active', ttl}
"""
)

# ARGV: prefix, item, force ('1'/'0'), new item id, default ttl.
_STOP = (
    _LIB
    + """
local p = ARGV[1]
local key = p .. ':item:' .. ARGV[2]
local h = redis.call('HMGET', key, 'state', 'session', 'attempt', 'entry')
if not h[1] then return 'missing' end
if h[1] == 'stopped' then return 'stopped' end
local held = h[1] == 'starting' or h[1] == 'active' or h[1] == 'stopping'
if ARGV[3] == '0' and held then
  redis.call('HSET', key, 'state', 'stopping')
  return 'stopping'
end
local now = now_ms()
redis.call('HSET', key, 'state', 'stopped', 'stopped_at', now)
redis.call('ZREM', p .. ':leases', ARGV[2])
if h[1] == 'queued' then
  redis.call('XACK', p .. ':work', 'workers', h[4])
  redis.call('XDEL', p .. ':work', h[4])
end
redis.call('EXPIRE', key, 86400)
if redis.call('HGET', p .. ':session:' .. h[2], 'state') == 'open' then
  queue_item(p, ARGV[4], h[2], tonumber(h[3]) + 1, now, ARGV[5])
end
return 'stopped'
"""
)

# ARGV: prefix, item, attempt, session, cursor ('-' for the start). The session's first
# unanswered call after the cursor, in one round trip: {'lost'}, {'closed'},
# {'call', cursor, entry, call, name, input, started_by} or {'none', cursor, last entry}.
_NEXT = """
local p = ARGV[1]
local h = redis.call('HMGET', p .. ':item:' .. ARGV[2], 'state', 'attempt')
if h[2] ~= ARGV[3] or not (h[1] == 'starting' or h[1] == 'active' or h[1] == 'stopping') then
  return {'lost'}
end
if redis.call('HGET', p .. ':session:' .. ARGV[4], 'state') ~= 'open' then return {'closed'} end
local calls = p .. ':calls:' .. ARGV[4]
local answers = p .. ':answers:' .. ARGV[4]
local cursor = ARGV[5]
local last = cursor
while true do
  local start = '-'
  if cursor ~= '-' then start = '(' .. cursor end
  local entries = redis.call('XRANGE', calls, start, '+', 'COUNT', 100)
  if #entries == 0 then
    if last == '-' then last = '0-0' end
    return {'none', cursor, last}
  end
  for _, entry in ipairs(entries) do
    local fields = {}
    for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
    if fields['close'] then return {'closed'} end
    if redis.call('HEXISTS', answers, fields['call']) == 0 then
      local started = redis.call('HGET', p .. ':started:' .. ARGV[4], fields['call']) or ''
      return {'call', cursor, entry[1], fields['call'], fields['name'], fields['input'], started}
    end
    cursor = entry[1]
    last = cursor
  end
end
"""

# ARGV: prefix, item, attempt, session, call, answer json. 1 when recorded: the item is held at
# that attempt (the fence) and the call had no answer yet.
_POST = """
local h = redis.call('HMGET', ARGV[1] .. ':item:' .. ARGV[2], 'state', 'attempt')
if h[2] ~= ARGV[3] or not (h[1] == 'starting' or h[1] == 'active' or h[1] == 'stopping') then
  return 0
end
if redis.call('HSETNX', ARGV[1] .. ':answers:' .. ARGV[4], ARGV[5], ARGV[6]) == 0 then
  return 0
end
local reply = ARGV[1] .. ':reply:' .. ARGV[5]
redis.call('RPUSH', reply, ARGV[6])
redis.call('EXPIRE', reply, 86400)
return 1
"""

# ARGV: prefix, session, metadata json, item, ttl.
_CREATE = (
    _LIB
    + """
local p = ARGV[1]
local now = now_ms()
redis.call('HSET', p .. ':session:' .. ARGV[2], 'state', 'open', 'metadata', ARGV[3],
  'created_at', now)
queue_item(p, ARGV[4], ARGV[2], 1, now, ARGV[5])
return 1
"""
)

# ARGV: prefix, session, call, name, input.
_CALL = """
local state = redis.call('HGET', ARGV[1] .. ':session:' .. ARGV[2], 'state')
if not state then return 'missing' end
if state ~= 'open' then return 'closed' end
redis.call('XADD', ARGV[1] .. ':calls:' .. ARGV[2], '*', 'call', ARGV[3], 'name', ARGV[4],
  'input', ARGV[5])
return 'ok'
"""

# ARGV: prefix, session.
_CLOSE = """
local p = ARGV[1]
local skey = p .. ':session:' .. ARGV[2]
local state = redis.call('HGET', skey, 'state')
if not state then return 'missing' end
if state == 'open' then
  redis.call('HSET', skey, 'state', 'closed')
  local item = redis.call('HGET', skey, 'item')
  if item then
    local key = p .. ':item:' .. item
    local h = redis.call('HMGET', key, 'state', 'entry')
    if h[1] == 'queued' then
      redis.call('HSET', key, 'state', 'stopped')
      redis.call('XACK', p .. ':work', 'workers', h[2])
      redis.call('XDEL', p .. ':work', h[2])
      redis.call('EXPIRE', key, 86400)
    end
  end
  redis.call('XADD', p .. ':calls:' .. ARGV[2], '*', 'close', '1')
end
for _, suffix in ipairs({':session:', ':calls:', ':answers:', ':started:'}) do
  redis.call('EXPIRE', p .. suffix .. ARGV[2], 86400)
end
return 'ok'
"""


def _clamp_ttl(value: float | None) -> str:
    if value is None:
        return ""
    return repr(min(max(float(value), MIN_LEASE_TTL), MAX_LEASE_TTL))


def _public_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _without_queue(url: str) -> str:
    """``url`` less its ``queue`` parameter (ours, not a connection option of redis-py)."""
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "queue"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class RedisQueue:
    """A :class:`~agent_sandbox.worker.WorkSource` on Redis Streams (Redis 6.2 or later).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS).
        queue: the key prefix; queues with different names share nothing.
        worker_id: this worker's consumer name (default: random).
        max_connections: connections kept at most; beyond that a command waits for a free one
            (each waiting ``call_tool`` and each blocked poll holds one).

    :attr:`sessions` is the agent-loop side on the same Redis.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str = "agent-sandbox",
        worker_id: str | None = None,
        max_connections: int = 512,
    ) -> None:
        if not queue or any(c in queue for c in " {}"):
            raise ConfigError(f"Redis queue name {queue!r}: use letters, digits, '-', '_', ':'")
        self.prefix = queue
        self.url = _public_url(url)
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        try:
            # Typed loosely: redis-py's reply types depend on the RESP version and
            # decode_responses, and this module decodes every reply itself.
            pool = aioredis.BlockingConnectionPool.from_url(
                _without_queue(url),
                decode_responses=True,
                max_connections=max_connections,
                timeout=None,
                # longer than every blocking read here (BLPOP waits at most 5 s)
                socket_timeout=SOCKET_TIMEOUT,
            )
            self.redis: Any = aioredis.Redis(connection_pool=pool)
        except ValueError as exc:
            raise ConfigError(f"Redis URL {self.url!r}: {exc}") from exc
        self._scripts = {
            name: self.redis.register_script(code)
            for name, code in {
                "requeue": _REQUEUE,
                "claim": _CLAIM,
                "ack": _ACK,
                "heartbeat": _HEARTBEAT,
                "stop": _STOP,
                "next": _NEXT,
                "post": _POST,
                "create": _CREATE,
                "call": _CALL,
                "close": _CLOSE,
            }.items()
        }
        self._group_ready = False
        self.sessions = RedisSessions(self)

    async def _do(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise ProviderUnavailable(f"Redis queue {self.url}: {exc}", retryable=True) from exc
        except redis_errors.RedisError as exc:
            raise ProviderError(f"Redis queue {self.url}: {exc}") from exc

    async def script(self, name: str, *args: Any) -> Any:
        """Run one of the queue's Lua scripts with ``ARGV = (prefix, *args)``."""
        return await self._do(self._scripts[name](keys=[], args=[self.prefix, *args]))

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._do(
                self.redis.xgroup_create(f"{self.prefix}:work", GROUP, id="0", mkstream=True)
            )
        except ProviderError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- the work-queue contract ---------------------------------------------------------

    async def poll(
        self, *, block_ms: int = 999, reclaim_older_than_ms: int | None = None
    ) -> WorkItem | None:
        """Claim the next queued item, waiting up to ``block_ms`` (1-999) for one."""
        if not 1 <= block_ms <= 999:
            raise ConfigError(f"block_ms must be between 1 and 999, got {block_ms}")
        reclaim = DEFAULT_RECLAIM_MS if reclaim_older_than_ms is None else reclaim_older_than_ms
        await self._ensure_group()
        stream = f"{self.prefix}:work"
        deadline = anyio.current_time() + block_ms / 1000
        await self.script("requeue", self.worker_id)
        while True:
            _, claimed, *_ = await self._do(
                self.redis.xautoclaim(
                    stream, GROUP, self.worker_id, min_idle_time=reclaim, start_id="0-0", count=1
                )
            )
            entries = claimed
            if not entries:
                left_ms = int((deadline - anyio.current_time()) * 1000)
                if left_ms <= 0:
                    return None
                reply = await self._do(
                    self.redis.xreadgroup(
                        GROUP, self.worker_id, {stream: ">"}, count=1, block=left_ms
                    )
                )
                entries = reply[0][1] if reply else []
                if not entries:
                    return None
            entry_id, fields = entries[0]
            item_id = fields.get("item", "")
            got = await self.script("claim", item_id, entry_id)
            if got:
                session_id, attempt, meta = got
                return WorkItem(
                    id=item_id,
                    session_id=session_id,
                    attempt=int(attempt),
                    metadata=json.loads(meta),
                )
            if anyio.current_time() >= deadline:
                return None

    async def ack(self, item_id: str) -> None:
        """Acknowledge a polled item (idempotent while it is held)."""
        if await self.script("ack", item_id) == "missing":
            raise WorkNotFound(f"no work item {item_id!r}", op="ack")

    async def heartbeat(
        self,
        item_id: str,
        *,
        expected_last_heartbeat: str,
        desired_ttl_seconds: float | None = None,
    ) -> Lease:
        """Take or extend the lease (compare-and-swap in a Lua script); raises :class:`LeaseLost`."""
        reply = await self.script(
            "heartbeat", item_id, expected_last_heartbeat, _clamp_ttl(desired_ttl_seconds)
        )
        if reply[0] == "missing":
            raise WorkNotFound(f"no work item {item_id!r}", op="heartbeat")
        if reply[0] == "conflict":
            raise LeaseLost(
                f"work item {item_id}: lease held elsewhere (state {reply[2]}, "
                f"last heartbeat {reply[1]!r}, expected {expected_last_heartbeat!r})",
                op="heartbeat",
            )
        _, token, extended, state, ttl = reply
        work_state: WorkState = state
        return Lease(token, extended == "1", work_state, float(ttl))

    async def stop(self, item_id: str, *, force: bool = False) -> None:
        """Stop an item; a forced stop of an open session's item queues a new one for it."""
        reply = await self.script(
            "stop", item_id, "1" if force else "0", "work_" + uuid.uuid4().hex, DEFAULT_LEASE_TTL
        )
        if reply == "missing":
            raise WorkNotFound(f"no work item {item_id!r}", op="stop")

    async def stats(self) -> QueueStats:
        """Depth (never delivered), pending (delivered, not acknowledged), oldest, pollers."""
        await self._ensure_group()
        stream = f"{self.prefix}:work"

        async def gather() -> QueueStats:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xlen(stream)
            pipe.xpending(stream, GROUP)
            pipe.xrange(stream, count=1)
            pipe.time()
            length, pending, first, (secs, micros) = await pipe.execute()
            now_ms = secs * 1000 + micros // 1000
            polling = await self.redis.zcount(
                f"{self.prefix}:pollers", now_ms - POLLING_WINDOW_MS, "+inf"
            )
            waiting = int(pending["pending"])
            oldest = None
            if first:
                oldest = datetime.fromtimestamp(int(first[0][0].split("-")[0]) / 1000, timezone.utc)
            return QueueStats(max(length - waiting, 0), waiting, oldest, int(polling))

        return await self._do(gather())

    def channel(self, item: WorkItem, *, owns: Callable[[str], bool]) -> SessionChannel:
        """The tool calls of ``item``'s session (every tool name is this worker's to answer)."""
        return _RedisChannel(self, item)

    async def aclose(self) -> None:
        """Close the connections."""
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()


class _RedisChannel:
    def __init__(self, queue: RedisQueue, item: WorkItem) -> None:
        self._queue = queue
        self._item = item
        self._holder = f"{item.id}#{item.attempt}"
        self._cursor = "-"  # every call up to this entry is answered
        p, sid = queue.prefix, item.session_id
        self._calls, self._started = f"{p}:calls:{sid}", f"{p}:started:{sid}"

    async def next_call(self) -> ToolCall | None:
        """The oldest unanswered call; None at the session's close marker."""
        item = self._item
        while True:
            reply = await self._queue.script(
                "next", item.id, str(item.attempt), item.session_id, self._cursor
            )
            if reply[0] == "lost":
                raise LeaseLost(
                    f"work item {item.id} (attempt {item.attempt}) is no longer held by this "
                    "worker",
                    op="next_call",
                )
            if reply[0] == "closed":
                return None
            self._cursor = reply[1]
            if reply[0] == "call":
                _, _, entry_id, call_id, name, raw, started_by = reply
                return ToolCall(
                    id=call_id,
                    name=name,
                    input=json.loads(raw),
                    interrupted=bool(started_by) and started_by != self._holder,
                    handle=entry_id,
                )
            await self._queue._do(
                self._queue.redis.xread({self._calls: reply[2]}, count=1, block=1000)
            )

    async def started(self, call: ToolCall) -> None:
        """Mark ``call`` as running under this worker's attempt."""
        await self._queue._do(self._queue.redis.hset(self._started, call.id, self._holder))

    async def post_result(self, call: ToolCall, content: str, *, is_error: bool) -> bool:
        """Answer ``call`` once; refused when answered already or the lease moved on."""
        answer = json.dumps({"content": content, "is_error": is_error})
        posted = await self._queue.script(
            "post", self._item.id, str(self._item.attempt), self._item.session_id, call.id, answer
        )
        if posted:
            self._cursor = str(call.handle)
        return bool(posted)

    async def aclose(self) -> None:
        """Nothing to release: the channel uses the queue's connections."""


class RedisSessions:
    """The agent-loop side of a :class:`RedisQueue`: open sessions and call their tools."""

    def __init__(self, queue: RedisQueue) -> None:
        self._queue = queue

    async def create(self, *, metadata: Mapping[str, str] | None = None) -> Session:
        """Open a session and queue a work item for it; a worker will claim it."""
        session_id = "sess_" + uuid.uuid4().hex
        meta = json.dumps({str(k): str(v) for k, v in (metadata or {}).items()})
        await self._queue._ensure_group()
        await self._queue.script(
            "create", session_id, meta, "work_" + uuid.uuid4().hex, DEFAULT_LEASE_TTL
        )
        return Session(session_id)

    async def call_tool(
        self,
        session: Session | str,
        name: str,
        input: Mapping[str, Any],
        *,
        call_id: str | None = None,
        timeout: float | None = None,
    ) -> ToolResult:
        """Queue a tool call in the session and wait for its result (see
        :meth:`SQLiteSessions.call_tool`)."""
        session_id = session.id if isinstance(session, Session) else session
        cid = call_id or "call_" + uuid.uuid4().hex
        status = await self._queue.script("call", session_id, cid, name, json.dumps(dict(input)))
        if status == "missing":
            raise WorkNotFound(f"no session {session_id!r}", op="call_tool")
        if status == "closed":
            raise SessionClosed(f"session {session_id} is closed", op="call_tool")
        reply_key = f"{self._queue.prefix}:reply:{cid}"
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            wait = 5.0 if deadline is None else min(5.0, deadline - anyio.current_time())
            if wait <= 0:
                raise OperationTimeout(
                    f"tool call {cid} in session {session_id}: no answer within {timeout} s",
                    op="call_tool",
                )
            got = await self._queue._do(
                self._queue.redis.blpop([reply_key], timeout=max(wait, 0.01))
            )
            if got:
                await self._queue._do(self._queue.redis.delete(reply_key))
                answer = json.loads(got[1])
                return ToolResult(answer["content"], is_error=bool(answer["is_error"]))

    async def close(self, session: Session | str) -> None:
        """Close the session: its worker ends it and destroys its sandbox. Idempotent."""
        session_id = session.id if isinstance(session, Session) else session
        if await self._queue.script("close", session_id) == "missing":
            raise WorkNotFound(f"no session {session_id!r}", op="close")
