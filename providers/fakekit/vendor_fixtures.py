"""What the test folders of the cloud providers share: fake or live, and the fixtures alike in all.

A folder's ``conftest.py`` imports ``*`` (the fixtures and the hook: pytest finds them there) and
defines ``sandbox_backend``, a fresh backend reaching its vendor's fake or, when
``AGENT_SANDBOX_LIVE`` names the vendor, the vendor itself. The vendor is the folder's name:
``providers/<vendor>/tests``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_sandbox.backend import SandboxBackend
from agent_sandbox.errors import (
    AuthenticationError,
    ConfigError,
    ProviderUnavailable,
    RateLimited,
    SandboxConflict,
    SandboxError,
    SandboxNotFound,
)

__all__ = ["anyio_backend", "backend", "egress_target", "pytest_configure", "sandboxes"]


def live_mode(vendor: str) -> bool:
    """True when the tests of ``vendor`` should run against the vendor itself, not its fake:
    ``AGENT_SANDBOX_LIVE`` (a comma-separated list) names it."""
    wanted = os.environ.get("AGENT_SANDBOX_LIVE", "")
    return vendor in {part.strip() for part in wanted.split(",")}


def vendor_of(request: pytest.FixtureRequest) -> str:
    """The vendor whose tests ``request`` serves (``providers/<vendor>/tests/...``)."""
    return Path(request.path).parents[1].name


STATUS_ERRORS: dict[int, tuple[type[SandboxError], bool]] = {
    400: (ConfigError, False),
    401: (AuthenticationError, False),
    403: (AuthenticationError, False),
    404: (SandboxNotFound, False),
    409: (SandboxConflict, False),
    429: (RateLimited, True),
    500: (ProviderUnavailable, True),
    502: (ProviderUnavailable, True),
    503: (ProviderUnavailable, True),
}
"""What a vendor's HTTP status becomes, for every vendor: our error, and whether it is
retryable (a vendor's own rows stay in its tests)."""


def status_cases(*statuses: int) -> list[tuple[int, type[SandboxError], bool]]:
    """``(status, error, retryable)`` rows of :data:`STATUS_ERRORS`, to parametrize a test."""
    return [(status, *STATUS_ERRORS[status]) for status in statuses]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend(sandbox_backend: SandboxBackend) -> AsyncIterator[SandboxBackend]:
    """The folder's backend, closed after the test."""
    try:
        yield sandbox_backend
    finally:
        await sandbox_backend.aclose()


@pytest.fixture
async def sandboxes(backend: SandboxBackend) -> AsyncIterator[list[str]]:
    """Ids to destroy at the end of the test."""
    ids: list[str] = []
    try:
        yield ids
    finally:
        for sid in ids:
            await backend.destroy(sid)


@pytest.fixture
def egress_target(request: pytest.FixtureRequest) -> tuple[str, int] | None:
    """A fake's sandboxes share this machine's network; the vendor's own cannot reach it."""
    if live_mode(vendor_of(request)):
        return None
    server = request.getfixturevalue("egress_server")
    return ("127.0.0.1", int(server.port))


def pytest_configure(config: pytest.Config) -> None:
    """Register ``live``: the tests ``nox -s live -- <vendor>`` runs against the vendor."""
    config.addinivalue_line("markers", "live: runs against the real vendor when selected")
