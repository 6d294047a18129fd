"""The audit log: one structured event per operation, to JSONL, logging and OpenTelemetry.

An :class:`AuditLog` sends every event to its sinks. Code that runs an operation wraps it in
:meth:`AuditLog.span`, sets the decision and the result on the yielded :class:`AuditRecord`, and
the log measures the duration, captures an exception and emits one event when the block ends::

    audit = AuditLog(JsonlSink("audit.jsonl"))
    with audit.span("exec", sandbox_id=sid, provider="docker", arguments={"command": cmd}) as rec:
        result = await sandbox.exec(cmd)
        rec.decision = "allow"
        rec.result = {"exit_code": result.exit_code}

An event holds: ``time`` (UTC, ISO 8601), ``seq`` (per log), ``sandbox_id``, ``provider``, ``op``,
``tool``, ``call_id``, ``args_sha256`` (of the canonical JSON of the arguments *before*
redaction, so a digest can be matched to a known input without storing it), ``arguments`` with
secrets redacted, ``decision``, ``result``, ``duration_ms``, ``trace_id`` and ``error``.

:class:`JsonlSink` chains records: each carries the previous record's ``hash`` as ``prev_hash``
and its own ``hash`` (SHA-256 of ``prev_hash`` and the canonical record), so an edited, inserted
or deleted line shows; :func:`verify_chain` (``agent-sandbox audit verify FILE``) checks a file.

:class:`AuditingBackend` wraps any backend so that every sandbox operation is asked of a
:class:`~agent_sandbox.policy.Policy` first and audited after.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .backend import BaseBackend, Diagnostic, close_stream
from .errors import PolicyDenied, ProviderNotInstalled, SandboxError
from .models import (
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    SandboxInfo,
    SandboxSpec,
)
from .policy import Action, Policy

__all__ = [
    "GENESIS_HASH",
    "REDACTED",
    "AuditLog",
    "AuditRecord",
    "AuditingBackend",
    "JsonlSink",
    "LoggingSink",
    "OtelSink",
    "Sink",
    "VerifyReport",
    "canonical_json",
    "redact",
    "verify_chain",
    "verify_main",
]

REDACTED = "[REDACTED]"
GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record of a chain."""

_SECRET_NAME = re.compile(
    r"(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|"
    r"(^|[_-])KEY$|^AUTH(ORIZATION)?$|COOKIE)",
    re.IGNORECASE,
)
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization headers and bearer tokens.
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    # NAME=value where NAME looks secret (shell assignments, env dumps, URLs' query strings).
    (
        re.compile(
            r"(?i)\b([A-Za-z0-9_]*(?:token|secret|password|passwd|api_?key|access_?key|"
            r"private_?key|credential)[A-Za-z0-9_]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s&;\"']+)"
        ),
        r"\1\2" + REDACTED,
    ),
    # Vendor key shapes: OpenAI/Anthropic sk-..., GitHub, Slack, AWS access key ids, JWTs.
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), REDACTED),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), REDACTED),
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), REDACTED),
    # user:password@ in URLs.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^@\s/]+@"), r"\1:" + REDACTED + "@"),
)


def looks_secret(name: str) -> bool:
    """True when a key name looks like it holds a secret (``*TOKEN*``, ``*SECRET*``, ...)."""
    return bool(_SECRET_NAME.search(name))


def redact(
    value: Any, *, secret_keys: Iterable[str] = (), secret_values: Iterable[str] = ()
) -> Any:
    """A copy of ``value`` with secrets replaced by ``"[REDACTED]"``.

    Redacted: string values under a key in ``secret_keys`` or whose name looks secret
    (``*TOKEN*``, ``*SECRET*``, ``*KEY*``, ``*PASSWORD*``, ...), every occurrence of a string
    in ``secret_values``, bearer tokens, ``NAME=value`` assignments with secret-looking names,
    and well-known API key shapes inside any string. Bytes become a size and digest note.
    """
    keys = {k.lower() for k in secret_keys}
    values = sorted({v for v in secret_values if v and len(v) >= 4}, key=len, reverse=True)
    return _redact(value, keys, values)


def _redact(value: Any, keys: set[str], values: list[str]) -> Any:
    if isinstance(value, str):
        return _redact_text(value, values)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(k)
            if isinstance(v, str) and (name.lower() in keys or looks_secret(name)):
                out[name] = REDACTED
            else:
                out[name] = _redact(v, keys, values)
        return out
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if isinstance(value, (list, tuple)):
        return [_redact(v, keys, values) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _redact_text(str(value), values)


def _redact_text(text: str, values: list[str]) -> str:
    for secret in values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- records ----------------------------------------------------------------------------------


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
        secrets = tuple(secrets)
        return AuditRecord(
            op=op,
            sandbox_id=sandbox_id,
            provider=provider,
            tool=tool,
            call_id=call_id,
            args_sha256=None if arguments is None else _sha256(canonical_json(arguments)),
            arguments=redact(
                arguments,
                secret_keys=self.secret_keys.union(secrets),
                secret_values=self.secret_values,
            ),
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
        return _redact_text(text, [v for v in values if len(v) >= 4])

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


# -- sinks ------------------------------------------------------------------------------------


def _record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return _sha256(prev_hash + canonical_json(body))


def _last_hash(fd: int) -> str:
    """The ``hash`` of the last complete line of an open file (genesis when empty)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return GENESIS_HASH
    block = 4096
    offset = size
    tail = b""
    while offset > 0:
        step = min(block, offset)
        offset -= step
        tail = os.pread(fd, step, offset) + tail
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or offset == 0:
            last = lines[-1]
            break
        block *= 2
    try:
        value = json.loads(last)["hash"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"the audit file's last line is not a chained record: {exc}") from exc
    if not isinstance(value, str):
        raise ValueError("the audit file's last record has no hash")
    return value


class JsonlSink:
    """Appends events as hash-chained JSON lines.

    Each line carries ``prev_hash`` (the previous line's ``hash``, or 64 zeros first) and
    ``hash`` = SHA-256 of ``prev_hash`` + the canonical JSON of the record without ``hash``.
    Reopening an existing file continues its chain. Writes are serialised by a lock within the
    process and by ``flock`` across processes, and the chain is re-read when another writer
    appended in between, so several writers keep one valid chain.

    Args:
        path: the file (created with mode 0600 if missing).
        fsync: ``os.fsync`` after each record (durable, slower).

    Raises:
        ValueError: the file exists and its last line is not a chained record.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._read_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._flocked():
                self._prev = _last_hash(self._read_fd)
                self._size = os.fstat(self._fd).st_size
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def _flocked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @property
    def last_hash(self) -> str:
        """The hash of the last record written (anchor it elsewhere to detect truncation)."""
        return self._prev

    def emit(self, event: dict[str, Any]) -> None:
        """Append one chained record."""
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"audit sink {self.path} is closed")
            with self._flocked():
                size = os.fstat(self._fd).st_size
                if size != self._size:  # another writer appended since our last record
                    self._prev = _last_hash(self._read_fd)
                record = dict(event)
                record.pop("hash", None)
                record["prev_hash"] = self._prev
                record["hash"] = _record_hash(self._prev, record)
                line = (canonical_json(record) + "\n").encode("utf-8")
                written = 0
                while written < len(line):
                    written += os.write(self._fd, line[written:])
                if self.fsync:
                    os.fsync(self._fd)
                self._prev = record["hash"]
                self._size = size + len(line)

    def close(self) -> None:
        """Close the file; later ``emit`` calls raise."""
        with self._lock:
            for name in ("_fd", "_read_fd"):
                fd = getattr(self, name, -1)
                if fd >= 0:
                    os.close(fd)
                    setattr(self, name, -1)

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoggingSink:
    """Writes each event to a :mod:`logging` logger: a one-line message, the event in ``extra``.

    The event is available to formatters and handlers as ``record.audit``.
    """

    def __init__(
        self, logger: logging.Logger | str | None = None, *, level: int = logging.INFO
    ) -> None:
        if logger is None or isinstance(logger, str):
            logger = logging.getLogger(logger or "agent_sandbox.audit")
        self.logger = logger
        self.level = level

    def emit(self, event: dict[str, Any]) -> None:
        """Log one event."""
        if not self.logger.isEnabledFor(self.level):
            return
        what = event["op"] if not event.get("tool") else f"{event['op']} {event['tool']}"
        outcome = event.get("decision") or "-"
        if event.get("error"):
            outcome += f" error={event['error'].get('code') or event['error'].get('type')}"
        self.logger.log(
            self.level,
            "audit #%s %s sandbox=%s %s %.1fms",
            event.get("seq"),
            what,
            event.get("sandbox_id"),
            outcome,
            event.get("duration_ms") or 0.0,
            extra={"audit": event},
        )


class OtelSink:
    """Creates OpenTelemetry spans following the GenAI semantic conventions.

    A tool call becomes a span ``execute_tool {tool}`` with ``gen_ai.operation.name`` =
    ``execute_tool``, ``gen_ai.tool.name`` and ``gen_ai.tool.call.id``; other operations become
    ``sandbox.{op}``. Both carry ``agent_sandbox.*`` attributes (sandbox id, provider, decision,
    exit code, argument digest) and an error status when the operation failed. Spans start when
    the operation starts and are current meanwhile, so provider spans nest under them.

    Args:
        tracer_provider: defaults to the global one.

    Raises:
        ProviderNotInstalled: ``opentelemetry-api`` is not installed.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ProviderNotInstalled(
                'the OpenTelemetry audit sink needs opentelemetry-api: pip install "opentelemetry-api"'
            ) from exc
        self._trace = trace
        self.tracer = trace.get_tracer("agent_sandbox.audit", tracer_provider=tracer_provider)

    @contextlib.contextmanager
    def begin(self, record: AuditRecord, *, current: bool = True) -> Iterator[None]:
        """Start the span of ``record``, current until the operation ends unless ``current``
        is false; it ends (with the result and error as attributes) when the operation does."""
        if record.op == "tool_call" and record.tool:
            name = f"execute_tool {record.tool}"
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": record.tool,
                "gen_ai.tool.type": "function",
            }
            if record.call_id:
                attributes["gen_ai.tool.call.id"] = record.call_id
        else:
            name = f"sandbox.{record.op}"
            attributes = {"agent_sandbox.operation": record.op}
        span = self.tracer.start_span(
            name, kind=self._trace.SpanKind.INTERNAL, attributes=attributes
        )
        try:
            if current:
                with self._trace.use_span(span, end_on_exit=False, record_exception=False):
                    yield
            else:
                yield
        finally:
            self._finish(span, record)

    def _finish(self, span: Any, record: AuditRecord) -> None:
        attrs: dict[str, Any] = {}
        for key in ("sandbox_id", "provider", "decision", "args_sha256", "call_id"):
            value = getattr(record, key)
            if value is not None:
                attrs[f"agent_sandbox.{key}"] = value
        for key, value in (record.result or {}).items():
            if isinstance(value, (str, bool, int, float)):
                attrs[f"agent_sandbox.result.{key}"] = value
        span.set_attributes(attrs)
        if record.error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", record.error.get("code") or record.error["type"])
            span.set_status(Status(StatusCode.ERROR, record.error.get("message", "")))
        elif (record.result or {}).get("is_error"):
            span.set_attribute("error.type", "tool_error")
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()

    def emit(self, event: dict[str, Any]) -> None:
        """A one-shot event (``AuditLog.record``) becomes a span of its own; spans of
        :meth:`AuditLog.span` blocks are handled by :meth:`begin`."""
        record = AuditRecord(
            op=event["op"],
            sandbox_id=event.get("sandbox_id"),
            provider=event.get("provider"),
            tool=event.get("tool"),
            call_id=event.get("call_id"),
            args_sha256=event.get("args_sha256"),
            decision=event.get("decision"),
            result=event.get("result"),
        )
        if event.get("error"):
            record.error = dict(event["error"])
        with self.begin(record, current=False):
            pass


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_chain`.

    Attributes:
        ok: every line parsed and chained.
        records: how many records were checked and found good.
        bad_line: 1-based number of the first bad line (``None`` when ok).
        reason: what is wrong with it.
        last_hash: the hash of the last good record (anchor it elsewhere to detect truncation).
    """

    ok: bool
    records: int
    bad_line: int | None = None
    reason: str = ""
    last_hash: str = GENESIS_HASH

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "records": self.records,
            "bad_line": self.bad_line,
            "reason": self.reason,
            "last_hash": self.last_hash,
        }


def verify_chain(path: str | Path, *, expect_last_hash: str | None = None) -> VerifyReport:
    """Check the hash chain of a JSONL audit file.

    Every line must be JSON with ``prev_hash`` equal to the previous line's ``hash`` (64 zeros
    on the first line) and ``hash`` recomputing from it. ``expect_last_hash`` (a hash noted
    elsewhere earlier) also catches lines cut off the end.

    Raises:
        FileNotFoundError: no such file.
    """
    prev = GENESIS_HASH
    count = 0
    seen_anchor = expect_last_hash is None
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return VerifyReport(False, count, number, "incomplete last line", prev)
            try:
                record = json.loads(raw)
            except ValueError as exc:
                return VerifyReport(False, count, number, f"not JSON: {exc}", prev)
            if not isinstance(record, dict) or "hash" not in record or "prev_hash" not in record:
                return VerifyReport(False, count, number, "no prev_hash/hash fields", prev)
            if record["prev_hash"] != prev:
                return VerifyReport(
                    False,
                    count,
                    number,
                    "prev_hash does not match the previous record's hash "
                    "(a record was removed, inserted or reordered)",
                    prev,
                )
            if _record_hash(prev, record) != record["hash"]:
                return VerifyReport(
                    False, count, number, "hash mismatch (the record was modified)", prev
                )
            prev = record["hash"]
            count += 1
            if prev == expect_last_hash:
                seen_anchor = True
    if not seen_anchor:
        return VerifyReport(
            False, count, None, "the expected last hash is not in the file (truncated?)", prev
        )
    return VerifyReport(True, count, None, "", prev)


def verify_main(argv: Sequence[str]) -> int:
    """``agent-sandbox audit verify FILE [--json] [--expect-hash H]``: 0 ok, 1 broken, 2 error."""
    parser = argparse.ArgumentParser(
        prog="agent-sandbox audit verify", description="Check the hash chain of an audit log."
    )
    parser.add_argument("file", help="the JSONL audit file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--expect-hash", help="a last hash noted earlier; its absence means truncation"
    )
    args = parser.parse_args(list(argv))
    try:
        report = verify_chain(args.file, expect_last_hash=args.expect_hash)
    except OSError as exc:
        message = f"cannot read {args.file}: {exc.strerror or exc}"
        if args.json:
            print(json.dumps({"ok": False, "error": message}))
        else:
            print(f"agent-sandbox: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict()))
    elif report.ok:
        print(f"OK: {report.records} records, chain intact; last hash {report.last_hash}")
    else:
        where = f"line {report.bad_line}" if report.bad_line is not None else "end of file"
        print(
            f"BROKEN at {where}: {report.reason} ({report.records} good records before it)",
        )
    return 0 if report.ok else 1


# -- the auditing backend ---------------------------------------------------------------------


def _exec_summary(result: ExecResult) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "exit_code": result.exit_code,
        "stdout_bytes": len(result.stdout_bytes),
        "stderr_bytes": len(result.stderr_bytes),
    }
    if result.signal is not None:
        summary["signal"] = result.signal
    if result.stdout_truncated or result.stderr_truncated:
        summary["truncated"] = True
    return summary


def _exec_arguments(command: Command, options: ExecOptions) -> dict[str, Any]:
    args: dict[str, Any] = {
        "command": command if isinstance(command, str) else list(command),
    }
    if options.cwd is not None:
        args["cwd"] = options.cwd
    if options.env:
        args["env"] = dict(options.env)
    if options.stdin is not None:
        args["stdin"] = options.stdin
    if options.timeout is not None:
        args["timeout"] = options.timeout
    if options.user is not None:
        args["user"] = options.user
    return args


class AuditingBackend(BaseBackend):
    """A backend that asks a policy before, and audits after, every operation of another one.

    Wraps ``inner`` (any :class:`BaseBackend`): create, connect, list, destroy, exec,
    exec_stream, file operations (including the derived ones, forwarded to ``inner``'s own
    versions), ports, snapshots, pause/resume and sweep each produce one audit event. Before an
    operation runs, ``policy`` decides; a denial raises
    :class:`~agent_sandbox.errors.PolicyDenied` and is audited with decision ``"deny"``.
    ``name``, ``capabilities`` and ``options`` are the inner backend's.

    Args:
        inner: the backend doing the work (closed by :meth:`aclose`).
        audit: where events go; ``None`` for policy only.
        policy: what is allowed; ``None`` allows everything.
        secrets: env variable names whose values are redacted in events (besides those whose
            names look secret).
    """

    def __init__(
        self,
        inner: BaseBackend,
        audit: AuditLog | None = None,
        policy: Policy | None = None,
        *,
        secrets: Iterable[str] = (),
    ) -> None:
        self.inner = inner
        self.audit = audit if audit is not None else AuditLog()
        self.policy = policy
        self.secrets = tuple(secrets)
        self.options = inner.options
        self.capabilities: Capabilities = inner.capabilities
        # name/Options are class variables of a provider; this wrapper takes the inner one's.
        setattr(self, "name", inner.name)  # noqa: B010
        setattr(self, "Options", inner.Options)  # noqa: B010

    def __repr__(self) -> str:
        return f"AuditingBackend({self.inner!r})"

    @contextlib.contextmanager
    def _guard(
        self,
        op: str,
        sandbox_id: str | None,
        arguments: dict[str, Any] | None,
        *,
        command: Command | None = None,
        path: str | None = None,
        current: bool = True,
    ) -> Iterator[AuditRecord]:
        with self.audit.span(
            op,
            sandbox_id=sandbox_id,
            provider=self.inner.name,
            arguments=arguments,
            secrets=self.secrets,
            current=current,
        ) as record:
            if self.policy is not None:
                decision = self.policy.decide(
                    Action(
                        op=op,
                        sandbox_id=sandbox_id,
                        input=arguments,
                        command=command
                        if command is None or isinstance(command, str)
                        else list(command),
                        path=path,
                    )
                )
                if not decision.allowed:
                    record.decision = "deny"
                    raise PolicyDenied(
                        f"denied by policy: {decision.reason}",
                        provider=self.inner.name,
                        op=op,
                        sandbox_id=sandbox_id,
                    )
            record.decision = "allow"
            yield record

    # -- primitives -------------------------------------------------------------------------

    def check_spec(self, spec: SandboxSpec) -> None:
        """The inner backend's check."""
        self.inner.check_spec(spec)

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create through the inner backend (policy op ``create``)."""
        arguments = spec.model_dump(mode="json", exclude_defaults=True)
        with self._guard("create", None, arguments) as record:
            info = await self.inner.create(spec)
            record.sandbox_id = info.id
            record.result = {"sandbox_id": info.id, "state": info.state}
        return info

    async def connect(self, sandbox_id: str) -> SandboxInfo:
        """Connect through the inner backend (policy op ``connect``)."""
        with self._guard("connect", sandbox_id, None) as record:
            info = await self.inner.connect(sandbox_id)
            record.result = {"state": info.state}
        return info

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SandboxInfo]:
        """List through the inner backend (policy op ``list``)."""
        with self._guard("list", None, {"labels": dict(labels or {})}) as record:
            found = await self.inner.list(labels)
            record.result = {"count": len(found)}
        return found

    async def destroy(self, sandbox_id: str) -> None:
        """Destroy through the inner backend (policy op ``destroy``)."""
        with self._guard("destroy", sandbox_id, None):
            await self.inner.destroy(sandbox_id)

    async def exec(self, sandbox_id: str, command: Command, options: ExecOptions) -> ExecResult:
        """Run through the inner backend's ``exec`` (policy op ``exec``, ``command`` checked)."""
        arguments = _exec_arguments(command, options)
        with self._guard("exec", sandbox_id, arguments, command=command) as record:
            result = await self.inner.exec(sandbox_id, command, options)
            record.result = _exec_summary(result)
        return result

    async def exec_stream(
        self, sandbox_id: str, command: Command, options: ExecOptions
    ) -> AsyncIterator[ExecEvent]:
        """Stream through the inner backend (policy op ``exec_stream``); audited when it ends."""
        arguments = _exec_arguments(command, options)
        # The span is not made current across yields: the consumer may close the stream from
        # another context than the one that started it.
        with self._guard(
            "exec_stream", sandbox_id, arguments, command=command, current=False
        ) as record:
            counts = {"stdout_bytes": 0, "stderr_bytes": 0}
            stream = self.inner.exec_stream(sandbox_id, command, options)
            try:
                async for event in stream:
                    if event.kind == "exit":
                        record.result = {"exit_code": event.exit_code, **counts}
                        if event.signal is not None:
                            record.result["signal"] = event.signal
                    else:
                        counts[f"{event.kind}_bytes"] += len(event.data)
                    yield event
            except GeneratorExit:
                record.result = {"closed_early": True, **counts}
                raise
            finally:
                await close_stream(stream)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        """Read through the inner backend (policy op ``read_file``, ``path`` checked)."""
        with self._guard("read_file", sandbox_id, {"path": path}, path=path) as record:
            data = await self.inner.read_file(sandbox_id, path)
            record.result = {"bytes": len(data)}
        return data

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Write through the inner backend (policy op ``write_file``, ``path`` checked)."""
        arguments = {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        with self._guard("write_file", sandbox_id, arguments, path=path) as record:
            await self.inner.write_file(sandbox_id, path, data)
            record.result = {"bytes": len(data)}

    async def aclose(self) -> None:
        """Close the inner backend."""
        await self.inner.aclose()

    # -- derived, forwarded to the inner backend's own versions ---------------------------------

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        """The inner backend's ``stat`` (policy op ``stat``)."""
        with self._guard("stat", sandbox_id, {"path": path}, path=path) as record:
            info = await self.inner.stat(sandbox_id, path)
            record.result = {"type": info.type, "bytes": info.size}
        return info

    async def exists(self, sandbox_id: str, path: str) -> bool:
        """The inner backend's ``exists`` (policy op ``exists``)."""
        with self._guard("exists", sandbox_id, {"path": path}, path=path) as record:
            found = await self.inner.exists(sandbox_id, path)
            record.result = {"exists": found}
        return found

    async def list_dir(self, sandbox_id: str, path: str) -> builtins.list[FileInfo]:
        """The inner backend's ``list_dir`` (policy op ``list_dir``)."""
        with self._guard("list_dir", sandbox_id, {"path": path}, path=path) as record:
            entries = await self.inner.list_dir(sandbox_id, path)
            record.result = {"entries": len(entries)}
        return entries

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool = False) -> None:
        """The inner backend's ``remove`` (policy op ``remove``)."""
        arguments = {"path": path, "recursive": recursive}
        with self._guard("remove", sandbox_id, arguments, path=path):
            await self.inner.remove(sandbox_id, path, recursive=recursive)

    async def mkdir(self, sandbox_id: str, path: str) -> None:
        """The inner backend's ``mkdir`` (policy op ``mkdir``)."""
        with self._guard("mkdir", sandbox_id, {"path": path}, path=path):
            await self.inner.mkdir(sandbox_id, path)

    async def upload(self, sandbox_id: str, local_dir: str | Path, remote_dir: str) -> None:
        """The inner backend's ``upload`` (policy op ``upload``, ``remote_dir`` checked)."""
        arguments = {"local_dir": str(local_dir), "path": remote_dir}
        with self._guard("upload", sandbox_id, arguments, path=remote_dir):
            await self.inner.upload(sandbox_id, local_dir, remote_dir)

    async def download(self, sandbox_id: str, remote_dir: str, local_dir: str | Path) -> None:
        """The inner backend's ``download`` (policy op ``download``, ``remote_dir`` checked)."""
        arguments = {"path": remote_dir, "local_dir": str(local_dir)}
        with self._guard("download", sandbox_id, arguments, path=remote_dir):
            await self.inner.download(sandbox_id, remote_dir, local_dir)

    async def sweep(
        self, *, now: datetime | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[str]:
        """The inner backend's ``sweep`` (policy op ``sweep``); the removed ids are the result."""
        with self._guard("sweep", None, None) as record:
            removed = await self.inner.sweep(now=now, labels=labels)
            record.result = {"removed": removed}
        return removed

    async def doctor(self) -> builtins.list[Diagnostic]:
        """The inner backend's checks (not audited: they touch no sandbox)."""
        return await self.inner.doctor()

    async def expose_port(self, sandbox_id: str, port: int) -> str:
        """The inner backend's ``expose_port`` (policy op ``expose_port``)."""
        with self._guard("expose_port", sandbox_id, {"port": port}) as record:
            url = await self.inner.expose_port(sandbox_id, port)
            record.result = {"url": url}
        return url

    async def snapshot(self, sandbox_id: str) -> str:
        """The inner backend's ``snapshot`` (policy op ``snapshot``)."""
        with self._guard("snapshot", sandbox_id, None) as record:
            snapshot_id = await self.inner.snapshot(sandbox_id)
            record.result = {"snapshot": snapshot_id}
        return snapshot_id

    async def pause(self, sandbox_id: str) -> None:
        """The inner backend's ``pause`` (policy op ``pause``)."""
        with self._guard("pause", sandbox_id, None):
            await self.inner.pause(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        """The inner backend's ``resume`` (policy op ``resume``)."""
        with self._guard("resume", sandbox_id, None):
            await self.inner.resume(sandbox_id)
