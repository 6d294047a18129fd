"""Daytona's failures, injected into the fake, come out as agent-sandbox's typed errors."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from agent_sandbox_daytona import DaytonaBackend, DaytonaOptions
from fake_daytona import FakeDaytona
from vendor_fixtures import status_cases

from agent_sandbox.errors import (
    AuthenticationError,
    ConfigError,
    FileNotFound,
    OperationTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxError,
    SandboxNotFound,
    Unsupported,
)
from agent_sandbox.models import ExecOptions, SandboxSpec

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(fake_daytona: FakeDaytona) -> AsyncIterator[DaytonaBackend]:
    b = DaytonaBackend(DaytonaOptions(api_key=fake_daytona.api_key, api_url=fake_daytona.api_url))
    try:
        yield b
    finally:
        for info in await b.list({"suite": "errors"}):
            await b.destroy(info.id)
        await b.aclose()


SPEC = SandboxSpec(labels={"suite": "errors"})


def _named(fake: FakeDaytona) -> list[str]:
    """This suite's sandboxes that are not (being) deleted."""
    return [s.id for s in fake.sandboxes.values()
            if s.dto["labels"].get("suite") == "errors" and s.dto["state"] == "started"]  # fmt: skip


async def test_bad_key_is_authentication_error(fake_daytona: FakeDaytona) -> None:
    backend = DaytonaBackend(DaytonaOptions(api_key="wrong", api_url=fake_daytona.api_url))
    try:
        with pytest.raises(AuthenticationError) as caught:
            await backend.list()
        assert caught.value.retryable is False
        assert caught.value.provider == "daytona"
        assert isinstance(caught.value, PermissionError)
    finally:
        await backend.aclose()


async def test_missing_key_is_authentication_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DAYTONA_API_KEY", "DAYTONA_JWT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir("/")  # no .env file nearby
    backend = DaytonaBackend(DaytonaOptions(api_url="http://127.0.0.1:9/api"))
    with pytest.raises(AuthenticationError):
        await backend.list()
    await backend.aclose()


async def test_unreachable_is_retryable_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    backend = DaytonaBackend(DaytonaOptions(api_key="k", api_url=f"http://127.0.0.1:{port}/api"))
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await backend.connect("some-id")
        assert caught.value.retryable is True
        assert isinstance(caught.value, ConnectionError)
    finally:
        await backend.aclose()


async def test_transient_create_failures_are_retried(
    backend: DaytonaBackend, fake_daytona: FakeDaytona
) -> None:
    fake_daytona.fail("POST", r"^/api/sandbox$", 503, times=1)
    fake_daytona.fail("POST", r"^/api/sandbox$", 429, times=1)
    info = await backend.create(SPEC)
    assert _named(fake_daytona) == [info.id]


async def test_lost_create_reply_does_not_orphan(
    backend: DaytonaBackend, fake_daytona: FakeDaytona
) -> None:
    # Daytona creates the sandbox but the reply is a 502: the retry must find it, not make another.
    fake_daytona.fail("POST", r"^/api/sandbox$", 502, after=True)
    info = await backend.create(SPEC)
    assert _named(fake_daytona) == [info.id]
    assert (await backend.exec(info.id, "echo ok", ExecOptions(timeout=10))).stdout == "ok\n"


async def test_create_gives_up_cleanly(backend: DaytonaBackend, fake_daytona: FakeDaytona) -> None:
    fake_daytona.fail("POST", r"^/api/sandbox$", 503, times=3)
    before = len(fake_daytona.requests)
    with pytest.raises(ProviderUnavailable) as caught:
        await backend.create(SPEC)
    assert caught.value.retryable is True
    assert caught.value.op == "create"
    assert _named(fake_daytona) == []
    made = fake_daytona.requests[before:]
    assert made.count(("POST", "/api/sandbox")) == 3  # api_attempts tries, then no more


async def test_quota_is_not_retried(backend: DaytonaBackend, fake_daytona: FakeDaytona) -> None:
    fake_daytona.fail("POST", r"^/api/sandbox$", 403, message="Total CPU quota exceeded (10 > 8)")
    with pytest.raises(QuotaExceeded) as caught:
        await backend.create(SPEC)
    assert caught.value.retryable is False
    assert _named(fake_daytona) == []


async def test_bad_request_is_config_error(
    backend: DaytonaBackend, fake_daytona: FakeDaytona
) -> None:
    fake_daytona.fail("POST", r"^/api/sandbox$", 400, message="Invalid snapshot")
    with pytest.raises(ConfigError):
        await backend.create(SPEC)


async def test_rate_limit_on_reads(backend: DaytonaBackend, fake_daytona: FakeDaytona) -> None:
    info = await backend.create(SPEC)
    fake_daytona.fail("GET", rf"^/api/sandbox/{info.id}$", 429, times=3)  # every attempt
    with pytest.raises(RateLimited) as caught:
        await backend.connect(info.id)
    assert caught.value.retryable is True
    assert caught.value.sandbox_id == info.id


async def test_not_found_everywhere(backend: DaytonaBackend) -> None:
    gone = "00000000-0000-4000-8000-000000000000"
    for call in (
        backend.connect(gone),
        backend.read_file(gone, "/tmp/x"),
        backend.write_file(gone, "/tmp/x", b""),
        backend.exec(gone, "true", ExecOptions()),
        backend.expose_port(gone, 8080),
    ):
        with pytest.raises(SandboxNotFound):
            await call
    await backend.destroy(gone)  # idempotent


async def test_toolbox_errors_are_typed(backend: DaytonaBackend, fake_daytona: FakeDaytona) -> None:
    info = await backend.create(SPEC)
    with pytest.raises(FileNotFound):
        await backend.read_file(info.id, "/home/daytona/missing")
    fake_daytona.fail("POST", r"/process/session$", 500, message="daemon crashed", times=3)
    with pytest.raises(ProviderUnavailable):
        await backend.exec(info.id, "cat", ExecOptions(timeout=5, stdin=b"data"))
    assert info.id in fake_daytona.sandboxes
    before = len(fake_daytona.requests)
    with pytest.raises(ConfigError):
        await backend.exec(info.id, "true", ExecOptions(env={"BAD-NAME": "x"}))
    sent = [r for r in fake_daytona.requests[before:] if "socket.io" not in r[1]]
    assert sent == []  # refused before anything was sent (the SDK's event socket aside)


async def test_no_vendor_exception_leaks(
    backend: DaytonaBackend, fake_daytona: FakeDaytona
) -> None:
    info = await backend.create(SPEC)
    for status in (400, 401, 403, 404, 409, 410, 418, 429, 500, 502, 503, 504):
        attempts = 3 if status in (408, 429) or status >= 500 else 1  # retried ones: each try
        fake_daytona.fail("GET", rf"^/api/sandbox/{info.id}$", status, times=attempts)
        with pytest.raises(SandboxError) as caught:
            await backend.connect(info.id)
        assert type(caught.value).__module__ == "agent_sandbox.errors", status
        assert caught.value.__cause__ is not None


async def test_pause_refused_by_the_sandbox_class(
    backend: DaytonaBackend, fake_daytona: FakeDaytona
) -> None:
    info = await backend.create(SPEC)
    fake_daytona.fail("POST", r"/pause$", 400, message="Sandbox class does not support pausing")
    with pytest.raises(Unsupported):
        await backend.pause(info.id)


@pytest.mark.parametrize(
    ("status", "expected", "retryable"),
    [
        *status_cases(400, 401, 404),
        (408, OperationTimeout, True),  # not a shared row: Daytona's timeouts
        *status_cases(409, 429, 500, 502, 503),
        (504, OperationTimeout, True),
    ],
)
async def test_status_mapping(
    backend: DaytonaBackend,
    fake_daytona: FakeDaytona,
    status: int,
    expected: type[SandboxError],
    retryable: bool,
) -> None:
    gone = "11111111-0000-4000-8000-000000000000"
    fake_daytona.fail("GET", rf"^/api/sandbox/{gone}$", status, times=3 if retryable else 1)
    with pytest.raises(expected) as caught:
        await backend.connect(gone)
    assert caught.value.retryable is retryable
