"""Vercel's exceptions as agent-sandbox errors (the rows :func:`errors.translating` lacks)."""

from __future__ import annotations

from agent_sandbox.errors import (
    AuthenticationError,
    ConfigError,
    FileNotFound,
    IsADirectory,
    OperationTimeout,
    PermissionDenied,
    ProviderError,
    ProviderUnavailable,
    SandboxError,
    SandboxNotFound,
    StdinClosed,
    translate,
)

NAME = "vercel"

_GONE = ("sandbox_stopped", "sandbox_stopping", "sandbox_not_found")


def rows(exc: Exception, lower: str) -> SandboxError | None:
    """Vercel-specific rows: in-band codes, the SDK's own error types, its HTTP client."""
    import httpx2
    from vercel.sandbox import (
        SandboxApiError,
        SandboxCredentialsError,
        SandboxFilesystemWriteError,
        SandboxPathNotFoundError,
        SandboxStdinError,
        SandboxStreamError,
        SandboxTerminalStateError,
        SandboxTimeoutError,
    )

    if isinstance(exc, SandboxCredentialsError):
        return AuthenticationError(
            f"no Vercel credentials: set VERCEL_OIDC_TOKEN, or VERCEL_TOKEN, VERCEL_TEAM_ID and "
            f"VERCEL_PROJECT_ID ({exc})"
        )
    if isinstance(exc, SandboxApiError | SandboxStreamError) and exc.code in _GONE:
        return SandboxNotFound(f"the sandbox is stopped or gone: {exc}")
    if isinstance(exc, SandboxStreamError):
        return ProviderUnavailable(f"Vercel interrupted the stream: {exc}")
    if isinstance(exc, SandboxApiError):
        if exc.code == "snapshot_not_found":
            return SandboxNotFound(f"no such snapshot: {exc}")
        if exc.code == "command_stdin_unavailable":
            return StdinClosed(f"the process takes no more input: {exc}")
        if exc.status_code == 403 and "permission denied" in lower:
            return PermissionDenied(str(exc))
        if exc.status_code == 400 and "is a directory" in lower:
            return IsADirectory(str(exc))
        if exc.status_code == 413:
            return ConfigError(f"Vercel refused a request body that large: {exc}")
        return None  # the shared HTTP status rows
    if isinstance(exc, SandboxStdinError):
        cause = exc.cause
        if isinstance(cause, SandboxApiError) and cause.status_code in (400, 404):
            return StdinClosed(f"the process takes no more input: {exc}")
        if isinstance(cause, Exception):
            return translate(cause, provider=NAME, op="write_stdin", table=rows)
        return StdinClosed(str(exc))
    if isinstance(exc, SandboxPathNotFoundError):
        return FileNotFound(f"no such file or directory: {exc.path}")
    if isinstance(exc, SandboxFilesystemWriteError):
        return translate(exc.cause, provider=NAME, op="write_file", table=rows)
    if isinstance(exc, SandboxTerminalStateError):
        return ProviderError(f"the Vercel sandbox did not start (status {exc.status})")
    if isinstance(exc, SandboxTimeoutError | httpx2.TimeoutException):
        return OperationTimeout(f"Vercel did not answer in time: {exc}")
    if isinstance(exc, httpx2.TransportError):
        return ProviderUnavailable(f"cannot reach Vercel: {exc}")
    return None
