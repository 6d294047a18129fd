"""The whole conformance suite through VercelBackend -> the real vercel-sandbox SDK -> the fake
Vercel (or, with ``AGENT_SANDBOX_LIVE=vercel`` and credentials, the real Vercel:
``nox -s live -- vercel``).

``sandbox_backend``, ``sandbox_spec`` and ``egress_target`` come from ``conftest.py``.
"""

from __future__ import annotations

import pytest

from agent_sandbox.testing import ConformanceSuite


@pytest.mark.live
class TestVercelConformance(ConformanceSuite):
    """Every contract test, against Vercel Sandbox's wire protocol."""
