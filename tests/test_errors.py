"""The error hierarchy: stable codes, stdlib bases, retryable defaults, pickling."""

from __future__ import annotations

import pickle

import pytest

import agent_sandbox
from agent_sandbox import errors
from agent_sandbox.errors import CommandTimeout, SandboxError


def _all_errors() -> list[type[SandboxError]]:
    found: list[type[SandboxError]] = []
    todo: list[type[SandboxError]] = [SandboxError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: c.__name__)


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
