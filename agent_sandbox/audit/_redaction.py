"""Redaction: secrets out of audit events before any sink sees them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

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
        return redact_text(value, values)
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
    return redact_text(str(value), values)


def redact_text(text: str, values: list[str]) -> str:
    for secret in values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
