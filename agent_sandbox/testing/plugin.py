"""The pytest plugin of agent-sandbox (entry point ``pytest11: agent_sandbox``).

Loaded by pytest in every project where agent-sandbox is installed, so it stays light: it only
registers the conformance suite's marker. The suite itself is
:class:`agent_sandbox.testing.ConformanceSuite`, which a provider's test module subclasses.
"""

from __future__ import annotations

import pytest

MARKER = "requires_capability"


def pytest_configure(config: pytest.Config) -> None:
    """Register the capability marker (the suite runs under ``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names): the test needs these agent_sandbox Capabilities; a backend lacking "
        "one skips the test with the reason",
    )
