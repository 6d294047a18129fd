"""The error hierarchy: stable codes, stdlib bases, retryable defaults, pickling."""

from __future__ import annotations

import pickle

import anyio
import pytest

import agent_sandbox
from agent_sandbox import errors
from agent_sandbox.errors import CommandTimeout, SandboxError
from agent_sandbox.retry import retry


def _all_errors() -> list[type[SandboxError]]:
    found: list[type[SandboxError]] = []
    todo: list[type[SandboxError]] = [SandboxError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    # the core's own; a provider package may subclass for its private use
    core = {cls for cls in found if cls.__module__.split(".")[0] == "agent_sandbox"}
    return sorted(core, key=lambda c: c.__name__)


ALL = _all_errors()

STDLIB_BASES = {
    "SandboxNotFound": LookupError,
    "FileNotFound": FileNotFoundError,
    "IsADirectory": IsADirectoryError,
    "PermissionDenied": PermissionError,
    "PolicyDenied": PermissionError,
    "InvalidPath": ValueError,
    "CommandTimeout": TimeoutError,
    "OperationTimeout": TimeoutError,
    "Unsupported": NotImplementedError,
    "ConfigError": ValueError,
    "ProviderNotInstalled": ImportError,
    "ProviderUnavailable": ConnectionError,
    "AuthenticationError": PermissionError,
    "SandboxConflict": FileExistsError,
}

RETRYABLE = {"ProviderUnavailable", "RateLimited", "OperationTimeout"}


def test_every_error_is_exported_from_the_package() -> None:
    for cls in ALL:
        assert cls.__module__ == "agent_sandbox.errors"
        assert getattr(agent_sandbox, cls.__name__) is cls
        assert cls.__name__ in agent_sandbox.__all__


def test_codes_are_unique_snake_case_strings() -> None:
    codes = [cls.code for cls in ALL]
    assert len(codes) == len(set(codes)), codes
    for code in codes:
        assert code == code.lower()
        assert " " not in code


@pytest.mark.parametrize(("name", "base"), sorted(STDLIB_BASES.items()))
def test_stdlib_bases(name: str, base: type[BaseException]) -> None:
    cls = getattr(errors, name)
    err = cls("boom")
    assert isinstance(err, SandboxError)
    assert isinstance(err, base)
    with pytest.raises(base):
        raise err


def test_file_not_found_is_caught_as_oserror() -> None:
    # Code written for local files keeps working against a sandbox.
    with pytest.raises(OSError, match="gone"):
        raise errors.FileNotFound("gone")


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_retryable_default_and_override(cls: type[SandboxError]) -> None:
    assert cls("x").retryable is (cls.__name__ in RETRYABLE)
    assert cls("x", retryable=True).retryable is True
    assert cls("x", retryable=False).retryable is False


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_pickle_round_trip_keeps_type_and_fields(cls: type[SandboxError]) -> None:
    err = cls("it failed", retryable=True, provider="fake", op="exec", sandbox_id="sb-1")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "it failed"
    assert back.args == ("it failed",)
    assert back.to_dict() == err.to_dict()
    assert back.code == cls.code


def test_command_timeout_carries_partial_output_through_pickle() -> None:
    err = CommandTimeout(
        "timed out", timeout=2.5, stdout=b"\x00partial", stderr=b"err", sandbox_id="sb"
    )
    back = pickle.loads(pickle.dumps(err))
    assert (back.timeout, back.stdout, back.stderr) == (2.5, b"\x00partial", b"err")
    assert back.sandbox_id == "sb"
    assert back.retryable is False


def test_to_dict_and_str() -> None:
    err = errors.RateLimited("slow down", provider="e2b", op="create")
    assert str(err) == "slow down"
    assert err.to_dict() == {
        "code": "rate_limited",
        "message": "slow down",
        "retryable": True,
        "provider": "e2b",
        "op": "create",
        "sandbox_id": None,
    }


def test_cause_is_kept_when_translating() -> None:
    original = OSError("socket closed")

    def translate() -> None:
        try:
            raise original
        except OSError as exc:
            raise errors.ProviderUnavailable("engine unreachable") from exc

    with pytest.raises(errors.ProviderUnavailable) as caught:
        translate()
    assert caught.value.__cause__ is original


# -- translation and retries ------------------------------------------------------------------


class _VendorError(Exception):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@pytest.mark.parametrize(
    ("status", "message", "op", "expected"),
    [
        (401, "bad key", "create", errors.AuthenticationError),
        (403, "forbidden", "create", errors.AuthenticationError),
        (403, "sandbox limit reached", "create", errors.QuotaExceeded),
        (404, "missing", "connect", errors.SandboxNotFound),
        (404, "missing", "read_file", errors.FileNotFound),
        (409, "exists", "create", errors.SandboxConflict),
        (429, "slow down", "exec", errors.RateLimited),
        (422, "bad field", "create", errors.ConfigError),
        (503, "down", "create", errors.ProviderUnavailable),
        (418, "teapot", "create", errors.ProviderError),
        (None, "boom", "create", errors.ProviderError),
    ],
)
def test_translating_maps_the_shared_statuses(
    status: int | None, message: str, op: str, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as caught, errors.translating("acme", op, "sb-1"):
        raise _VendorError(message, status)
    err = caught.value
    assert isinstance(err, errors.SandboxError)
    assert (err.provider, err.op, err.sandbox_id) == ("acme", op, "sb-1")
    assert isinstance(err.__cause__, _VendorError)


def test_a_provider_table_comes_first_and_ours_pass_through() -> None:
    def rows(exc: Exception, lower: str) -> errors.SandboxError | None:
        return errors.IsADirectory("a directory") if "is a directory" in lower else None

    with pytest.raises(errors.IsADirectory), errors.translating("acme", "read_file", table=rows):
        raise _VendorError("path is a directory", 400)
    with pytest.raises(errors.ConfigError), errors.translating("acme", "read_file", table=rows):
        raise _VendorError("nope", 400)
    ours = errors.FileNotFound("gone")
    with pytest.raises(errors.FileNotFound) as caught, errors.translating("acme", "stat", "s"):
        raise ours
    assert caught.value is ours
    assert (ours.provider, ours.op) == ("acme", "stat")
    with pytest.raises(errors.OperationTimeout), errors.translating("acme", "exec"):
        raise TimeoutError("slow")
    with pytest.raises(errors.ProviderUnavailable), errors.translating("acme", "exec"):
        raise ConnectionResetError("reset")


def test_retry_retries_only_what_is_retryable() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise errors.ProviderUnavailable("down for a moment")
        return "ok"

    assert anyio.run(lambda: retry(flaky, attempts=3, backoff=0.001)) == "ok"
    assert len(calls) == 3

    async def refused() -> str:
        calls.append(1)
        raise errors.AuthenticationError("bad key")

    calls.clear()
    with pytest.raises(errors.AuthenticationError):
        anyio.run(lambda: retry(refused, attempts=5, backoff=0.001))
    assert len(calls) == 1

    async def always_down() -> str:
        calls.append(1)
        raise errors.RateLimited("later")

    calls.clear()
    with pytest.raises(errors.RateLimited):
        anyio.run(lambda: retry(always_down, attempts=2, backoff=0.001))
    assert len(calls) == 2
