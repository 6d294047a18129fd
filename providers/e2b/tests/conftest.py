"""Fixtures: the fake E2B (offline) or the real one (live), and a backend pointed at it.

Offline (default): a :class:`FakeE2B` serves E2B's wire protocol on 127.0.0.1 from a thread of
its own for the whole session, and every backend talks to it through the real ``e2b`` SDK.

Live: ``AGENT_SANDBOX_LIVE=e2b`` (a comma-separated list may name other providers too) runs the
tests marked ``live`` against E2B itself with the SDK's usual credentials (``E2B_API_KEY``,
optional ``E2B_DOMAIN``); without a key they are skipped, saying so. ``nox -s live -- e2b``
sets this up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_sandbox.models import SandboxSpec

sys.path.insert(0, str(Path(__file__).parent))

from agent_sandbox_e2b import E2BBackend, E2BOptions
from fake_e2b import FakeE2B


def live_mode() -> bool:
    """True when the tests should run against the real E2B."""
    wanted = os.environ.get("AGENT_SANDBOX_LIVE", "")
    return "e2b" in {part.strip() for part in wanted.split(",")}


def fake_unavailable() -> str | None:
    """Why the fake cannot run here (it needs root to give each sandbox its own mounts)."""
    if sys.platform != "linux":
        return "the fake E2B runs sandboxes in Linux mount namespaces"
    if os.geteuid() != 0:
        return "the fake E2B needs root to give each fake sandbox its own mount namespace"
    return None


@pytest.fixture(scope="session")
def fake_e2b() -> Iterator[FakeE2B]:
    """The fake E2B for the whole session (offline mode only)."""
    if live_mode():
        pytest.skip("AGENT_SANDBOX_LIVE=e2b: this test needs the fake, not the real E2B")
    reason = fake_unavailable()
    if reason:
        pytest.skip(reason)
    fake = FakeE2B().start()
    # The key through the environment, as a user would: a client in another process (the
    # conformance suite starts one) is built from options that cannot carry a secret.
    saved = {k: os.environ.get(k) for k in fake.env()}
    os.environ.update(fake.env())
    try:
        yield fake
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fake.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def e2b_options(request: pytest.FixtureRequest) -> E2BOptions:
    """Options reaching the fake (offline) or the real E2B (live, from the environment)."""
    if live_mode():
        if not os.environ.get("E2B_API_KEY"):
            pytest.skip("live E2B tests need E2B_API_KEY; it is not set")
        return E2BOptions()
    fake: FakeE2B = request.getfixturevalue("fake_e2b")
    return E2BOptions(
        api_url=fake.url,
        sandbox_url=fake.url,
        domain="e2b.local",
        retry_backoff_seconds=0.05,
    )


@pytest.fixture
def sandbox_backend(e2b_options: E2BOptions) -> E2BBackend:
    """A fresh backend per test (the conformance suite closes it)."""
    return E2BBackend(e2b_options)


@pytest.fixture
def sandbox_spec() -> SandboxSpec:
    """The spec the conformance suite creates sandboxes from: E2B's ``base`` template."""
    return SandboxSpec(ttl_seconds=600)


@pytest.fixture
def egress_target(egress_server: object) -> tuple[str, int] | None:
    """Fake sandboxes share this machine's network; real E2B ones cannot reach it."""
    if live_mode():
        return None
    return ("127.0.0.1", int(getattr(egress_server, "port")))  # noqa: B009


def pytest_configure(config: pytest.Config) -> None:
    """Register ``live``: the tests ``nox -s live -- e2b`` runs against the real E2B."""
    config.addinivalue_line("markers", "live: runs against the real vendor when selected")
