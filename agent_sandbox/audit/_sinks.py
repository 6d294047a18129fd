"""Where audit events go: a hash-chained JSONL file, Python logging, OpenTelemetry spans."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ProviderNotInstalled
from ._chain import last_hash, record_hash
from ._log import AuditRecord, canonical_json


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
        ConfigError: the file cannot be opened, or exists and its last line is not a chained
            record (a ``ValueError``).
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd = self._read_fd = -1
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o600)
            self._read_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            with self._flocked():
                self._prev = last_hash(self._read_fd)
                self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            self.close()
            raise ConfigError(
                f"cannot open the audit file {self.path}: {exc.strerror or exc}"
            ) from exc
        except ValueError as exc:
            self.close()
            raise ConfigError(
                f"{self.path} is not an audit log this sink can continue ({exc}); check it with "
                f"'agent-sandbox audit verify {self.path}', or write to a new file"
            ) from exc
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
                    self._prev = last_hash(self._read_fd)
                record = dict(event)
                record.pop("hash", None)
                record["prev_hash"] = self._prev
                record["hash"] = record_hash(self._prev, record)
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
