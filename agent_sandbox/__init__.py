"""agent-sandbox: run an AI agent's tool calls in a sandbox you control, on any provider.

The public API lives here; import from ``agent_sandbox`` (and ``agent_sandbox.sync`` for the
blocking twin), not from submodules.
"""

from ._version import __version__
from .audit import AuditingBackend, AuditLog, JsonlSink, LoggingSink, OtelSink, verify_chain
from .backend import BaseBackend, ProviderOptions, SandboxBackend
from .config import ConfigWarning
from .errors import (
    ArgumentTypeError,
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
    UnsafeArchive,
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
from .policy import Action, Decision, Policy
from .sandbox import Sandbox
from .tools import ToolKit, ToolResult

__all__ = [
    "Action",
    "ArgumentTypeError",
    "AuditLog",
    "AuditingBackend",
    "AuthenticationError",
    "BaseBackend",
    "Capabilities",
    "Command",
    "CommandTimeout",
    "ConfigError",
    "ConfigWarning",
    "Decision",
    "ExecEvent",
    "ExecOptions",
    "ExecResult",
    "FileInfo",
    "FileNotFound",
    "InvalidPath",
    "IsADirectory",
    "JsonlSink",
    "LoggingSink",
    "NetworkPolicy",
    "OperationTimeout",
    "OtelSink",
    "PermissionDenied",
    "Policy",
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
    "ToolKit",
    "ToolResult",
    "UnsafeArchive",
    "Unsupported",
    "__version__",
    "verify_chain",
]
