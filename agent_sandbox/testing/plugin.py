"""The pytest plugin of the conformance suite, loaded only when asked for.

Enable it with ``pytest -p agent_sandbox.testing.plugin`` or ``pytest_plugins =
["agent_sandbox.testing.plugin"]`` in a ``conftest.py``. It registers the conformance suite's
capability marker (a test gets it with :func:`requires`) and the suite's overridable fixtures with their defaults. Being plugin
fixtures they have the lowest precedence: a provider overrides them in its ``conftest.py`` or on
its :class:`~agent_sandbox.testing.ConformanceSuite` subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from agent_sandbox.models import SandboxSpec

MARKER = "requires_capability"


def requires(*names: str) -> pytest.MarkDecorator:
    """Mark a test as needing these :class:`~agent_sandbox.Capabilities`.

    A backend whose ``capabilities`` lack one skips the test with
    ``provider lacks capability <name>``.
    """
    from agent_sandbox.models import Capabilities

    for name in names:
        if name not in Capabilities.model_fields:
            raise ValueError(f"unknown capability {name!r}; see agent_sandbox.Capabilities")
    mark: pytest.MarkDecorator = getattr(pytest.mark, MARKER)(*names)
    return mark


def pytest_configure(config: pytest.Config) -> None:
    """Register the capability marker (the suite runs under ``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names): the test needs these agent_sandbox Capabilities; a backend lacking "
        "one skips the test with the reason",
    )


@pytest.fixture
def sandbox_spec() -> SandboxSpec:
    """The spec the conformance suite creates sandboxes from: override to pick an image."""
    from agent_sandbox.models import SandboxSpec

    return SandboxSpec()


@pytest.fixture
def egress_target(egress_server: object) -> tuple[str, int] | None:
    """Where an open-network sandbox reaches the suite's test server on this machine.

    The default, ``127.0.0.1``, suits backends sharing the host's network; a container
    provider returns its bridge address (e.g. ``("172.17.0.1", egress_server.port)``), and a
    provider whose sandboxes cannot reach this machine at all returns ``None``.
    """
    port = getattr(egress_server, "port")  # noqa: B009 - the server type lives in the suite
    return ("127.0.0.1", int(port))


@pytest.fixture
def separate_client_processes() -> bool:
    """Whether another client process can reach the backend's sandboxes (built from the
    backend's class and options): the conformance suite attaches to a process from one. A
    backend whose sandboxes live in one process (an in-memory fake) overrides it to ``False``."""
    return True
