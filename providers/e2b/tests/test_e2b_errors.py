"""Every e2b failure becomes a typed agent-sandbox error; transient create failures are retried
without leaving a sandbox behind. Faults are injected into the fake E2B."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from agent_sandbox_e2b import E2BBackend, E2BOptions
from agent_sandbox_e2b.backend import _table
from e2b import exceptions as e2b_errors
from fake_e2b import FakeE2B
from vendor_fixtures import status_cases

from agent_sandbox import errors
from agent_sandbox.errors import (
    AuthenticationError,
    ConfigError,
    FileNotFound,
    OperationTimeout,
    PermissionDenied,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
)
from agent_sandbox.labels import CREATE_KEY as CREATE_KEY_LABEL
from agent_sandbox.models import ExecOptions, SandboxSpec

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake(fake_e2b: FakeE2B) -> AsyncIterator[FakeE2B]:
    try:
        yield fake_e2b
    finally:
        fake_e2b.faults.clear()


def _backend(options: E2BOptions, **changes: object) -> E2BBackend:
    return E2BBackend(E2BOptions.model_validate({**options.model_dump(), **changes}))


def _owned_by(fake: FakeE2B, key: str) -> list[str]:
    return [s.id for s in fake.sandboxes.values() if s.metadata.get(CREATE_KEY_LABEL) == key]


def _keys(fake: FakeE2B, start: int) -> set[str]:
    return {body["metadata"][CREATE_KEY_LABEL] for body in fake.create_bodies[start:]}


async def test_wrong_api_key(fake: FakeE2B, e2b_options: E2BOptions) -> None:
    backend = _backend(e2b_options, api_key="e2b_wrong")
    calls = (lambda: backend.create(SandboxSpec()), backend.list, lambda: backend.connect("x"))
    for call in calls:
        with pytest.raises(AuthenticationError) as caught:
            await call()
        assert caught.value.retryable is False
        assert caught.value.provider == "e2b"
        assert isinstance(caught.value.__cause__, e2b_errors.AuthenticationException)


async def test_missing_api_key(
    fake: FakeE2B, e2b_options: E2BOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="API key is required"):
        await _backend(e2b_options, api_key=None).list()


@pytest.mark.parametrize(
    ("status", "error", "retryable"), status_cases(429, 503, 500, 400, 403, 409)
)
async def test_create_failures_are_typed(
    fake: FakeE2B, e2b_options: E2BOptions, status: int, error: type[SandboxError], retryable: bool
) -> None:
    backend = _backend(e2b_options, api_attempts=1)
    fake.fail_next("POST", "/v2/sandboxes", status, message="injected")
    with pytest.raises(error) as caught:
        await backend.create(SandboxSpec())
    assert caught.value.retryable is retryable
    assert caught.value.op == "create"


def _creates(fake: FakeE2B) -> int:
    return sum(1 for method, path in fake.requests if (method, path) == ("POST", "/v2/sandboxes"))


async def test_the_concurrency_quota_is_not_retried(fake: FakeE2B, e2b_options: E2BOptions) -> None:
    """E2B answers 429 to a team at its concurrent-sandbox limit (infra's
    ``orchestrator/create_instance.go``): a quota, asked once, not a rate limit retried by the
    SDK and by us."""
    backend = _backend(e2b_options, api_attempts=3)
    before = _creates(fake)
    message = (
        "you have reached the maximum number of concurrent E2B sandboxes (20). If you need "
        "more, please visit 'https://e2b.dev/docs/billing'"
    )
    fake.fail_next("POST", "/v2/sandboxes", 429, message=message, count=5)
    with pytest.raises(QuotaExceeded, match="maximum number") as caught:
        await backend.create(SandboxSpec())
    assert caught.value.retryable is False
    assert _creates(fake) - before == 1


async def test_a_rate_limit_is_retried_by_us_alone(fake: FakeE2B, e2b_options: E2BOptions) -> None:
    backend = _backend(e2b_options, api_attempts=3)
    before = _creates(fake)
    fake.fail_next("POST", "/v2/sandboxes", 429, message="slow down", count=5)
    with pytest.raises(RateLimited):
        await backend.create(SandboxSpec())
    assert _creates(fake) - before == 3  # our attempts; none of the SDK's on top


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_gateway_page_is_retried(
    fake: FakeE2B, e2b_options: E2BOptions, status: int
) -> None:
    """A proxy in front of the API answers an HTML page, not the API's JSON: the API was not
    reached, so the (idempotent) create is tried again."""
    backend = _backend(e2b_options, api_attempts=2)
    page = f"<html><body><h1>{status} Bad Gateway</h1></body></html>"
    fake.fail_next("POST", "/v2/sandboxes", status, body=page, content_type="text/html")
    info = await backend.create(SandboxSpec())
    await backend.destroy(info.id)
    fake.fail_next("POST", "/v2/sandboxes", status, body=page, content_type="text/html", count=2)
    with pytest.raises(ProviderUnavailable) as caught:
        await backend.create(SandboxSpec())
    assert caught.value.retryable is True


async def test_unknown_template_is_a_config_error(fake: FakeE2B, e2b_options: E2BOptions) -> None:
    with pytest.raises(ConfigError, match="not found") as caught:
        await _backend(e2b_options).create(SandboxSpec(image="no-such-template"))
    assert caught.value.retryable is False


async def test_transient_create_failures_are_retried(
    fake: FakeE2B, e2b_options: E2BOptions
) -> None:
    backend = _backend(e2b_options, api_attempts=3)
    start = len(fake.create_bodies)
    fake.fail_next("POST", "/v2/sandboxes", 500, count=2, message="sandbox_create_failed")
    info = await backend.create(SandboxSpec())
    try:
        (key,) = _keys(fake, start)  # one logical create, one idempotency key
        assert _owned_by(fake, key) == [info.id]
    finally:
        await backend.destroy(info.id)


async def test_a_lost_create_answer_does_not_orphan(fake: FakeE2B, e2b_options: E2BOptions) -> None:
    """The first attempt creates the sandbox but its answer is lost: the retry, with the same
    idempotency key, gets that sandbox back instead of making a second one."""
    backend = _backend(e2b_options, api_attempts=2)
    start = len(fake.create_bodies)
    fake.fail_next("POST", "/v2/sandboxes", 502, after_effect=True)
    info = await backend.create(SandboxSpec())
    try:
        (key,) = _keys(fake, start)
        assert _owned_by(fake, key) == [info.id]
    finally:
        await backend.destroy(info.id)


async def test_a_failed_create_removes_what_it_made(fake: FakeE2B, e2b_options: E2BOptions) -> None:
    backend = _backend(e2b_options, api_attempts=2)
    start = len(fake.create_bodies)
    fake.fail_next("POST", "/v2/sandboxes", 503, count=2, after_effect=True)
    with pytest.raises(ProviderUnavailable):
        await backend.create(SandboxSpec())
    (key,) = _keys(fake, start)
    assert _owned_by(fake, key) == []


async def test_unreachable_api(e2b_options: E2BOptions) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    backend = _backend(e2b_options, api_url=f"http://127.0.0.1:{port}", api_attempts=1)
    with pytest.raises(ProviderUnavailable) as caught:
        await backend.list()
    assert caught.value.retryable is True


async def test_file_and_sandbox_errors(fake: FakeE2B, e2b_options: E2BOptions) -> None:
    backend = _backend(e2b_options)
    info = await backend.create(SandboxSpec())
    try:
        with pytest.raises(PermissionDenied):
            await backend.write_file(info.id, "/usr/asb-not-writable", b"x")
        with pytest.raises(FileNotFound):
            await backend.exec(info.id, ["true"], ExecOptions(cwd="/no/such/dir"))
        with pytest.raises(ConfigError, match="invalid username"):
            await backend.exec(info.id, ["true"], ExecOptions(user="nobody-here"))
    finally:
        await backend.destroy(info.id)
    await backend.destroy(info.id)  # gone already: fine
    with pytest.raises(SandboxNotFound):
        await backend.read_file(info.id, "/tmp/x")
    with pytest.raises(SandboxNotFound):
        await _backend(e2b_options).exec(info.id, ["true"], ExecOptions())


@pytest.mark.parametrize(
    ("exc", "error", "retryable"),
    [
        (e2b_errors.AuthenticationException("bad key"), AuthenticationError, False),
        (e2b_errors.RateLimitException("429: slow down"), RateLimited, True),
        (e2b_errors.ServiceBusyException("503: busy"), ProviderUnavailable, True),
        (e2b_errors.SandboxNotFoundException("gone"), SandboxNotFound, False),
        (e2b_errors.SandboxNotRunningException("was not found"), SandboxNotFound, False),
        (e2b_errors.SandboxUnreachableException("port is not open"), ProviderUnavailable, True),
        (e2b_errors.TimeoutException("request timed out"), OperationTimeout, True),
        (e2b_errors.NotEnoughSpaceException("disk full"), QuotaExceeded, False),
        (e2b_errors.FileNotFoundException("no file"), FileNotFound, False),
        (e2b_errors.InvalidArgumentException("bad argument"), ConfigError, False),
        (e2b_errors.SandboxException("409: conflict", status_code=409), SandboxConflict, False),
        (e2b_errors.SandboxException("504: gateway", status_code=504), ProviderUnavailable, True),
        (ConnectionResetError("reset"), ProviderUnavailable, True),
        (ValueError("odd"), ProviderError, False),
    ],
)
def test_translate_every_sdk_exception(
    exc: BaseException, error: type[SandboxError], retryable: bool
) -> None:
    translated = errors.translate(exc, provider="e2b", op="exec", sandbox_id="sb-1", table=_table)
    assert type(translated) is error
    assert translated.retryable is retryable
    assert (translated.provider, translated.op, translated.sandbox_id) == ("e2b", "exec", "sb-1")


async def test_a_cancelled_create_does_not_orphan(fake: FakeE2B, e2b_options: E2BOptions) -> None:
    """Cancelled while E2B is still answering (the sandbox already exists): it is killed."""
    backend = _backend(e2b_options)
    start = len(fake.create_bodies)
    fake.fail_next("POST", "/v2/sandboxes", 503, after_effect=True, delay=3)
    task = asyncio.ensure_future(backend.create(SandboxSpec()))
    for _ in range(200):
        if len(fake.create_bodies) > start:
            break
        await asyncio.sleep(0.02)
    (key,) = _keys(fake, start)
    assert len(_owned_by(fake, key)) == 1  # made, answer not yet sent
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _owned_by(fake, key) == []
