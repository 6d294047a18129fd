"""agent-sandbox: run an AI agent's tool calls in a sandbox you control, on any provider.

The public API lives here; import from ``agent_sandbox`` (and ``agent_sandbox.sync`` for the
blocking twin), not from submodules.
"""

from .backend import BaseBackend, ProviderOptions, SandboxBackend
from .errors import (
    AuthenticationError,
    CommandTimeout,
    ConfigError,
    FileNotFound,
    InvalidPath,
    IsADirectory,
    OperationTimeout,
    PermissionDenied,
    PolicyDenied,
    ProviderError,
    ProviderNotInstalled,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
    Unsupported,
)
from .models import (
    Capabilities,
    Command,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    NetworkPolicy,
    SandboxInfo,
    SandboxSpec,
)
from .sandbox import Sandbox

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BaseBackend",
    "Capabilities",
    "Command",
    "CommandTimeout",
    "ConfigError",
    "ExecEvent",
    "ExecOptions",
    "ExecResult",
    "FileInfo",
    "FileNotFound",
    "InvalidPath",
    "IsADirectory",
    "NetworkPolicy",
    "OperationTimeout",
    "PermissionDenied",
    "PolicyDenied",
    "ProviderError",
    "ProviderNotInstalled",
    "ProviderOptions",
    "ProviderUnavailable",
    "QuotaExceeded",
    "RateLimited",
    "Sandbox",
    "SandboxBackend",
    "SandboxConflict",
    "SandboxError",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxSpec",
    "Unsupported",
    "__version__",
]
