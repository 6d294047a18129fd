"""A fake of Anthropic's managed-agents control plane: the self-hosted environment work queue and
the session event log, served on 127.0.0.1 for the real ``anthropic`` SDK.

It follows the vendor, not our adapter. Paths, parameters and shapes come from the installed SDK:
``anthropic/resources/beta/environments/work.py`` (poll ``GET .../work/poll?block_ms&
reclaim_older_than_ms``, ``POST .../work/{id}/ack``, ``POST .../work/{id}/heartbeat?
expected_last_heartbeat&desired_ttl_seconds``, ``POST .../work/{id}/stop {force}``,
``GET .../work/stats``), ``anthropic/resources/beta/sessions/events.py`` (list with cursor
pages, ``/events/stream`` as server-sent events, send), and the response models in
``anthropic/types/beta/environments/`` and ``types/beta/sessions/`` — every event and response
is validated against the SDK's own type before it is served. Behaviour follows the SDK's
documentation of the endpoints and its own worker (``anthropic/lib/environments/_worker.py``,
``_poller.py``, ``lib/tools/_beta_session_runner.py``): ack moves ``queued`` to ``starting``;
the first heartbeat expects ``NO_HEARTBEAT`` and each later one echoes ``last_heartbeat``, a
mismatch is a 412 whose body carries ``error.details.current_state``, and the value is not
compared once the item is ``stopping``/``stopped``; a lease not renewed within its TTL puts the
item back in the queue; stopping a stopped item is a 409; a poll returns ``null`` when no work
came within ``block_ms``; the item's ``secret`` is URL-safe base64 JSON holding a
``sessions_token``; poll and ack take the environment key, the per-item calls the key or the
item's token.

Test-side methods (``create_session``, ``tool_use``, ``idle``, ``terminate``, ``result``, ...)
play the agent loop's part.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

import uvicorn
from anthropic.types.beta.environments import (
    BetaSelfHostedWork,
    BetaSelfHostedWorkHeartbeatResponse,
    BetaSelfHostedWorkQueueStats,
)
from anthropic.types.beta.sessions import BetaManagedAgentsSessionEvent
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

BETA = "managed-agents-2026-04-01"
EVENT = TypeAdapter(BetaManagedAgentsSessionEvent)
DEFAULT_TTL = 60


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message, **extra}}, status
    )


class FakeAnthropic:
    """The fake control plane, run by uvicorn in a thread of its own."""

    def __init__(self, environment_id: str = "env_fake") -> None:
        self.environment_id = environment_id
        self.environment_key = "envkey-" + secrets.token_hex(8)
        self.lock = threading.Lock()
        self.work: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}  # sessions token -> session id
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, bearer
        self.changed: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAnthropic:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        app = Starlette(routes=self._routes())
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake control plane did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _poke(self) -> None:
        """Wake every long poll and event stream (callable from any thread)."""
        loop = self.loop
        if loop is None:
            return

        def notify() -> None:
            changed, self.changed = self.changed, asyncio.Event()
            if changed is not None:
                changed.set()

        loop.call_soon_threadsafe(notify)

    async def _wait_change(self, timeout: float) -> None:
        # An event replaced at each change, not a Condition: on Python 3.11 a Condition.wait()
        # cancelled by wait_for's timeout can return without its lock held again.
        if self.changed is None:
            self.loop = asyncio.get_running_loop()
            self.changed = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    # -- the agent loop's side ------------------------------------------------------------

    def create_session(self, metadata: dict[str, str] | None = None) -> tuple[str, str]:
        """A new session and its queued work item: (session id, work id)."""
        session_id = "sesn_" + secrets.token_hex(8)
        work_id = "work_" + secrets.token_hex(8)
        token = "sesstok-" + secrets.token_hex(8)
        with self.lock:
            self.sessions[session_id] = {"events": [], "token": token}
            self.tokens[token] = session_id
            self.work[work_id] = {
                "id": work_id,
                "session": session_id,
                "state": "queued",
                "created_at": _now(),
                "queued_at": time.time(),
                "polled_at": None,
                "acknowledged_at": None,
                "last_heartbeat": None,
                "lease_expires": None,
                "ttl": DEFAULT_TTL,
                "stopped_at": None,
                "metadata": dict(metadata or {}),
            }
        self._poke()
        return session_id, work_id

    def add_event(self, session_id: str, event: dict[str, Any]) -> str:
        event = {"id": "sevt_" + secrets.token_hex(8), "processed_at": _now(), **event}
        EVENT.validate_python(event)  # the SDK's own type decides what an event looks like
        with self.lock:
            self.sessions[session_id]["events"].append(event)
        self._poke()
        return str(event["id"])

    def tool_use(
        self,
        session_id: str,
        name: str,
        tool_input: dict[str, Any],
        *,
        permission: str | None = None,
        custom: bool = False,
    ) -> str:
        """The agent calls a tool: an ``agent.tool_use`` (or ``agent.custom_tool_use``) event."""
        event: dict[str, Any] = {
            "type": "agent.custom_tool_use" if custom else "agent.tool_use",
            "name": name,
            "input": tool_input,
        }
        if permission is not None:
            event["evaluated_permission"] = permission
        return self.add_event(session_id, event)

    def confirm(self, session_id: str, tool_use_id: str, result: str) -> str:
        return self.add_event(
            session_id,
            {"type": "user.tool_confirmation", "tool_use_id": tool_use_id, "result": result},
        )

    def idle(self, session_id: str, reason: str = "end_turn") -> str:
        stop: dict[str, Any] = {"type": reason}
        if reason == "requires_action":
            stop["event_ids"] = []
        return self.add_event(session_id, {"type": "session.status_idle", "stop_reason": stop})

    def terminate(self, session_id: str) -> str:
        return self.add_event(session_id, {"type": "session.status_terminated"})

    def result(self, session_id: str, tool_use_id: str) -> dict[str, Any] | None:
        """The result event sent for ``tool_use_id``, if any."""
        with self.lock:
            for event in self.sessions[session_id]["events"]:
                if event.get("tool_use_id", event.get("custom_tool_use_id")) == tool_use_id and (
                    event["type"] in ("user.tool_result", "user.custom_tool_result")
                ):
                    return dict(event)
        return None

    def results(self, session_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                dict(e)
                for e in self.sessions[session_id]["events"]
                if e["type"] in ("user.tool_result", "user.custom_tool_result")
            ]

    # -- HTTP -----------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        env = "/v1/environments/{env}/work"
        return [
            Route(env + "/poll", self._poll, methods=["GET"]),
            Route(env + "/stats", self._stats, methods=["GET"]),
            Route(env + "/{work}/ack", self._ack, methods=["POST"]),
            Route(env + "/{work}/heartbeat", self._heartbeat, methods=["POST"]),
            Route(env + "/{work}/stop", self._stop, methods=["POST"]),
            Route("/v1/sessions/{session}/events", self._events, methods=["GET", "POST"]),
            Route("/v1/sessions/{session}/events/stream", self._stream, methods=["GET"]),
        ]

    def _check(self, request: Request, *, session: str | None = None) -> Response | None:
        """Auth and the beta header; the sessions token only reaches its own session."""
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else None
        self.requests.append((request.method, request.url.path, bearer))
        if BETA not in request.headers.get("anthropic-beta", ""):
            return _error(400, "invalid_request_error", f"this endpoint needs the {BETA} beta")
        if request.path_params.get("env", self.environment_id) != self.environment_id:
            return _error(404, "not_found_error", "no such environment")
        if bearer == self.environment_key:
            return None
        if bearer is not None and session is not None and self.tokens.get(bearer) == session:
            return None
        return _error(401, "authentication_error", "invalid bearer token")

    def _item(self, work: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
        body = {
            "id": work["id"],
            "type": "work",
            "environment_id": self.environment_id,
            "created_at": work["created_at"],
            "acknowledged_at": work["acknowledged_at"],
            "latest_heartbeat_at": work["last_heartbeat"],
            "data": {"type": "session", "id": work["session"]},
            "metadata": work["metadata"],
            "secret": secret,
            "state": work["state"],
            "stopped_at": work["stopped_at"],
        }
        BetaSelfHostedWork.model_validate(body)
        return body

    def _requeue_expired(self, now: float) -> None:
        for work in self.work.values():
            if work["state"] in ("starting", "active", "stopping") and work["lease_expires"] < now:
                work.update(
                    state="queued",
                    polled_at=None,
                    acknowledged_at=None,
                    last_heartbeat=None,
                    lease_expires=None,
                    queued_at=now,
                )

    async def _poll(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        try:
            block_ms = int(request.query_params.get("block_ms", "0") or 0)
            reclaim = int(request.query_params.get("reclaim_older_than_ms", "5000"))
        except ValueError:
            return _error(400, "invalid_request_error", "block_ms and reclaim must be integers")
        if "block_ms" in request.query_params and not 1 <= block_ms <= 999:
            return _error(400, "invalid_request_error", "block_ms must be between 1 and 999")
        deadline = time.monotonic() + block_ms / 1000
        while True:
            with self.lock:
                now = time.time()
                self._requeue_expired(now)
                ready = [
                    w
                    for w in self.work.values()
                    if w["state"] == "queued"
                    and (w["polled_at"] is None or now - w["polled_at"] > reclaim / 1000)
                ]
                if ready:
                    work = min(ready, key=lambda w: w["queued_at"])
                    work["polled_at"] = now
                    token = self.sessions[work["session"]]["token"]
                    secret = (
                        base64.urlsafe_b64encode(json.dumps({"sessions_token": token}).encode())
                        .decode()
                        .rstrip("=")
                    )
                    return JSONResponse(self._item(work, secret))
            left = deadline - time.monotonic()
            if left <= 0:
                return Response("null", media_type="application/json")
            await self._wait_change(min(left, 0.2))

    def _find(self, request: Request) -> dict[str, Any] | Response:
        work = self.work.get(request.path_params["work"])
        if work is None:
            return _error(404, "not_found_error", "no such work item")
        return work

    async def _ack(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        with self.lock:
            work = self._find(request)
            if isinstance(work, Response):
                return work
            if work["state"] == "queued":
                work.update(
                    state="starting",
                    acknowledged_at=_now(),
                    lease_expires=time.time() + work["ttl"],
                )
            return JSONResponse(self._item(work))

    async def _heartbeat(self, request: Request) -> Response:
        with self.lock:
            work = self._find(request)
            if isinstance(work, Response):
                return work
        if (denied := self._check(request, session=work["session"])) is not None:
            return denied
        expected = request.query_params.get("expected_last_heartbeat")
        desired = request.query_params.get("desired_ttl_seconds")
        with self.lock:
            current = work["last_heartbeat"] or "NO_HEARTBEAT"
            if work["state"] in ("stopping", "stopped"):
                body = {
                    "type": "work_heartbeat",
                    "last_heartbeat": work["last_heartbeat"] or "",
                    "lease_extended": False,
                    "state": work["state"],
                    "ttl_seconds": work["ttl"],
                }
                return JSONResponse(BetaSelfHostedWorkHeartbeatResponse(**body).model_dump())
            if work["state"] == "queued" or (expected is not None and expected != current):
                lease = {
                    "last_heartbeat": work["last_heartbeat"],
                    "lease_extended": False,
                    "state": work["state"],
                    "ttl_seconds": work["ttl"],
                }
                return _error(
                    412,
                    "precondition_failed_error",
                    "expected_last_heartbeat does not match the stored heartbeat",
                    error_code="heartbeat_precondition_failed",
                    details={
                        "error_code": "heartbeat_precondition_failed",
                        "current_state": lease,
                    },
                )
            if desired is not None:
                work["ttl"] = max(int(desired), 1)
            stamp = _now()
            if work["last_heartbeat"] is not None and stamp <= work["last_heartbeat"]:
                stamp = work["last_heartbeat"][:-1] + "1Z"
            work.update(
                state="active", last_heartbeat=stamp, lease_expires=time.time() + work["ttl"]
            )
            body = {
                "type": "work_heartbeat",
                "last_heartbeat": stamp,
                "lease_extended": True,
                "state": "active",
                "ttl_seconds": work["ttl"],
            }
            return JSONResponse(BetaSelfHostedWorkHeartbeatResponse(**body).model_dump())

    async def _stop(self, request: Request) -> Response:
        with self.lock:
            work = self._find(request)
            if isinstance(work, Response):
                return work
        if (denied := self._check(request, session=work["session"])) is not None:
            return denied
        raw = await request.body()
        force = bool(json.loads(raw or b"{}").get("force"))
        with self.lock:
            if work["state"] == "stopped":
                return _error(409, "conflict_error", "the work item is already stopped")
            if force or work["state"] == "queued":
                work.update(state="stopped", stopped_at=_now(), lease_expires=None)
            else:
                work["state"] = "stopping"
            body = self._item(work)
        self._poke()
        return JSONResponse(body)

    async def _stats(self, request: Request) -> Response:
        if (denied := self._check(request)) is not None:
            return denied
        with self.lock:
            queued = [w for w in self.work.values() if w["state"] == "queued"]
            oldest = min((w["queued_at"] for w in queued), default=None)
            body = {
                "type": "work_queue_stats",
                "depth": sum(1 for w in queued if w["polled_at"] is None),
                "pending": sum(1 for w in queued if w["polled_at"] is not None),
                "oldest_queued_at": (
                    datetime.fromtimestamp(oldest, timezone.utc).isoformat() if oldest else None
                ),
                "workers_polling": None,
            }
        return JSONResponse(BetaSelfHostedWorkQueueStats(**body).model_dump())

    async def _events(self, request: Request) -> Response:
        session_id = request.path_params["session"]
        if session_id not in self.sessions:
            return _error(404, "not_found_error", "no such session")
        if (denied := self._check(request, session=session_id)) is not None:
            return denied
        if request.method == "GET":
            limit = int(request.query_params.get("limit", "20"))
            start = int(request.query_params.get("page") or 0)
            with self.lock:
                events = self.sessions[session_id]["events"]
                page = [dict(e) for e in events[start : start + limit]]
                more = start + limit < len(events)
            return JSONResponse({"data": page, "next_page": str(start + limit) if more else None})
        body = json.loads(await request.body())
        accepted = []
        with self.lock:
            events = self.sessions[session_id]["events"]
            open_calls = {
                e["id"]: e["type"]
                for e in events
                if e["type"] in ("agent.tool_use", "agent.custom_tool_use")
            }
            for e in events:
                for key in ("tool_use_id", "custom_tool_use_id"):
                    if e["type"].endswith("tool_result") and key in e:
                        open_calls.pop(e[key], None)
            for event in body.get("events", []):
                kind = event.get("type")
                key = "custom_tool_use_id" if kind == "user.custom_tool_result" else "tool_use_id"
                wanted = (
                    "agent.custom_tool_use"
                    if kind == "user.custom_tool_result"
                    else "agent.tool_use"
                )
                if kind not in ("user.tool_result", "user.custom_tool_result"):
                    return _error(400, "invalid_request_error", f"cannot send {kind!r} here")
                if open_calls.get(event.get(key)) != wanted:
                    return _error(
                        400, "invalid_request_error", f"{event.get(key)} is not an open tool call"
                    )
                stored = {"id": "sevt_" + secrets.token_hex(8), "processed_at": _now(), **event}
                EVENT.validate_python(stored)
                events.append(stored)
                open_calls.pop(event[key])
                accepted.append(stored)
        self._poke()
        return JSONResponse({"data": accepted})

    async def _stream(self, request: Request) -> Response:
        session_id = request.path_params["session"]
        if session_id not in self.sessions:
            return _error(404, "not_found_error", "no such session")
        if (denied := self._check(request, session=session_id)) is not None:
            return denied
        with self.lock:
            start = len(self.sessions[session_id]["events"])  # live events only

        async def sse() -> Any:
            sent = start
            while True:
                with self.lock:
                    fresh = [dict(e) for e in self.sessions[session_id]["events"][sent:]]
                for event in fresh:
                    yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                    sent += 1
                    if event["type"] in ("session.status_terminated", "session.deleted"):
                        return
                if not fresh:
                    yield "event: ping\ndata: {}\n\n"
                await self._wait_change(0.5)

        return StreamingResponse(sse(), media_type="text/event-stream")
