"""The audit log: records, the sink protocol, and :class:`AuditLog` sending events to sinks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

from ..errors import SandboxError
from ._redaction import redact, redact_text


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, datetime):
        return value.isoformat()
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    return str(value)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the form hashed for ``args_sha256`` and the chain."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class AuditRecord:
    """An event being recorded; code inside :meth:`AuditLog.span` sets ``decision`` and ``result``.

    Attributes:
        decision: ``"allow"`` or ``"deny"`` (``None`` when no decision was taken).
        result: a JSON-ready summary: ``exit_code``, ``bytes``, ``is_error``, ...
        error: set by the log from an exception escaping the span (``type``, ``code``, ``message``).
    """

    op: str
    sandbox_id: str | None = None
    provider: str | None = None
    tool: str | None = None
    call_id: str | None = None
    arguments: Any = None
    args_sha256: str | None = None
    decision: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    trace_id: str | None = None
    time: str = ""
    duration_ms: float | None = None
    started: float = field(default=0.0, repr=False)
    """``time.time()`` at the start (for sinks that need the start instant)."""

    def to_event(self) -> dict[str, Any]:
        """The event as emitted (without ``seq``, which the log assigns)."""
        return {
            "time": self.time,
            "sandbox_id": self.sandbox_id,
            "provider": self.provider,
            "op": self.op,
            "tool": self.tool,
            "call_id": self.call_id,
            "args_sha256": self.args_sha256,
            "arguments": self.arguments,
            "decision": self.decision,
            "result": self.result,
            "duration_ms": self.duration_ms,
            "trace_id": self.trace_id,
            "error": self.error,
        }


@runtime_checkable
class Sink(Protocol):
    """Where events go. ``emit`` gets the finished event (a JSON-ready dict).

    A sink may also define ``begin(record, *, current)``, a context manager entered when an
    operation of :meth:`AuditLog.span` starts and left when it ends (how :class:`OtelSink` makes
    its span current); such a sink is not sent ``emit`` for those operations, only for one-shot
    :meth:`AuditLog.record` events.
    """

    def emit(self, event: dict[str, Any]) -> None:
        """Store or forward one event."""
        ...


def _current_trace_id() -> str | None:
    # No OpenTelemetry import means no current span: never import it just to look.
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}"


class AuditLog:
    """Sends one event per operation to every sink.

    Args:
        sinks: :class:`JsonlSink`, :class:`LoggingSink`, :class:`OtelSink` or any object with an
            ``emit(event)`` method. With none, events are built and dropped.
        secret_keys: key names whose values are always redacted (besides those that look secret).
        secret_values: literal secret strings scrubbed wherever they appear.

    A sink that raises does not stop the others nor the operation: the failure is logged.
    """

    def __init__(
        self, *sinks: Sink, secret_keys: Iterable[str] = (), secret_values: Iterable[str] = ()
    ) -> None:
        self.sinks: list[Sink] = list(sinks)
        self.secret_keys = set(secret_keys)
        self.secret_values = set(secret_values)
        self._seq = 0
        self._lock = threading.Lock()

    def add_sink(self, sink: Sink) -> None:
        """Send later events to ``sink`` too."""
        self.sinks.append(sink)

    def _redacted(self, arguments: Any, secrets: Iterable[str]) -> Any:
        return redact(
            arguments,
            secret_keys=self.secret_keys.union(secrets),
            secret_values=self.secret_values,
        )

    def digest(self, arguments: Any, *, secrets: Iterable[str] = ()) -> str:
        """The ``args_sha256`` this log records for ``arguments``: SHA-256 of the canonical JSON
        of the arguments *after* redaction, so a recorded digest can be matched to a known input
        but never confirms a guessed secret."""
        return sha256_hex(canonical_json(self._redacted(arguments, secrets)))

    def _begin(
        self,
        op: str,
        *,
        sandbox_id: str | None,
        provider: str | None,
        tool: str | None,
        call_id: str | None,
        arguments: Any,
        secrets: Iterable[str],
        trace_id: str | None,
    ) -> AuditRecord:
        now = time.time()
        if not self.sinks:  # nobody listens: skip the digest and the redaction
            arguments = None
        redacted = self._redacted(arguments, secrets)
        return AuditRecord(
            op=op,
            sandbox_id=sandbox_id,
            provider=provider,
            tool=tool,
            call_id=call_id,
            args_sha256=None if redacted is None else sha256_hex(canonical_json(redacted)),
            arguments=redacted,
            trace_id=trace_id,
            time=_iso(now),
            started=now,
        )

    @contextlib.contextmanager
    def span(
        self,
        op: str,
        *,
        sandbox_id: str | None = None,
        provider: str | None = None,
        tool: str | None = None,
        call_id: str | None = None,
        arguments: Any = None,
        secrets: Iterable[str] = (),
        trace_id: str | None = None,
        current: bool = True,
    ) -> Iterator[AuditRecord]:
        """Record one operation: yields the :class:`AuditRecord` to fill, emits it on exit.

        ``secrets`` names argument keys (e.g. env variable names) whose values are redacted.
        An exception leaving the block is stored as the event's ``error`` and re-raised.
        ``current=False`` keeps a tracing span from becoming the current one (for blocks that
        span the yields of an async generator).
        """
        record = self._begin(
            op,
            sandbox_id=sandbox_id,
            provider=provider,
            tool=tool,
            call_id=call_id,
            arguments=arguments,
            secrets=secrets,
            trace_id=trace_id,
        )
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            for sink in self.sinks:
                begin = getattr(sink, "begin", None)
                if begin is not None:
                    stack.enter_context(begin(record, current=current))
            if record.trace_id is None:
                record.trace_id = _current_trace_id() or uuid.uuid4().hex
            try:
                yield record
            except BaseException as exc:
                record.error = self._describe(exc)
                raise
            finally:
                record.duration_ms = round((time.perf_counter() - start) * 1000, 3)
                self._emit(record, begun=True)

    def record(
        self,
        op: str,
        *,
        sandbox_id: str | None = None,
        provider: str | None = None,
        tool: str | None = None,
        call_id: str | None = None,
        arguments: Any = None,
        secrets: Iterable[str] = (),
        decision: str | None = None,
        result: dict[str, Any] | None = None,
        error: BaseException | str | None = None,
        duration_ms: float | None = None,
        trace_id: str | None = None,
    ) -> dict[str, Any]:
        """Emit one event for something already done; returns the event."""
        rec = self._begin(
            op,
            sandbox_id=sandbox_id,
            provider=provider,
            tool=tool,
            call_id=call_id,
            arguments=arguments,
            secrets=secrets,
            trace_id=trace_id or _current_trace_id() or uuid.uuid4().hex,
        )
        rec.decision, rec.result, rec.duration_ms = decision, result, duration_ms
        if isinstance(error, BaseException):
            rec.error = self._describe(error)
        elif error is not None:
            rec.error = {"type": "error", "message": self._scrub(error)}
        return self._emit(rec)

    def _scrub(self, text: str) -> str:
        values = sorted(self.secret_values, key=len, reverse=True)
        return redact_text(text, [v for v in values if len(v) >= 4])

    def _describe(self, exc: BaseException) -> dict[str, Any]:
        error: dict[str, Any] = {"type": type(exc).__name__, "message": self._scrub(str(exc))}
        if isinstance(exc, SandboxError):
            error["code"] = exc.code
        return error

    def _emit(self, record: AuditRecord, *, begun: bool = False) -> dict[str, Any]:
        event = record.to_event()
        if record.result is not None:
            event["result"] = redact(record.result, secret_values=self.secret_values)
        with self._lock:
            self._seq += 1
            event["seq"] = self._seq
            for sink in self.sinks:
                if begun and hasattr(sink, "begin"):
                    continue  # the sink saw the operation begin and ends it itself
                try:
                    sink.emit(event)
                except Exception:
                    logging.getLogger(__name__).exception(
                        "audit sink %s failed", type(sink).__name__
                    )
        return event


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
