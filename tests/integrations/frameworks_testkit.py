"""Providers the framework batteries run against: local (bubblewrap when it works) and Docker.

Every sandbox these tests create carries ``agent-sandbox.test-run=<uuid>``; :func:`destroy_leftovers`
destroys whatever still carries it when the session ends, pass or fail. Docker runs skip, saying
why, when no engine answers or the locally built test image is missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Any

import pytest

from agent_sandbox import Sandbox, SandboxError

DOCKER_IMAGE = os.environ.get(
    "AGENT_SANDBOX_TEST_DOCKER_IMAGE", "agent-sandbox/debian-python:bookworm"
)
RUN_LABEL = "agent-sandbox.test-run"
RUN_ID = uuid.uuid4().hex[:12]
LOCAL_ROOT = os.path.join(tempfile.gettempdir(), f"agent-sandbox-frameworks-{RUN_ID}")
"""The local provider's root for this run: made by the first sandbox, removed at session end."""
PROVIDERS = ("local", "docker")


def _docker_problem() -> str | None:
    try:
        import docker

        client = docker.APIClient(version="auto", timeout=10)
        client.ping()
        client.inspect_image(DOCKER_IMAGE)
    except Exception as exc:
        return (
            f"Docker tests need an engine with {DOCKER_IMAGE} ({exc}); run the docker setup script"
        )
    return None


DOCKER_PROBLEM = _docker_problem()


def config(provider: str, **spec: Any) -> dict[str, Any]:
    """Adapter config for ``provider``: its options plus ``spec`` fields and the run label."""
    if provider == "docker" and DOCKER_PROBLEM:
        pytest.skip(DOCKER_PROBLEM)
    base: dict[str, Any] = {"provider": provider, "labels": {RUN_LABEL: RUN_ID}}
    if provider == "local":
        base["options"] = {"root": LOCAL_ROOT}
    else:
        base["image"] = DOCKER_IMAGE
    return {**base, **spec}


async def destroy_leftovers() -> None:
    """Destroy every sandbox of this run that a test left behind."""
    for provider in PROVIDERS:
        if provider == "docker" and DOCKER_PROBLEM:
            continue
        options = config_options(provider)
        for info in await Sandbox.list({RUN_LABEL: RUN_ID}, provider=provider, options=options):
            try:
                sandbox = await Sandbox.connect(info.id, provider=provider, options=options)
                await sandbox.destroy()
            except SandboxError:
                pass
    shutil.rmtree(LOCAL_ROOT, ignore_errors=True)


def config_options(provider: str) -> dict[str, Any] | None:
    return {"root": LOCAL_ROOT} if provider == "local" else None
