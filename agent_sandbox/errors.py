"""The error hierarchy.

Every error raised by agent-sandbox is a :class:`SandboxError` with a stable ``code`` a program can
branch on and a ``retryable`` flag. Each subclass also derives from the stdlib exception a Python
user would catch anyway (``FileNotFoundError``, ``TimeoutError``, ...). A provider's own exceptions
never escape raw: adapters translate them and keep the original as ``__cause__``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar


class SandboxError(Exception):
    """Root of all agent-sandbox errors.

    Attributes:
        code: stable machine-readable identifier, e.g. ``"file_not_found"``.
        retryable: whether the same call may succeed if simply tried again.
        provider: the provider that failed, when known.
        op: the operation that failed (``"exec"``, ``"read_file"``, ...), when known.
        sandbox_id: the sandbox concerned, when known.
    """

    code: ClassVar[str] = "sandbox_error"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        provider: str | None = None,
        op: str | None = None,
        sandbox_id: str | None = None,
    ) -> None:
        Exception.__init__(self, message)
        self.message = message
        self.retryable = self.default_retryable if retryable is None else retryable
        self.provider = provider
        self.op = op
        self.sandbox_id = sandbox_id

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.__dict__))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (code, message, retryable, provider, op, sandbox_id)."""
        return {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "provider": self.provider,
            "op": self.op,
            "sandbox_id": self.sandbox_id,
        }


def _rebuild(cls: type[SandboxError], message: str, state: dict[str, Any]) -> SandboxError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class SandboxNotFound(SandboxError, LookupError):
    """The sandbox does not exist (never did, was destroyed, or expired)."""

    code = "sandbox_not_found"


class ProcessNotFound(SandboxError, LookupError):
    """No process with that ref in the sandbox (it never existed, or the sandbox ended)."""

    code = "process_not_found"


class StdinClosed(SandboxError, BrokenPipeError):
    """A process's stdin was written after it was closed (or the process ended)."""

    code = "stdin_closed"


class FileNotFound(SandboxError, FileNotFoundError):
    """A path inside the sandbox does not exist."""

    code = "file_not_found"


class IsADirectory(SandboxError, IsADirectoryError):
    """A file operation was given a directory."""

    code = "is_a_directory"


class PermissionDenied(SandboxError, PermissionError):
    """The sandbox refused the operation (read-only path, missing permission)."""

    code = "permission_denied"


class FileTooLarge(SandboxError, OSError):
    """A file is larger than the read limit (``max_bytes``); nothing of it was kept."""

    code = "file_too_large"


class PolicyDenied(SandboxError, PermissionError):
    """The configured :class:`~agent_sandbox.policy.Policy` refused the operation before it ran."""

    code = "policy_denied"


class InvalidPath(SandboxError, ValueError):
    """A path is malformed (empty, NUL byte) or escapes where it must stay."""

    code = "invalid_path"


class UnsafeArchive(SandboxError, ValueError):
    """An archive read from a sandbox broke the extraction rules or limits (a member leaving the
    target, a device file, too many members or bytes). The download's target is left as it was,
    unless the message says which links it removed after merging."""

    code = "unsafe_archive"


class CommandTimeout(SandboxError, TimeoutError):
    """A command ran past its timeout; its process tree was killed.

    ``stdout`` and ``stderr`` hold what it printed before that (within the output limit).
    """

    code = "command_timeout"

    def __init__(
        self,
        message: str,
        *,
        timeout: float | None = None,
        stdout: bytes = b"",
        stderr: bytes = b"",
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr


class OperationTimeout(SandboxError, TimeoutError):
    """A provider operation (create, file transfer, API call) did not finish in time."""

    code = "operation_timeout"
    default_retryable = True


class Unsupported(SandboxError, NotImplementedError):
    """The provider cannot do this (see its ``Capabilities``)."""

    code = "unsupported"


class ConfigError(SandboxError, ValueError):
    """Configuration or arguments are invalid: unknown option, bad value, unknown provider."""

    code = "config_error"


class ArgumentTypeError(ConfigError, TypeError):
    """An argument has the wrong type (bytes where a ``str`` command is expected, ...)."""

    code = "argument_type"


class BlockingCallInEventLoop(SandboxError, RuntimeError):
    """A blocking (``agent_sandbox.sync``) call was made from inside a running event loop,
    which it would stall: use the async API there."""

    code = "blocking_call_in_event_loop"


class ProviderNotInstalled(SandboxError, ImportError):
    """The provider's package is not installed; the message names the ``pip install`` to run."""

    code = "provider_not_installed"


class ProviderUnavailable(SandboxError, ConnectionError):
    """The provider could not be reached (daemon down, network error, 5xx)."""

    code = "provider_unavailable"
    default_retryable = True


class AuthenticationError(SandboxError, PermissionError):
    """The provider rejected the credentials, or none were found."""

    code = "authentication_failed"


class RateLimited(SandboxError):
    """The provider asked us to slow down."""

    code = "rate_limited"
    default_retryable = True


class QuotaExceeded(SandboxError):
    """An account or resource quota is exhausted (sandboxes, CPU, memory, disk)."""

    code = "quota_exceeded"


class SandboxConflict(SandboxError, FileExistsError):
    """A sandbox with that name or id already exists."""

    code = "conflict"


class ProviderError(SandboxError):
    """The provider failed in a way no more specific error describes."""

    code = "provider_error"


class LeaseLost(SandboxConflict):
    """A worker's lease on a session belongs to someone else now (a stale heartbeat, or the item
    went back to the queue): the worker must stop serving the session at once."""

    code = "lease_lost"


class WorkNotFound(SandboxError, LookupError):
    """No such work item or session in the worker's queue."""

    code = "work_not_found"


class SessionClosed(SandboxError):
    """The worker session is closed: it takes no more tool calls."""

    code = "session_closed"


# -- translating a provider's exceptions ---------------------------------------------------------

Table = Callable[[Exception, str], "SandboxError | None"]
"""A provider's own rows: ``(exception, lowercased message) -> error``, ``None`` for "not mine"."""

_FILE_OPS = ("read_file", "write_file", "stat", "list_dir", "remove", "mkdir")


def from_status(status: int | None, message: str, *, op: str | None = None) -> SandboxError | None:
    """The shared rows of an HTTP status (401, 403, 404, 409, 429, 400/422, 5xx); ``None`` for
    anything else. A 404 on a file operation is a missing file, elsewhere a missing sandbox; a 403
    that speaks of a limit or quota is a quota."""
    if status is None:
        return None
    lower = message.lower()
    if status == 401:
        return AuthenticationError(f"the provider rejected the credentials: {message}")
    if status == 403:
        if "quota" in lower or "limit" in lower:
            return QuotaExceeded(message)
        return AuthenticationError(f"the provider refused the request: {message}")
    if status == 404:
        if op in _FILE_OPS:
            return FileNotFound(message)
        return SandboxNotFound(message)
    if status == 409:
        return SandboxConflict(message)
    if status == 429:
        return RateLimited(message)
    if status in (400, 422):
        return ConfigError(f"the provider refused the request: {message}")
    if status >= 500:
        return ProviderUnavailable(f"the provider answered {status}: {message}")
    return None


def _status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (read only when the provider's table has no
    row for it: some SDKs warn when it is read)."""
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def translate(
    exc: BaseException,
    *,
    provider: str,
    op: str,
    sandbox_id: str | None = None,
    table: Table | None = None,
) -> SandboxError:
    """``exc`` as a :class:`SandboxError` naming where it happened: ours as they are, else the
    provider's ``table``, else its HTTP status (a ``status_code`` or ``status`` attribute), else
    timeouts and connection failures, else ``ProviderError``."""
    if isinstance(exc, SandboxError):
        err = exc
    else:
        message = str(exc) or type(exc).__name__
        found = (
            table(exc, message.lower())
            if table is not None and isinstance(exc, Exception)
            else None
        )
        err = (
            found
            or from_status(_status(exc), message, op=op)
            or _transport(exc, message)
            or ProviderError(f"{provider} {op} failed: {message}")
        )
    err.provider = err.provider or provider
    err.op = err.op or op
    err.sandbox_id = err.sandbox_id or sandbox_id
    return err


def _transport(exc: BaseException, message: str) -> SandboxError | None:
    if isinstance(exc, TimeoutError):
        return OperationTimeout(f"the provider did not answer in time: {message}")
    if isinstance(exc, (ConnectionError, OSError)):
        return ProviderUnavailable(f"cannot reach the provider: {message}")
    return None


@contextlib.contextmanager
def translating(
    provider: str, op: str, sandbox_id: str | None = None, *, table: Table | None = None
) -> Iterator[None]:
    """Raise whatever the block raises as a :class:`SandboxError` (see :func:`translate`), the
    original kept as ``__cause__``::

        with translating("acme", "read_file", sandbox_id, table=ACME_ROWS):
            data = await client.files.read(path)
    """
    try:
        yield
    except Exception as exc:
        err = translate(exc, provider=provider, op=op, sandbox_id=sandbox_id, table=table)
        if err is exc:
            raise
        raise err from exc
