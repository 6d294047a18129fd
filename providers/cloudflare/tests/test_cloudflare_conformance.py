"""The whole conformance suite through CloudflareBackend -> HTTP -> the fake Worker (or, with
``AGENT_SANDBOX_LIVE=cloudflare`` and a deployed Worker's URL and key, the real one: ``nox -s
live -- cloudflare``).

``sandbox_backend``, ``sandbox_spec`` and ``egress_target`` come from ``conftest.py``.
"""

from __future__ import annotations

import pytest

from agent_sandbox.testing import ConformanceSuite


@pytest.mark.live
class TestCloudflareConformance(ConformanceSuite):
    """Every contract test, against the Worker's API."""
