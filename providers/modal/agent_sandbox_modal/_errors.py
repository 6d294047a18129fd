"""Modal's exceptions as agent-sandbox errors: the provider's rows for
:func:`agent_sandbox.errors.translating`.

The SDK turns gRPC statuses into ``modal.exception`` classes (``modal/_grpc_client.py``:
``UNAUTHENTICATED`` -> ``AuthError``, ``NOT_FOUND`` -> ``NotFoundError``, ``FAILED_PRECONDITION``
-> ``ConflictError``, ``UNAVAILABLE`` -> ``ServiceError``, ...) and filesystem failures into
``SandboxFilesystem*Error``; each is mapped here, ``retryable`` where trying again may help
(unavailable, internal, rate-limited, out of capacity).
"""

from __future__ import annotations

from agent_sandbox.errors import (
    AuthenticationError,
    ConfigError,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    OperationTimeout,
    PermissionDenied,
    ProcessNotFound,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
    StdinClosed,
    Unsupported,
)

NAME = "modal"
_GONE = ("already finished", "has finished", "terminated", "shut down", "not running")


def rows(exc: Exception, lower: str) -> SandboxError | None:
    """The agent-sandbox error for one of the SDK's exceptions; ``None`` for any other."""
    from modal import exception as e

    message = str(exc) or type(exc).__name__
    found = _filesystem(exc, message)
    if found is not None:
        return found
    if isinstance(exc, e.AuthError):
        return AuthenticationError(f"Modal rejected the credentials: {message}")
    if isinstance(exc, e.PermissionDeniedError):
        return AuthenticationError(f"Modal refused the request: {message}")
    if isinstance(exc, e.NotFoundError):
        return SandboxNotFound(message)
    if isinstance(exc, e.AlreadyExistsError):
        return SandboxConflict(message)
    if isinstance(exc, e.ConflictError):
        if "no such file or directory" in lower:
            return FileNotFound(message)
        if "stdin" in lower:
            return StdinClosed(message)
        if any(word in lower for word in _GONE):
            return SandboxNotFound(message)
        return ProviderError(f"Modal refused the request: {message}")
    if isinstance(exc, e.ImageBuildError):
        return ConfigError(f"Modal could not build the image: {message}")
    if isinstance(exc, e.InvalidError):
        return ConfigError(f"Modal refused the request: {message}")
    if isinstance(exc, e.ResourceExhaustedError):
        if "rate" in lower or "too many" in lower:
            return RateLimited(f"Modal rate limit: {message}")
        if "capacity" in lower:
            return ProviderUnavailable(f"Modal is out of capacity: {message}")
        return QuotaExceeded(f"Modal quota exhausted: {message}")
    if isinstance(exc, e.UnimplementedError):
        return Unsupported(f"Modal does not implement this: {message}")
    if isinstance(exc, (e.ServiceError, e.InternalError, e.ConnectionError)):
        return ProviderUnavailable(f"Modal is unavailable: {message}")
    if isinstance(exc, e.SandboxTerminatedError):
        return SandboxNotFound(f"the sandbox was terminated: {message}")
    if isinstance(exc, e.TimeoutError):
        return OperationTimeout(f"Modal did not answer in time: {message}")
    if isinstance(exc, e.ClientClosed):
        if "detached sandbox" in lower:
            # This client let the sandbox go: it destroyed it, or its backend was closed.
            return SandboxNotFound(f"this client no longer holds the sandbox: {message}")
        return ProviderError(f"the Modal client is closed: {message}")
    return None


def _filesystem(exc: Exception, message: str) -> SandboxError | None:
    from modal import exception as e

    if not isinstance(exc, e.SandboxFilesystemError):
        return None
    if isinstance(exc, e.SandboxFilesystemNotFoundError):
        return FileNotFound(message)
    if isinstance(exc, e.SandboxFilesystemIsADirectoryError):
        return IsADirectory(message)
    if isinstance(exc, e.SandboxFilesystemNotADirectoryError):
        return InvalidPath(message)
    if isinstance(exc, e.SandboxFilesystemPermissionError):
        return PermissionDenied(message)
    if isinstance(exc, e.SandboxFilesystemFileTooLargeError):
        return FileTooLarge(message)
    if isinstance(exc, e.SandboxFilesystemDirectoryNotEmptyError):
        return InvalidPath(f"{message} (remove it with recursive=True)")
    if isinstance(exc, e.SandboxFilesystemPathAlreadyExistsError):
        return InvalidPath(f"{message} (and is not a directory)")
    return ProviderError(message)


def process_not_found(ref: str, sandbox_id: str) -> ProcessNotFound:
    """The error for a ref no command in the sandbox has."""
    return ProcessNotFound(
        f"no process {ref!r} in sandbox {sandbox_id}",
        provider=NAME,
        op="attach",
        sandbox_id=sandbox_id,
    )
