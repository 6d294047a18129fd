"""Anthropic managed-agents environments as a work source, through the official ``anthropic`` SDK.

A *self-hosted environment* of Anthropic's managed agents queues a work item whenever one of its
sessions needs a sandbox. :class:`AnthropicEnvironment` claims them with the SDK's
``client.beta.environments.work`` (poll, ack, heartbeat, stop, stats) and serves the session's
``agent.tool_use`` events, read from ``client.beta.sessions.events`` (live stream, reconciled
with the event list after every connect), by sending ``user.tool_result`` events back.

As in the SDK's own environment worker: poll and ack use the environment key; the work item's
``secret`` carries a sessions token that authenticates that item's heartbeats, stop and session
calls (the environment key otherwise); a call the server gated behind a confirmation runs only
after a ``user.tool_confirmation`` that allows it, never on ``deny``; an
``agent.custom_tool_use`` whose name this worker does not own is left for its owner; the session
ends on ``session.status_terminated`` / ``session.deleted`` or after ``max_idle`` seconds idle
with a stop reason other than ``requires_action``.

In-flight calls: the control plane keeps no record of a call being started, so a worker that
reclaims the session after a crash runs every unanswered call again (the SDK worker's
semantics), in a fresh sandbox.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, NoReturn

import anyio

try:
    import anthropic
    from anthropic import AsyncAnthropic
except ImportError as exc:  # pragma: no cover - depends on the environment
    from ..errors import ProviderNotInstalled

    raise ProviderNotInstalled(
        f'the Anthropic work source needs the anthropic extra ({exc}): pip install "agent-sandbox[anthropic]"'
    ) from exc

from ..errors import (
    AuthenticationError,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from .source import (
    Lease,
    LeaseLost,
    QueueStats,
    SessionChannel,
    ToolCall,
    WorkItem,
    WorkNotFound,
    WorkState,
)

__all__ = ["AnthropicEnvironment"]

log = logging.getLogger("agent_sandbox.worker")

PROVIDER = "anthropic"
DEFAULT_MAX_IDLE = 60.0
STREAM_BACKOFF_CAP = 10.0
TOOL_USE_TYPES = ("agent.tool_use", "agent.custom_tool_use")


def _raise(exc: Exception, op: str) -> NoReturn:
    """Translate an SDK exception into the SandboxError family."""
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        message = f"Anthropic {op}: HTTP {status}: {exc.message}"
        if status == 412:
            raise LeaseLost(message, provider=PROVIDER, op=op) from exc
        if status in (401, 403):
            raise AuthenticationError(message, provider=PROVIDER, op=op) from exc
        if status == 404:
            raise WorkNotFound(message, provider=PROVIDER, op=op) from exc
        if status == 429:
            raise RateLimited(message, provider=PROVIDER, op=op) from exc
        raise ProviderError(message, provider=PROVIDER, op=op, retryable=status >= 500) from exc
    if isinstance(exc, anthropic.APIConnectionError):  # includes timeouts
        raise ProviderUnavailable(
            f"Anthropic {op}: {exc}", provider=PROVIDER, op=op, retryable=True
        ) from exc
    raise ProviderError(f"Anthropic {op}: {exc}", provider=PROVIDER, op=op) from exc


def sessions_token(secret: str | None) -> str | None:
    """The sessions token inside a work item's ``secret`` (URL-safe base64 JSON), if any."""
    if not secret:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))
    except (ValueError, TypeError):
        return None
    token = payload.get("sessions_token") if isinstance(payload, dict) else None
    return token if isinstance(token, str) and token else None


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class AnthropicEnvironment:
    """A self-hosted environment of Anthropic's managed agents, as a :class:`WorkSource`.

    Args:
        environment_id: the environment (``env_...``).
        environment_key: the environment key (sent as a Bearer token).
        worker_id: sent with each poll, so the console counts polling workers.
        base_url: the API's address (default: the SDK's, or ``ANTHROPIC_BASE_URL``).
        max_idle: seconds a session may stay idle (stop reason other than
            ``requires_action``) before the worker lets it go.
        client: an ``AsyncAnthropic`` to copy settings from (its credential is replaced).
    """

    def __init__(
        self,
        environment_id: str,
        *,
        environment_key: str,
        worker_id: str | None = None,
        base_url: str | None = None,
        max_idle: float | None = DEFAULT_MAX_IDLE,
        client: AsyncAnthropic | None = None,
    ) -> None:
        if not environment_key:
            raise AuthenticationError("the environment key is empty", provider=PROVIDER)
        self.environment_id = environment_id
        self.url = f"anthropic://{environment_id}"
        self.worker_id = worker_id
        self.max_idle = max_idle
        if client is None:
            self._client = AsyncAnthropic(auth_token=environment_key, base_url=base_url)
        else:
            self._client = client.copy(auth_token=environment_key, base_url=base_url)
        self._item_clients: dict[str, AsyncAnthropic] = {}

    def _for_item(self, item_id: str) -> AsyncAnthropic:
        return self._item_clients.get(item_id, self._client)

    async def poll(
        self, *, block_ms: int = 999, reclaim_older_than_ms: int | None = None
    ) -> WorkItem | None:
        """Long-poll the environment's queue (``block_ms`` 1-999)."""
        kwargs: dict[str, Any] = {"block_ms": block_ms}
        if reclaim_older_than_ms is not None:
            kwargs["reclaim_older_than_ms"] = reclaim_older_than_ms
        if self.worker_id:
            kwargs["anthropic_worker_id"] = self.worker_id
        try:
            work = await self._client.beta.environments.work.poll(self.environment_id, **kwargs)
        except Exception as exc:
            _raise(exc, "poll")
        if work is None:
            return None
        token = sessions_token(work.secret)
        if token is not None:
            self._item_clients[work.id] = self._client.copy(auth_token=token)
        data: Any = work.data
        return WorkItem(
            id=work.id,
            session_id=str(getattr(data, "id", "")),
            kind=str(getattr(data, "type", "session")),
            state=work.state,
            metadata=dict(work.metadata or {}),
            secret=work.secret,
        )

    async def ack(self, item_id: str) -> None:
        """Acknowledge a polled item."""
        try:
            await self._client.beta.environments.work.ack(
                item_id, environment_id=self.environment_id
            )
        except Exception as exc:
            _raise(exc, "ack")

    async def heartbeat(
        self,
        item_id: str,
        *,
        expected_last_heartbeat: str,
        desired_ttl_seconds: float | None = None,
    ) -> Lease:
        """Heartbeat the item's lease; a 412 (stale expectation) raises :class:`LeaseLost`."""
        kwargs: dict[str, Any] = {"expected_last_heartbeat": expected_last_heartbeat}
        if desired_ttl_seconds is not None:
            kwargs["desired_ttl_seconds"] = max(int(desired_ttl_seconds), 1)
        try:
            reply = await self._for_item(item_id).beta.environments.work.heartbeat(
                item_id, environment_id=self.environment_id, **kwargs
            )
        except Exception as exc:
            _raise(exc, "heartbeat")
        state: WorkState = reply.state
        return Lease(reply.last_heartbeat, reply.lease_extended, state, float(reply.ttl_seconds))

    async def stop(self, item_id: str, *, force: bool = False) -> None:
        """Stop the item (a 409, already stopped, is not an error)."""
        try:
            await self._for_item(item_id).beta.environments.work.stop(
                item_id, environment_id=self.environment_id, force=force
            )
        except anthropic.APIStatusError as exc:
            if exc.status_code != 409:
                _raise(exc, "stop")
        except Exception as exc:
            _raise(exc, "stop")
        if force:
            self._item_clients.pop(item_id, None)

    async def stats(self) -> QueueStats:
        """The environment queue's depth, pending count, oldest item and polling workers."""
        try:
            stats = await self._client.beta.environments.work.stats(self.environment_id)
        except Exception as exc:
            _raise(exc, "stats")
        return QueueStats(
            depth=stats.depth,
            pending=stats.pending,
            oldest_queued_at=_when(stats.oldest_queued_at),
            workers_polling=stats.workers_polling,
        )

    def channel(self, item: WorkItem, *, owns: Callable[[str], bool]) -> SessionChannel:
        """The session's tool calls from its event stream; results go back as events."""
        return _SessionEvents(self._for_item(item.id), item.session_id, owns, self.max_idle)

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        for client in self._item_clients.values():
            await client.close()
        await self._client.close()


class _SessionEvents:
    """One session's tool calls, from its event stream, in order; answers as events."""

    def __init__(
        self,
        client: AsyncAnthropic,
        session_id: str,
        owns: Callable[[str], bool],
        max_idle: float | None,
    ) -> None:
        self._events = client.beta.sessions.events
        self._session_id = session_id
        self._owns = owns
        self._max_idle = max_idle
        self._ready: deque[ToolCall] = deque()
        self._seen: set[str] = set()
        self._answered: set[str] = set()
        self._verdicts: dict[str, str] = {}
        self._held: dict[str, Any] = {}
        self._ended = False
        self._idle_since: float | None = None
        self._stream: Any = None
        self._iterator: AsyncIterator[Any] | None = None
        self._failures = 0

    async def next_call(self) -> ToolCall | None:
        """The next call to run; None once the session terminated or stayed idle too long."""
        while True:
            while self._ready:
                call = self._ready.popleft()
                if call.id not in self._answered:
                    return call
            if self._ended:
                return None
            if self._iterator is None:
                await self._connect()
                continue
            wait = None
            if self._idle_since is not None and self._max_idle is not None and not self._held:
                wait = self._idle_since + self._max_idle - anyio.current_time()
                if wait <= 0:
                    log.info(
                        "session %s: idle for %g s, letting it go", self._session_id, self._max_idle
                    )
                    return None
            try:
                with anyio.move_on_after(wait):
                    event = await self._iterator.__anext__()
                    self._failures = 0
                    self._note(event)
            except StopAsyncIteration:
                await self._disconnect()
            except (anthropic.APIConnectionError, anthropic.APIStatusError) as exc:
                await self._disconnect()
                self._give_up_if_fatal(exc)
                await self._backoff(exc)

    def _give_up_if_fatal(self, exc: Exception) -> None:
        if isinstance(exc, anthropic.APIStatusError) and 400 <= exc.status_code < 500:
            if exc.status_code in (408, 409, 429):
                return
            _raise(exc, "session events")

    async def _backoff(self, exc: Exception) -> None:
        self._failures += 1
        wait = min(0.25 * 2**self._failures, STREAM_BACKOFF_CAP)
        log.warning(
            "session %s: event stream failed (%s); again in %.1f s", self._session_id, exc, wait
        )
        await anyio.sleep(wait)

    async def _connect(self) -> None:
        """Open the live stream first, then read the history, so nothing falls between."""
        try:
            self._stream = await self._events.stream(self._session_id)
            self._iterator = self._stream.__aiter__()
            await self._reconcile()
        except (anthropic.APIConnectionError, anthropic.APIStatusError) as exc:
            await self._disconnect()
            self._give_up_if_fatal(exc)
            await self._backoff(exc)

    async def _disconnect(self) -> None:
        stream, self._stream, self._iterator = self._stream, None, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await stream.close()
                except Exception as exc:  # closing a broken stream may fail again
                    log.debug("closing the event stream: %s", exc)

    async def _reconcile(self) -> None:
        history = [event async for event in self._events.list(self._session_id, limit=1000)]
        for event in history:
            if event.type == "user.tool_result":
                self._answered.add(event.tool_use_id)
            elif event.type == "user.custom_tool_result":
                self._answered.add(event.custom_tool_use_id)
            elif event.type == "user.tool_confirmation":
                self._verdicts[event.tool_use_id] = event.result
        for event in history:
            self._note(event, replay=True)

    def _note(self, event: Any, *, replay: bool = False) -> None:
        kind = event.type
        if kind in TOOL_USE_TYPES:
            if event.id not in self._seen:
                self._seen.add(event.id)
                if event.id not in self._answered:
                    self._route(event)
        elif kind == "user.tool_result" and not replay:
            self._answered.add(event.tool_use_id)
        elif kind == "user.custom_tool_result" and not replay:
            self._answered.add(event.custom_tool_use_id)
        elif kind == "user.tool_confirmation":
            self._verdicts[event.tool_use_id] = event.result
            held = self._held.pop(event.tool_use_id, None)
            if held is not None and event.result == "allow":
                self._enqueue(held)
            return  # a confirmation is neither activity nor idleness
        elif kind in ("session.status_terminated", "session.deleted"):
            self._ended = True
        if kind == "session.status_idle":
            reason = getattr(event.stop_reason, "type", None)
            self._idle_since = None if reason == "requires_action" else anyio.current_time()
        elif kind != "user.tool_confirmation":
            self._idle_since = None

    def _route(self, event: Any) -> None:
        if not self._owns(event.name):
            return  # another client (the application's backend) answers this one
        permission = getattr(event, "evaluated_permission", None)
        verdict = self._verdicts.get(event.id)
        if permission == "deny" or verdict == "deny":
            return  # never run; the denial resolves the call on the server
        if permission in (None, "allow") or verdict == "allow":
            self._enqueue(event)
        else:  # "ask", or a value this code does not know: wait for an explicit allow
            self._held[event.id] = event

    def _enqueue(self, event: Any) -> None:
        self._ready.append(
            ToolCall(id=event.id, name=event.name, input=dict(event.input), handle=event.type)
        )

    async def started(self, call: ToolCall) -> None:
        """Nothing to record: the control plane keeps no trace of a started call."""

    async def post_result(self, call: ToolCall, content: str, *, is_error: bool) -> bool:
        """Send ``user.tool_result`` (or ``user.custom_tool_result``) for ``call``."""
        text: list[Any] = [{"type": "text", "text": content or "(no output)"}]
        event: Any
        if call.handle == "agent.custom_tool_use":
            event = {
                "type": "user.custom_tool_result",
                "custom_tool_use_id": call.id,
                "content": text,
                "is_error": is_error,
            }
        else:
            event = {
                "type": "user.tool_result",
                "tool_use_id": call.id,
                "content": text,
                "is_error": is_error,
            }
        try:
            await self._events.send(self._session_id, events=[event])
        except anthropic.APIStatusError as exc:
            if 400 <= exc.status_code < 500 and exc.status_code not in (408, 429):
                log.warning("session %s: result of %s refused: %s", self._session_id, call.id, exc)
                return False
            _raise(exc, "send tool result")
        except Exception as exc:
            _raise(exc, "send tool result")
        self._answered.add(call.id)
        return True

    async def aclose(self) -> None:
        """Close the event stream."""
        await self._disconnect()
