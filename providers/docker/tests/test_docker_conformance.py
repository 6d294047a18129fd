"""The shared conformance suite, run against DockerBackend on a real engine.

The fixtures ``sandbox_backend`` (a fresh backend per test, whose sandboxes carry this run's
cleanup label) and ``sandbox_spec`` (the local debian-python image) come from conftest.py.
"""

from __future__ import annotations

import pytest
from docker_testkit import BUSYBOX

from agent_sandbox.models import SandboxSpec
from agent_sandbox.testing import ConformanceSuite


class TestDockerConformance(ConformanceSuite):
    """Every behaviour the contract promises, on the Docker provider."""


class TestDockerBusyboxConformance(ConformanceSuite):
    """The same suite on a busybox-only image: no python, no bash, busybox's sh and tools."""

    @pytest.fixture
    def sandbox_spec(self) -> SandboxSpec:
        return SandboxSpec(image=BUSYBOX, ttl_seconds=600)
