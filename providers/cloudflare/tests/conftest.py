"""Fixtures: the fake Worker (offline) or a deployed one (live), and a backend pointed at it.

Offline (default): a :class:`FakeWorker` serves the Worker's API on 127.0.0.1 from a thread of its
own for the whole session; every backend talks to it over HTTP. Any response the fake gave that
its OpenAPI documents do not declare fails the session.

Live: ``AGENT_SANDBOX_LIVE=cloudflare`` runs the tests marked ``live`` against a deployed Worker:
``AGENT_SANDBOX_CLOUDFLARE_URL`` (or ``CLOUDFLARE_SANDBOX_WORKER_URL``) and ``SANDBOX_API_KEY``;
without them they are skipped, saying so. ``nox -s live -- cloudflare`` sets this up.
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

from agent_sandbox_cloudflare import CloudflareBackend, CloudflareOptions
from fake_bridge import FakeWorker
from vendor_fixtures import *  # noqa: F403 - its fixtures and hook are found by name
from vendor_fixtures import live_mode


def fake_unavailable() -> str | None:
    """Why the fake cannot run here (its containers need Linux mount namespaces and root)."""
    if sys.platform != "linux":
        return "the fake Worker's containers use Linux mount namespaces"
    if os.geteuid() != 0:
        return "the fake Worker needs root to give each container its own mounts and uid"
    return None


@pytest.fixture(scope="session")
def fake_worker() -> Iterator[FakeWorker]:
    """The fake Worker for the whole session (offline mode only)."""
    if live_mode("cloudflare"):
        pytest.skip("AGENT_SANDBOX_LIVE=cloudflare: this test needs the fake, not the real Worker")
    reason = fake_unavailable()
    if reason:
        pytest.skip(reason)
    fake = FakeWorker().start()
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.violations, "responses the OpenAPI documents do not declare:\n" + "\n".join(
        fake.violations
    )


@pytest.fixture
def cloudflare_options(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> CloudflareOptions:
    """Options reaching the fake (offline) or the deployed Worker (live, from the environment).

    The key comes from ``SANDBOX_API_KEY``, as users set it: options serialise it masked, and the
    suite rebuilds backends in other processes from serialised options."""
    if live_mode("cloudflare"):
        url = os.environ.get("AGENT_SANDBOX_CLOUDFLARE_URL") or os.environ.get(
            "CLOUDFLARE_SANDBOX_WORKER_URL"
        )
        if not url or not os.environ.get("SANDBOX_API_KEY"):
            pytest.skip(
                "live Cloudflare tests need AGENT_SANDBOX_CLOUDFLARE_URL and SANDBOX_API_KEY"
            )
        return CloudflareOptions(url=url, snapshot_dir=str(tmp_path / "snapshots"))
    fake: FakeWorker = request.getfixturevalue("fake_worker")
    monkeypatch.setenv("SANDBOX_API_KEY", fake.api_key)
    return CloudflareOptions(
        url=fake.url,
        retry_backoff_seconds=0.05,
        snapshot_dir=str(tmp_path / "snapshots"),
    )


@pytest.fixture
def sandbox_backend(cloudflare_options: CloudflareOptions) -> CloudflareBackend:
    """A fresh backend per test (the conformance suite closes it)."""
    return CloudflareBackend(cloudflare_options)


@pytest.fixture
def sandbox_spec() -> SandboxSpec:
    """The spec the conformance suite creates sandboxes from."""
    return SandboxSpec(ttl_seconds=600)
