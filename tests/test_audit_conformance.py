"""The whole conformance suite through AuditingBackend (over the fake and the local provider):
the wrapper must be invisible to callers, and every operation must leave a valid audit chain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agent_sandbox import Sandbox
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
    async def test_connect_by_id_from_a_new_backend(  # type: ignore[override]
        self, sandbox: Sandbox, conformance_backend: AuditingBackend
    ) -> None:
        # The suite builds the new backend as type(backend)(backend.options); a wrapper is built
        # around a new inner backend instead (AuditingBackend forwards the inner options).
        await sandbox.write_file("kept.txt", b"still here")
        inner = type(conformance_backend.inner)(conformance_backend.options)
        other = AuditingBackend(inner, conformance_backend.audit)
        try:
            again = await Sandbox.connect(sandbox.id, backend=other)
            assert again.id == sandbox.id
            assert await again.read_file("kept.txt") == b"still here"
            assert (await again.exec(["cat", "kept.txt"])).stdout == "still here"
            await again.close()
            assert (await sandbox.exec("echo ok")).stdout == "ok\n"
        finally:
            with anyio.CancelScope(shield=True):
                await other.aclose()


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
        # Every test destroys what it made; remove whatever an aborted test left behind.
        async def sweep() -> None:
            backend = LocalBackend(LocalOptions(root=root))
            for info in await backend.list():
                await backend.destroy(info.id)
            await backend.aclose()

        if root.exists():
            anyio.run(sweep)


class TestAuditedLocalConformance(AuditedSuite):
    @pytest.fixture
    def sandbox_backend(self, audit_log: AuditLog, local_root: Path) -> AuditingBackend:
        return AuditingBackend(LocalBackend(LocalOptions(root=local_root)), audit_log)
