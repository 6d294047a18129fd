"""Fixtures: the fake Modal (offline) or the real one (live), and a backend pointed at it.

Offline (default): a :class:`FakeModal` serves Modal's control plane and task command router on
127.0.0.1 from a thread of its own for the tests of this folder, and every backend talks to it
through the real ``modal`` SDK. The SDK finds its server and credentials the way it always does,
in ``MODAL_SERVER_URL``, ``MODAL_TOKEN_ID`` and ``MODAL_TOKEN_SECRET`` (its ``config.get`` reads
the environment each time a client is made): they are set before this folder's first test makes a
Modal client and restored after its last, so no other test of the repository sees them. A client
process started by a test inherits them.

Live: ``AGENT_SANDBOX_LIVE=modal`` (a comma-separated list may name other providers too) runs the
tests marked ``live`` against Modal itself with the SDK's usual credentials (``MODAL_TOKEN_ID``
and ``MODAL_TOKEN_SECRET``); without them they are skipped, saying so. ``nox -s live -- modal``
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

import fake_modal_jail
from agent_sandbox_modal import ModalBackend, ModalOptions
from fake_modal import FakeModal
from vendor_fixtures import *  # noqa: F403 - its fixtures and hook are found by name
from vendor_fixtures import live_mode

MODAL_ENV = (
    "MODAL_SERVER_URL",
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "MODAL_ENVIRONMENT",
    "MODAL_PROFILE",
    "MODAL_SANDBOX_V2",
)


@pytest.fixture(scope="package")
def fake_modal() -> Iterator[FakeModal]:
    """The fake Modal for this folder's tests (offline mode only), with the SDK pointed at it."""
    if live_mode("modal"):
        pytest.skip("AGENT_SANDBOX_LIVE=modal: this test needs the fake, not the real Modal")
    reason = fake_modal_jail.unavailable()
    if reason:
        pytest.skip(reason)
    fake = FakeModal().start()
    try:
        with pytest.MonkeyPatch.context() as env:
            for name in MODAL_ENV:
                env.delenv(name, raising=False)
            env.setenv("MODAL_SERVER_URL", fake.url)
            env.setenv("MODAL_TOKEN_ID", fake.token_id)
            env.setenv("MODAL_TOKEN_SECRET", fake.token_secret)
            yield fake
    finally:
        fake.stop()


@pytest.fixture
def modal_options(request: pytest.FixtureRequest) -> ModalOptions:
    """Options reaching the fake (offline) or the real Modal (live, from the environment)."""
    if live_mode("modal"):
        if not (os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET")):
            pytest.skip("live Modal tests need MODAL_TOKEN_ID and MODAL_TOKEN_SECRET; not set")
        return ModalOptions()
    request.getfixturevalue("fake_modal")
    return ModalOptions(retry_backoff_seconds=0.05)


@pytest.fixture
def sandbox_backend(modal_options: ModalOptions) -> ModalBackend:
    """A fresh backend per test (the conformance suite closes it)."""
    return ModalBackend(modal_options)


@pytest.fixture
def sandbox_spec() -> SandboxSpec:
    """The spec the conformance suite creates sandboxes from: Modal's default image."""
    return SandboxSpec(ttl_seconds=600)
