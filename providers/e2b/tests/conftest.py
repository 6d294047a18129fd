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
sys.path.append(str(Path(__file__).resolve().parents[2] / "fakekit"))  # the fakes' shared parts

from agent_sandbox_e2b import E2BBackend, E2BOptions
from fake_e2b import FakeE2B
from vendor_fixtures import *  # noqa: F403 - its fixtures and hook are found by name
from vendor_fixtures import live_mode


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
    if live_mode("e2b"):
        pytest.skip("AGENT_SANDBOX_LIVE=e2b: this test needs the fake, not the real E2B")
    reason = fake_unavailable()
    if reason:
        pytest.skip(reason)
    fake = FakeE2B().start()
    # The key through the environment, as a user would: a client in another process (the
    # conformance suite starts one) is built from options that cannot carry a secret.
    try:
        with pytest.MonkeyPatch.context() as env:
            for key, value in fake.env().items():
                env.setenv(key, value)
            yield fake
    finally:
        fake.stop()


@pytest.fixture
def e2b_options(request: pytest.FixtureRequest) -> E2BOptions:
    """Options reaching the fake (offline) or the real E2B (live, from the environment)."""
    if live_mode("e2b"):
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
