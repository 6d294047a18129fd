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
``tool``, ``call_id``, ``args_sha256`` (of the canonical JSON of the arguments *after*
redaction: :meth:`AuditLog.digest` matches it to a known input, and it cannot confirm a guessed
secret), ``arguments`` with secrets redacted, ``decision``, ``result``, ``duration_ms``,
``trace_id`` and ``error``.

:class:`JsonlSink` chains records: each carries the previous record's ``hash`` as ``prev_hash``
and its own ``hash`` (SHA-256 of ``prev_hash`` and the canonical record), so an edited, inserted
or deleted line shows; :func:`verify_chain` (``agent-sandbox audit verify FILE``) checks a file.

:class:`AuditingBackend` wraps any backend so that every sandbox operation is asked of a
:class:`~agent_sandbox.policy.Policy` first and audited after.
"""

from __future__ import annotations

from ._backend import AuditingBackend
from ._chain import GENESIS_HASH, VerifyReport, verify_chain, verify_main
from ._log import AuditLog, AuditRecord, Sink, canonical_json
from ._redaction import REDACTED, looks_secret, redact
from ._sinks import JsonlSink, LoggingSink, OtelSink

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
    "looks_secret",
    "redact",
    "verify_chain",
    "verify_main",
]
