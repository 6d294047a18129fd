"""The whole conformance suite through DaytonaBackend -> the real daytona SDK -> the fake Daytona
(or, with ``AGENT_SANDBOX_LIVE=daytona`` and credentials, the real Daytona: ``nox -s live -- daytona``).

``sandbox_backend`` and ``sandbox_spec`` come from ``conftest.py``.
"""

from __future__ import annotations

import pytest

from agent_sandbox.testing import ConformanceSuite


@pytest.mark.live
class TestDaytonaConformance(ConformanceSuite):
    """Every contract test, against Daytona's wire protocol."""
