"""Every ``modal`` failure becomes a typed agent-sandbox error with ``retryable`` set right.
Faults are injected into the fake Modal as the gRPC statuses Modal answers with; the SDK turns
them into its exceptions (``modal/_grpc_client.py``), the adapter into ours."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_sandbox_modal import ModalBackend, ModalOptions, translate_rows
from fake_modal import FakeModal
from grpclib import Status
from modal import exception as modal_errors
from pydantic import SecretStr

from agent_sandbox.errors import (
    AuthenticationError,
    ConfigError,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxError,
    SandboxNotFound,
    StdinClosed,
    Unsupported,
    translate,
)
from agent_sandbox.models import SandboxSpec

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake(fake_modal: FakeModal) -> Iterator[FakeModal]:
    try:
        yield fake_modal
    finally:
        fake_modal.faults.clear()


async def test_wrong_token(fake: FakeModal, modal_options: ModalOptions) -> None:
    backend = ModalBackend(
        modal_options.model_copy(
            update={"token_id": SecretStr("ak-wrong"), "token_secret": SecretStr("as-wrong")}
        )
    )
    try:
        for call in (lambda: backend.create(SandboxSpec()), backend.list):
            with pytest.raises(AuthenticationError) as caught:
                await call()
            assert caught.value.retryable is False
            assert caught.value.provider == "modal"
            assert isinstance(caught.value.__cause__, modal_errors.AuthError)
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("status", "message", "error", "retryable"),
    [
        (Status.UNAVAILABLE, "try again", ProviderUnavailable, True),
        (Status.INTERNAL, "oops", ProviderUnavailable, True),
        (Status.RESOURCE_EXHAUSTED, "rate limit exceeded", RateLimited, True),
        (Status.RESOURCE_EXHAUSTED, "no capacity in region", ProviderUnavailable, True),
        (Status.RESOURCE_EXHAUSTED, "sandbox quota reached", QuotaExceeded, False),
        (Status.PERMISSION_DENIED, "not in this workspace", AuthenticationError, False),
        (Status.INVALID_ARGUMENT, "bad tag", ConfigError, False),
        (Status.UNIMPLEMENTED, "not here", Unsupported, False),
        (Status.FAILED_PRECONDITION, "something odd", ProviderError, False),
    ],
)
async def test_statuses_map_to_typed_errors(
    fake: FakeModal,
    backend: ModalBackend,
    status: Status,
    message: str,
    error: type[SandboxError],
    retryable: bool,
) -> None:
    await backend.list()  # the connection and app first: the fault hits the listing itself
    fake.fail_next("SandboxListV2", status, message, count=10)  # past the SDK's own retries
    with pytest.raises(error) as caught:
        await backend.list()
    assert type(caught.value) is error
    assert caught.value.retryable is retryable
    assert (caught.value.provider, caught.value.op) == ("modal", "list")
    assert message in str(caught.value)


async def test_unknown_sandbox(fake: FakeModal, backend: ModalBackend) -> None:
    with pytest.raises(SandboxNotFound) as caught:
        await backend.connect("sb-doesnotexist")
    assert caught.value.sandbox_id == "sb-doesnotexist"
    await backend.destroy("sb-doesnotexist")  # destroying what is gone is fine


def _rows(exc: Exception) -> SandboxError:
    return translate(exc, provider="modal", op="test", table=translate_rows)


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (modal_errors.SandboxFilesystemNotFoundError("gone"), FileNotFound),
        (modal_errors.SandboxFilesystemIsADirectoryError("dir"), IsADirectory),
        (modal_errors.SandboxFilesystemNotADirectoryError("file"), InvalidPath),
        (modal_errors.SandboxFilesystemPermissionError("no"), PermissionDenied),
        (modal_errors.SandboxFilesystemFileTooLargeError("big"), FileTooLarge),
        (modal_errors.SandboxFilesystemDirectoryNotEmptyError("full"), InvalidPath),
        (modal_errors.ConflictError("stdin is closed"), StdinClosed),
        (modal_errors.ConflictError("Sandbox has already finished"), SandboxNotFound),
        (modal_errors.SandboxTerminatedError("ended"), SandboxNotFound),
        (
            modal_errors.ClientClosed("Unable to perform operation on a detached sandbox"),
            SandboxNotFound,
        ),
        (modal_errors.ClientClosed("client is closed"), ProviderError),
        (modal_errors.ImageBuildError("pull failed", image_id="im-x"), ConfigError),
    ],
)
def test_sdk_exceptions_map_to_typed_errors(exc: Exception, error: type[SandboxError]) -> None:
    err = _rows(exc)
    assert type(err) is error
    assert err.provider == "modal"


def test_other_exceptions_are_left_to_the_shared_rows() -> None:
    assert translate_rows(ValueError("x"), "x") is None
    assert isinstance(_rows(ConnectionResetError("reset")), ProviderUnavailable)
