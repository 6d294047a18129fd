"""Ownership labels: every sandbox says who made it and when it expires, so sweeps can find it."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from .models import SandboxInfo, SandboxSpec

MANAGED = "agent-sandbox.managed"
OWNER = "agent-sandbox.owner"
CREATED_AT = "agent-sandbox.created-at"
EXPIRES_AT = "agent-sandbox.expires-at"
# Written by providers, not by stamp():
PROVIDER = "agent-sandbox.provider"
"""Which provider made a resource (where one engine or account holds others' too)."""
WORKDIR = "agent-sandbox.workdir"
"""The sandbox's workdir, where the vendor does not keep one."""
USER = "agent-sandbox.user"
"""The sandbox's default user, where the vendor does not keep one."""
CREATE_KEY = "agent-sandbox.create-key"
"""One value per ``create`` call, reused by its retries: finds what a failed attempt made."""
SNAPSHOT_OF = "agent-sandbox.snapshot-of"
ROLE = "agent-sandbox.role"
"""A helper resource's role beside a sandbox (e.g. ``egress-proxy``)."""
EGRESS = "agent-sandbox.egress"
INTERNAL = frozenset({WORKDIR, USER, CREATE_KEY})
"""Labels a provider keeps for itself, never shown in ``SandboxInfo.labels``."""


def public(labels: Mapping[str, str], *hidden: str) -> dict[str, str]:
    """``labels`` without :data:`INTERNAL` ones (nor ``hidden``, a vendor's own)."""
    return {k: v for k, v in labels.items() if k not in INTERNAL and k not in hidden}


def default_owner() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def stamp(spec: SandboxSpec, owner: str, now: datetime | None = None) -> SandboxSpec:
    """Return ``spec`` with the managed, owner, created-at and expires-at labels added.

    Labels the caller set under the same keys are overwritten: these four are ours.
    """
    now = now or datetime.now(timezone.utc)
    expires = now + timedelta(seconds=spec.ttl_seconds)
    labels = {
        **spec.labels,
        MANAGED: "true",
        OWNER: owner,
        CREATED_AT: now.isoformat(timespec="seconds"),
        EXPIRES_AT: expires.isoformat(timespec="seconds"),
    }
    return spec.model_copy(update={"labels": labels})


def expires_at(labels: dict[str, str]) -> datetime | None:
    """The expiry written by :func:`stamp`, or ``None`` when absent or unreadable."""
    raw = labels.get(EXPIRES_AT)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def created_at(labels: dict[str, str]) -> datetime | None:
    """The creation time written by :func:`stamp`, or ``None``."""
    raw = labels.get(CREATED_AT)
    try:
        return datetime.fromisoformat(raw) if raw else None
    except ValueError:
        return None


def is_expired(info: SandboxInfo, now: datetime | None = None) -> bool:
    """True when the sandbox's expiry (info or label) has passed."""
    now = now or datetime.now(timezone.utc)
    when = info.expires_at or expires_at(info.labels)
    return when is not None and when <= now
