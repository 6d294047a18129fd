"""The whole conformance suite through AuditingBackend (over the fake and the local provider):
the wrapper must be invisible to callers, and every operation must leave a valid audit chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from local_support import end_sandboxes

from agent_sandbox import BaseBackend
from agent_sandbox.audit import AuditingBackend, AuditLog, JsonlSink, verify_chain
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.testing import ConformanceSuite, FakeBackend


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[AuditLog]:
    path = tmp_path / "audit.jsonl"
    sink = JsonlSink(path)
    try:
        yield AuditLog(sink)
    finally:
        sink.close()
    # Whatever the test did, the chain it left is intact.
    report = verify_chain(path)
    assert report.ok, report


class AuditedSuite(ConformanceSuite):
    def new_backend(self, backend: BaseBackend) -> BaseBackend:
        # A wrapper is built around a new inner backend (AuditingBackend forwards its options).
        assert isinstance(backend, AuditingBackend)
        return AuditingBackend(type(backend.inner)(backend.options), backend.audit)

    @pytest.fixture
    def separate_client_processes(self) -> bool:
        # Another process would build the plain backend: the unaudited suites cover that.
        return False


class TestAuditedFakeConformance(AuditedSuite):
    @pytest.fixture
    def sandbox_backend(self, audit_log: AuditLog) -> AuditingBackend:
        return AuditingBackend(FakeBackend(), audit_log)

    @pytest.fixture
    def egress_target(self) -> None:
        # The fake has no network: an open sandbox cannot reach this machine either.
        return None


@pytest.fixture
def local_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "state"
    try:
        yield root
    finally:
        end_sandboxes(root)  # every test destroys what it made; this ends what one left


class TestAuditedLocalConformance(AuditedSuite):
    @pytest.fixture
    def sandbox_backend(self, audit_log: AuditLog, local_root: Path) -> AuditingBackend:
        return AuditingBackend(LocalBackend(LocalOptions(root=local_root)), audit_log)
