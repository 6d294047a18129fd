"""The whole conformance suite against FakeBackend: it skips only what its capabilities exclude."""

from __future__ import annotations

import pytest

from agent_sandbox.testing import ConformanceSuite, FakeBackend


class TestFakeBackendConformance(ConformanceSuite):
    @pytest.fixture
    def sandbox_backend(self) -> FakeBackend:
        return FakeBackend()

    @pytest.fixture
    def egress_target(self) -> None:
        # The fake has no network: an open sandbox cannot reach this machine either.
        return None

    @pytest.fixture
    def separate_client_processes(self) -> bool:
        # The fake's sandboxes live in this process's memory.
        return False
