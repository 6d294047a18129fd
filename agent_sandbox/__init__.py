"""agent-sandbox: run an AI agent's tool calls in a sandbox you control, on any provider.

The public API lives here; import from ``agent_sandbox`` (and ``agent_sandbox.sync`` for the
blocking twin), not from submodules. Names are imported on first use, so ``import agent_sandbox``
costs almost nothing and a program pays only for the parts it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# name -> the module that defines it. A new public name is one line here and one in the
# TYPE_CHECKING block below (for type checkers and editors); tests/test_public_api.py checks both.
_EXPORTS: dict[str, str] = {
    "AuditLog": ".audit",
    "AuditingBackend": ".audit",
    "JsonlSink": ".audit",
    "LoggingSink": ".audit",
    "OtelSink": ".audit",
    "verify_chain": ".audit",
    "BaseBackend": ".backend",
    "ProviderOptions": ".backend",
    "SandboxBackend": ".backend",
    "ConfigWarning": ".config",
    "ArgumentTypeError": ".errors",
    "BlockingCallInEventLoop": ".errors",
    "AuthenticationError": ".errors",
    "CommandTimeout": ".errors",
    "ConfigError": ".errors",
    "FileNotFound": ".errors",
    "FileTooLarge": ".errors",
    "InvalidPath": ".errors",
    "IsADirectory": ".errors",
    "LeaseLost": ".errors",
    "OperationTimeout": ".errors",
    "PermissionDenied": ".errors",
    "PolicyDenied": ".errors",
    "ProcessNotFound": ".errors",
    "ProviderError": ".errors",
    "ProviderNotInstalled": ".errors",
    "ProviderUnavailable": ".errors",
    "QuotaExceeded": ".errors",
    "RateLimited": ".errors",
    "SandboxConflict": ".errors",
    "SandboxError": ".errors",
    "SandboxNotFound": ".errors",
    "SessionClosed": ".errors",
    "StdinClosed": ".errors",
    "UnsafeArchive": ".errors",
    "Unsupported": ".errors",
    "WorkNotFound": ".errors",
    "LocalBackend": ".local",
    "LocalOptions": ".local",
    "SandboxMCPServer": ".mcp",
    "Capabilities": ".models",
    "Command": ".models",
    "ExecEvent": ".models",
    "ExecOptions": ".models",
    "ExecResult": ".models",
    "FileInfo": ".models",
    "FoundFiles": ".models",
    "GrepMatch": ".models",
    "GrepResult": ".models",
    "NetworkPolicy": ".models",
    "ProcessInfo": ".models",
    "SandboxInfo": ".models",
    "SandboxSpec": ".models",
    "StartOptions": ".models",
    "Action": ".policy",
    "Decision": ".policy",
    "Policy": ".policy",
    "ExitStatus": ".process",
    "Process": ".process",
    "ProcessHandle": ".process",
    "Sandbox": ".sandbox",
    "Tool": ".tools",
    "ToolKit": ".tools",
    "ToolResult": ".tools",
    "Connector": ".tunnel",
    "Edge": ".tunnel",
    "RedisQueue": ".worker",
    "SQLiteQueue": ".worker",
    "Worker": ".worker",
}

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .audit import (  # noqa: I001 - one block per module, names re-exported with `as`
        AuditLog as AuditLog,
        AuditingBackend as AuditingBackend,
        JsonlSink as JsonlSink,
        LoggingSink as LoggingSink,
        OtelSink as OtelSink,
        verify_chain as verify_chain,
    )
    from .backend import (
        BaseBackend as BaseBackend,
        ProviderOptions as ProviderOptions,
        SandboxBackend as SandboxBackend,
    )
    from .config import (
        ConfigWarning as ConfigWarning,
    )
    from .errors import (
        ArgumentTypeError as ArgumentTypeError,
        BlockingCallInEventLoop as BlockingCallInEventLoop,
        AuthenticationError as AuthenticationError,
        CommandTimeout as CommandTimeout,
        ConfigError as ConfigError,
        FileNotFound as FileNotFound,
        FileTooLarge as FileTooLarge,
        InvalidPath as InvalidPath,
        IsADirectory as IsADirectory,
        LeaseLost as LeaseLost,
        OperationTimeout as OperationTimeout,
        PermissionDenied as PermissionDenied,
        PolicyDenied as PolicyDenied,
        ProcessNotFound as ProcessNotFound,
        ProviderError as ProviderError,
        ProviderNotInstalled as ProviderNotInstalled,
        ProviderUnavailable as ProviderUnavailable,
        QuotaExceeded as QuotaExceeded,
        RateLimited as RateLimited,
        SandboxConflict as SandboxConflict,
        SandboxError as SandboxError,
        SandboxNotFound as SandboxNotFound,
        SessionClosed as SessionClosed,
        StdinClosed as StdinClosed,
        UnsafeArchive as UnsafeArchive,
        Unsupported as Unsupported,
        WorkNotFound as WorkNotFound,
    )
    from .local import (
        LocalBackend as LocalBackend,
        LocalOptions as LocalOptions,
    )
    from .mcp import (
        SandboxMCPServer as SandboxMCPServer,
    )
    from .models import (
        Capabilities as Capabilities,
        Command as Command,
        ExecEvent as ExecEvent,
        ExecOptions as ExecOptions,
        ExecResult as ExecResult,
        FileInfo as FileInfo,
        FoundFiles as FoundFiles,
        GrepMatch as GrepMatch,
        GrepResult as GrepResult,
        NetworkPolicy as NetworkPolicy,
        ProcessInfo as ProcessInfo,
        SandboxInfo as SandboxInfo,
        SandboxSpec as SandboxSpec,
        StartOptions as StartOptions,
    )
    from .policy import (
        Action as Action,
        Decision as Decision,
        Policy as Policy,
    )
    from .process import (
        ExitStatus as ExitStatus,
        Process as Process,
        ProcessHandle as ProcessHandle,
    )
    from .sandbox import (
        Sandbox as Sandbox,
    )
    from .tools import (
        Tool as Tool,
        ToolKit as ToolKit,
        ToolResult as ToolResult,
    )
    from .tunnel import (
        Connector as Connector,
        Edge as Edge,
    )
    from .worker import (
        RedisQueue as RedisQueue,
        SQLiteQueue as SQLiteQueue,
        Worker as Worker,
    )

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, then keep it here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
