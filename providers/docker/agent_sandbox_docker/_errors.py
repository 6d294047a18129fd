"""Translation of docker-py and transport exceptions into agent-sandbox's typed errors."""

from __future__ import annotations

from typing import Any

from agent_sandbox.errors import (
    ConfigError,
    FileNotFound,
    PermissionDenied,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
)

PROVIDER = "docker"


def unreachable(base_url: str, cause: BaseException | None = None, **where: Any) -> SandboxError:
    """The error for an engine that does not answer."""
    detail = f" ({cause})" if cause is not None and str(cause) else ""
    return ProviderUnavailable(
        f"Docker engine not reachable at {base_url}: is dockerd running?{detail}",
        provider=PROVIDER,
        **where,
    )


def translate(
    exc: BaseException,
    *,
    base_url: str,
    op: str,
    sandbox_id: str | None = None,
    path: str | None = None,
) -> SandboxError:
    """Map any exception raised by docker-py (or requests/urllib3 under it) to a SandboxError."""
    import docker.errors  # type: ignore[import-untyped,unused-ignore]
    import requests.exceptions

    where: dict[str, Any] = {"provider": PROVIDER, "op": op, "sandbox_id": sandbox_id}
    if isinstance(exc, SandboxError):
        return exc
    if isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError)):
        return unreachable(base_url, exc, op=op, sandbox_id=sandbox_id)
    if isinstance(exc, requests.exceptions.Timeout):
        return ProviderUnavailable(
            f"Docker engine at {base_url} did not answer in time ({exc})", **where
        )
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        text = str(exc.explanation or exc)
        lower = text.lower()
        if status == 404:
            if "no such container" in lower:
                return SandboxNotFound(
                    f"sandbox {sandbox_id} not found (no such container)", **where
                )
            if path is not None:
                return FileNotFound(f"no such file or directory: {path}", **where)
            if "no such image" in lower or isinstance(exc, docker.errors.ImageNotFound):
                return ConfigError(f"image not found: {text}", **where)
            return SandboxNotFound(f"sandbox {sandbox_id} not found (no such container)", **where)
        if path is not None and ("not a directory" in lower or "no such file" in lower):
            return FileNotFound(f"no such file or directory: {path} ({text})", **where)
        if "is not running" in lower or "removal in progress" in lower:
            return SandboxNotFound(
                f"sandbox {sandbox_id} is not running (its TTL ran out or it was destroyed)",
                **where,
            )
        if status == 409:
            if "is paused" in lower:
                return SandboxConflict(f"sandbox {sandbox_id} is paused: {text}", **where)
            return SandboxConflict(f"conflict: {text}", **where)
        if status == 403 or "read-only" in lower or "permission denied" in lower:
            return PermissionDenied(f"{op}{' ' + path if path else ''}: {text}", **where)
        if status == 400:
            return ConfigError(f"the Docker engine rejected the request: {text}", **where)
        if "no space left" in lower:
            return QuotaExceeded(f"{op}: {text}", **where)
        return ProviderError(f"Docker engine error during {op}: {text}", **where)
    if isinstance(exc, docker.errors.DockerException):
        lower = str(exc).lower()
        if "connection" in lower or "fetching server api version" in lower:
            return unreachable(base_url, exc, op=op, sandbox_id=sandbox_id)
        return ProviderError(f"docker client error during {op}: {exc}", **where)
    if isinstance(exc, OSError):
        return unreachable(base_url, exc, op=op, sandbox_id=sandbox_id)
    return ProviderError(f"unexpected error during {op}: {exc!r}", **where)
