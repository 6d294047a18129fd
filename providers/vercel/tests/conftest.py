"""Fixtures: the fake Vercel (offline) or the real one (live), and a backend pointed at it.

Offline (default): ``fake_vercel.py`` serves Vercel Sandbox's wire protocol on 127.0.0.1 from a
process of its own for the whole session; every backend talks to it through the real
``vercel-sandbox`` SDK. Credentials reach the SDK the way they reach it in production, through
``VERCEL_TOKEN``, ``VERCEL_TEAM_ID`` and ``VERCEL_PROJECT_ID`` (so a second client process,
which the conformance suite starts, finds them too).

Live: ``AGENT_SANDBOX_LIVE=vercel`` runs the tests marked ``live`` against Vercel itself with the
SDK's usual credentials; without them they are skipped, saying so. ``nox -s live -- vercel``
sets this up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_sandbox_vercel import VercelBackend, VercelOptions

from agent_sandbox.models import SandboxSpec

sys.path.insert(0, str(Path(__file__).parent))
sys.path.append(str(Path(__file__).resolve().parents[2] / "fakekit"))  # the fakes' shared parts

from vendor_fixtures import *  # noqa: F403 - its fixtures and hook are found by name
from vendor_fixtures import live_mode

HERE = Path(__file__).parent

CREDENTIALS = {
    "VERCEL_TOKEN": "vercel_fake_token",
    "VERCEL_TEAM_ID": "team_fake",
    "VERCEL_PROJECT_ID": "prj_fake",
}


def live_credentials() -> bool:
    """The SDK finds credentials: an OIDC token, or a token with its team and project."""
    return bool(os.environ.get("VERCEL_OIDC_TOKEN")) or all(
        os.environ.get(name) for name in CREDENTIALS
    )


class FakeVercelServer:
    """The fake's process: its address, and the admin calls tests use."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fake_vercel.py"), *CREDENTIALS.values()],
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the fake Vercel did not start: {line!r}")
        self.url = line.split()[1]

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(f"{self.url}/_fake/{path}", data=data, timeout=30) as r:
            return json.loads(r.read())

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        *,
        code: str = "injected",
        message: str = "injected failure",
        count: int = 1,
        after_effect: bool = False,
    ) -> None:
        """The next ``count`` requests matching ``method`` and a ``path`` prefix fail."""
        self.admin(
            "faults",
            {
                "method": method,
                "path": path,
                "status": status,
                "code": code,
                "message": message,
                "count": count,
                "after_effect": after_effect,
            },
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def fake_vercel() -> Iterator[FakeVercelServer]:
    """The fake Vercel for the whole session (offline mode only)."""
    if live_mode("vercel"):
        pytest.skip("AGENT_SANDBOX_LIVE=vercel: this test needs the fake, not the real Vercel")
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the fake Vercel needs root on Linux to confine each session's processes")
    server = FakeVercelServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vercel_options(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> VercelOptions:
    """Options reaching the fake (offline) or the real Vercel (live, from the environment)."""
    if live_mode("vercel"):
        if not live_credentials():
            pytest.skip(
                "live Vercel tests need VERCEL_OIDC_TOKEN, or VERCEL_TOKEN, VERCEL_TEAM_ID and "
                "VERCEL_PROJECT_ID; they are not set"
            )
        return VercelOptions()
    fake: FakeVercelServer = request.getfixturevalue("fake_vercel")
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VERCEL_OIDC_TOKEN", raising=False)
    return VercelOptions(base_url=fake.url, retry_backoff_seconds=0.05)


@pytest.fixture
def sandbox_backend(vercel_options: VercelOptions) -> VercelBackend:
    """A fresh backend per test (the conformance suite closes it)."""
    return VercelBackend(vercel_options)


@pytest.fixture
def sandbox_spec() -> SandboxSpec:
    """The spec the conformance suite creates sandboxes from: Vercel's default image."""
    return SandboxSpec(ttl_seconds=600)
