"""Fixtures: the fake Daytona (offline) or the real one (live), and a backend pointed at it.

Offline (default): a :class:`FakeDaytona` runs on 127.0.0.1 in a thread of its own for the whole
test session, and every backend talks to it through the real ``daytona`` SDK.

Live: ``AGENT_SANDBOX_LIVE=daytona`` (a comma-separated list may name other providers too) runs the
same tests against Daytona itself with the SDK's usual credentials (``DAYTONA_API_KEY``, optional
``DAYTONA_API_URL`` / ``DAYTONA_TARGET``); without a key the tests are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_sandbox.models import SandboxSpec

sys.path.insert(0, str(Path(__file__).parent))
sys.path.append(str(Path(__file__).resolve().parents[2] / "fakekit"))  # the fakes' shared parts

from agent_sandbox_daytona import DaytonaBackend, DaytonaOptions
from fake_daytona import FakeDaytona
from vendor_fixtures import *  # noqa: F403 - its fixtures and hook are found by name
from vendor_fixtures import live_mode


class ThreadedFake:
    """A FakeDaytona serving from its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.fake = FakeDaytona()

    def __enter__(self) -> FakeDaytona:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(30)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="session")
def fake_daytona() -> Iterator[FakeDaytona]:
    """The fake Daytona for the whole session (offline mode only)."""
    if live_mode("daytona"):
        pytest.skip("AGENT_SANDBOX_LIVE=daytona: this test needs the fake, not the real Daytona")
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip(
            "the fake Daytona needs root on Linux: each fake sandbox has its own pid and "
            "mount namespaces"
        )
    # The key through the environment, as a user would: a client in another process (the
    # conformance suite starts one) is built from options that cannot carry a secret.
    with ThreadedFake() as fake, pytest.MonkeyPatch.context() as env:
        env.setenv("DAYTONA_API_KEY", fake.api_key)
        yield fake


@pytest.fixture
def daytona_options(request: pytest.FixtureRequest) -> DaytonaOptions:
    """Options reaching the fake (offline) or the real Daytona (live, from the environment)."""
    if live_mode("daytona"):
        if not (os.environ.get("DAYTONA_API_KEY") or os.environ.get("DAYTONA_JWT_TOKEN")):
            pytest.skip("live Daytona tests need DAYTONA_API_KEY (or DAYTONA_JWT_TOKEN); not set")
        return DaytonaOptions()
    fake: FakeDaytona = request.getfixturevalue("fake_daytona")
    return DaytonaOptions(api_url=fake.api_url, api_attempts=3)


@pytest.fixture
def sandbox_backend(daytona_options: DaytonaOptions) -> DaytonaBackend:
    """A fresh backend per test (the conformance suite closes it)."""
    return DaytonaBackend(daytona_options)


@pytest.fixture
def sandbox_spec() -> SandboxSpec:
    """The spec the conformance suite creates sandboxes from: Daytona's default snapshot."""
    return SandboxSpec(ttl_seconds=900)
