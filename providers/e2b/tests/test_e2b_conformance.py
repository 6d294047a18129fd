"""The whole conformance suite through E2BBackend -> the real e2b SDK -> the fake E2B
(or, with ``AGENT_SANDBOX_LIVE=e2b`` and ``E2B_API_KEY``, the real E2B: ``nox -s live -- e2b``).

``sandbox_backend``, ``sandbox_spec`` and ``egress_target`` come from ``conftest.py``.
"""

from __future__ import annotations

import pytest

from agent_sandbox.testing import ConformanceSuite


@pytest.mark.live
class TestE2BConformance(ConformanceSuite):
    """Every contract test, against E2B's wire protocol."""
