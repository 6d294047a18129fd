"""The models that cross the contract: validation, defaults, immutability, serialisation."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent_sandbox import (
    Capabilities,
    ExecEvent,
    ExecOptions,
    ExecResult,
    FileInfo,
    NetworkPolicy,
    SandboxInfo,
    SandboxSpec,
)
from agent_sandbox.models import DEFAULT_OUTPUT_LIMIT, DEFAULT_TTL_SECONDS, MiB


def test_spec_defaults() -> None:
    spec = SandboxSpec()
    assert spec.image is None
    assert spec.ttl_seconds == DEFAULT_TTL_SECONDS
    assert spec.network == NetworkPolicy(mode="open")
    assert spec.env == {}
    assert spec.labels == {}
    assert spec.ports == ()


def test_spec_rejects_unknown_fields_by_name() -> None:
    with pytest.raises(ValidationError, match="memory_mb"):
        SandboxSpec(memory_mb=512)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "field",
    [
        {"cpus": 0},
        {"memory_mib": -1},
        {"disk_mib": 0},
        {"ttl_seconds": 0},
        {"idle_timeout_seconds": -5},
    ],
)
def test_spec_rejects_non_positive_resources(field: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        SandboxSpec(**field)  # type: ignore[arg-type]


def test_spec_is_frozen() -> None:
    spec = SandboxSpec(image="busybox")
    with pytest.raises(ValidationError):
        spec.image = "other"  # type: ignore[misc]


def test_network_policy_allow_list_rules() -> None:
    assert NetworkPolicy(mode="allowlist", allow=("10.0.0.0/8",)).allow == ("10.0.0.0/8",)
    with pytest.raises(ValidationError, match="allowlist"):
        NetworkPolicy(mode="open", allow=("example.org",))
    with pytest.raises(ValidationError, match="at least one"):
        NetworkPolicy(mode="allowlist")
    with pytest.raises(ValidationError):
        NetworkPolicy(mode="closed")  # type: ignore[arg-type]


def test_spec_accepts_a_network_mapping() -> None:
    spec = SandboxSpec.model_validate({"network": {"mode": "none"}})
    assert spec.network.mode == "none"


def test_exec_options_defaults_and_limits() -> None:
    opts = ExecOptions()
    assert opts.output_limit == DEFAULT_OUTPUT_LIMIT == 10 * MiB
    assert opts.timeout is None
    assert opts.stdin is None
    with pytest.raises(ValidationError):
        ExecOptions(timeout=0)
    with pytest.raises(ValidationError):
        ExecOptions(output_limit=-1)
    assert ExecOptions(output_limit=0).output_limit == 0


def test_exec_result_text_and_ok() -> None:
    r = ExecResult(exit_code=0, stdout_bytes="héllo\n".encode(), stderr_bytes=b"\xffbad")
    assert r.ok
    assert r.stdout == "héllo\n"
    assert r.stderr == "\ufffdbad"
    assert not ExecResult(exit_code=2).ok
    killed = ExecResult(exit_code=137, signal=9)
    assert not killed.ok


def test_exec_event_text() -> None:
    assert ExecEvent(kind="stdout", data=b"a\xffb").text == "a\ufffdb"
    assert ExecEvent(kind="exit", exit_code=0).data == b""
    with pytest.raises(ValidationError):
        ExecEvent(kind="stdin", data=b"")  # type: ignore[arg-type]


def test_capabilities_defaults_are_conservative() -> None:
    caps = Capabilities()
    optional = ("network_none", "network_allowlist", "expose_port", "snapshot", "pause", "gpu")
    assert not any(getattr(caps, name) for name in optional)
    assert all(getattr(caps, name) for name in ("stdin", "persistent", "isolated", "signals"))
    with pytest.raises(ValidationError):
        Capabilities(teleport=True)  # type: ignore[call-arg]


def test_sandbox_info_json_round_trip() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    info = SandboxInfo(
        id="sb-1",
        provider="fake",
        labels={"a": "b"},
        created_at=now,
        expires_at=now,
        workdir="/workspace",
        metadata={"host": "h"},
    )
    assert SandboxInfo.model_validate_json(info.model_dump_json()) == info
    assert pickle.loads(pickle.dumps(info)) == info


def test_file_info_fields() -> None:
    info = FileInfo(path="/w/a.txt", name="a.txt", type="file", size=3, mode=0o644, mtime=1.0)
    assert info.type == "file"
    with pytest.raises(ValidationError):
        FileInfo(path="/w", name="w", type="pipe", size=0, mode=0, mtime=0)  # type: ignore[arg-type]


@given(st.binary(max_size=512), st.binary(max_size=512))
def test_exec_result_keeps_any_bytes(out: bytes, err: bytes) -> None:
    r = ExecResult(exit_code=0, stdout_bytes=out, stderr_bytes=err)
    assert (r.stdout_bytes, r.stderr_bytes) == (out, err)
    assert pickle.loads(pickle.dumps(r)) == r
    r.stdout  # noqa: B018 - decoding never raises
    r.stderr  # noqa: B018


def test_exec_result_with_binary_output_serialises_to_json() -> None:
    r = ExecResult(exit_code=0, stdout_bytes=b"\x00\xff\xfe")
    assert ExecResult.model_validate_json(r.model_dump_json()) == r
