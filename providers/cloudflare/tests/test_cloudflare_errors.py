"""The Worker's error answers and transport failures as agent-sandbox's typed errors."""

from __future__ import annotations

import httpx
import pytest
from agent_sandbox_cloudflare._api import BridgeError, table

from agent_sandbox import errors
from agent_sandbox.errors import translate


def _translate(exc: Exception, op: str = "exec") -> errors.SandboxError:
    return translate(exc, provider="cloudflare", op=op, sandbox_id="abc", table=table)


@pytest.mark.parametrize(
    ("status", "code", "message", "expected", "retryable"),
    [
        (401, "unauthorized", "Unauthorized", errors.AuthenticationError, False),
        (400, "invalid_request", "Invalid port", errors.ConfigError, False),
        (
            403,
            "invalid_request",
            "cwd must resolve to a location within /workspace",
            errors.ConfigError,
            False,
        ),
        (404, "sandbox_not_found", "no sandbox abc", errors.SandboxNotFound, False),
        (404, "process_not_found", "no process p-1", errors.ProcessNotFound, False),
        (404, "cwd_not_found", "working directory not found", errors.FileNotFound, False),
        (409, "conflict", "stdin of process p-1 is closed", errors.StdinClosed, False),
        (409, "conflict", "process p-1 has ended", errors.StdinClosed, False),
        (409, "conflict", "process p-1 already exists", errors.SandboxConflict, False),
        (503, "capacity_exceeded", "instance limit reached", errors.QuotaExceeded, True),
        (502, "pool_error", "pool error: boom", errors.ProviderUnavailable, True),
        (502, "exec_transport_error", "exec failed", errors.ProviderUnavailable, True),
        (502, "session_error", "session create failed", errors.ProviderUnavailable, True),
        (502, "exec_error", "unexpected answer", errors.ProviderError, False),
        (502, "tunnel_error", "tunnel failed: cloudflared", errors.ProviderError, False),
        (502, "workspace_archive_read_error", "tar failed", errors.ProviderError, False),
        (502, "workspace_archive_write_error", "tar extract failed", errors.ProviderError, False),
        (500, "", "Internal Server Error", errors.ProviderUnavailable, True),
        (429, "", "Too Many Requests", errors.RateLimited, True),
    ],
)
def test_worker_error_codes(
    status: int, code: str, message: str, expected: type[errors.SandboxError], retryable: bool
) -> None:
    err = _translate(BridgeError(status, code, message))
    assert type(err) is expected
    assert err.retryable is retryable
    assert (err.provider, err.op, err.sandbox_id) == ("cloudflare", "exec", "abc")
    assert message in str(err)


def test_transport_failures() -> None:
    request = httpx.Request("GET", "https://worker.example/asb/v1/sandboxes")
    timeout = _translate(httpx.ReadTimeout("slow", request=request))
    assert isinstance(timeout, errors.OperationTimeout)
    assert timeout.retryable
    refused = _translate(httpx.ConnectError("refused", request=request))
    assert isinstance(refused, errors.ProviderUnavailable)
    assert refused.retryable
    other = _translate(RuntimeError("surprise"))
    assert type(other) is errors.ProviderError
    assert not other.retryable
