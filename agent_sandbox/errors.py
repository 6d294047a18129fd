"""The error hierarchy.

Every error raised by agent-sandbox is a :class:`SandboxError` with a stable ``code`` a program can
branch on and a ``retryable`` flag. Each subclass also derives from the stdlib exception a Python
user would catch anyway (``FileNotFoundError``, ``TimeoutError``, ...). A provider's own exceptions
never escape raw: adapters translate them and keep the original as ``__cause__``.
"""

from __future__ import annotations

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
