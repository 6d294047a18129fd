"""The whole conformance suite through ModalBackend -> the real modal SDK -> the fake Modal
(or, with ``AGENT_SANDBOX_LIVE=modal`` and Modal credentials, the real Modal:
``nox -s live -- modal``).

``sandbox_backend``, ``sandbox_spec`` and ``egress_target`` come from ``conftest.py``.
"""

from __future__ import annotations

import pytest

from agent_sandbox.testing import ConformanceSuite


@pytest.mark.live
class TestModalConformance(ConformanceSuite):
    """Every contract test, against Modal's wire protocol."""
