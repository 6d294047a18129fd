"""Shared fixtures and helpers of the Docker tests: a real engine, a local image, leak-proof cleanup.

Every container these tests create carries the label ``agent-sandbox.test-run=<uuid>``; a
session finalizer (and a per-test one) force-removes whatever still carries it, pass or fail.
Nothing else on the engine is touched: the engine may be shared, so tests never sweep or remove
by a broad filter. The engine is the one ``DOCKER_HOST`` names (else the local socket); the tests
skip, saying why, only when it does not answer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from agent_sandbox_docker import DockerBackend, DockerOptions

from agent_sandbox.models import SandboxInfo, SandboxSpec

IMAGE = os.environ.get("AGENT_SANDBOX_TEST_DOCKER_IMAGE", "agent-sandbox/debian-python:bookworm")
BUSYBOX = os.environ.get("AGENT_SANDBOX_TEST_DOCKER_BUSYBOX", "agent-sandbox/busybox:latest")
RUN_LABEL = "agent-sandbox.test-run"
RUN_ID = uuid.uuid4().hex[:12]


ENGINE_ADDRESS = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _engine() -> Any:
    try:
        import docker
        from docker.utils import kwargs_from_env

        client = docker.APIClient(version="auto", timeout=10, **kwargs_from_env())
        client.ping()
        return client
    except Exception as exc:
        return exc


_ENGINE = _engine()
ENGINE_REASON = (
    f"no Docker engine answers at {ENGINE_ADDRESS} ({_ENGINE}); "
    "start one (the project's docker setup script) or point DOCKER_HOST at one"
)


def engine() -> Any:
    """The raw docker-py client of the test engine (skips the test when there is none)."""
    if isinstance(_ENGINE, Exception):
        pytest.skip(ENGINE_REASON)
    for image in (IMAGE, BUSYBOX):
        try:
            _ENGINE.inspect_image(image)
        except Exception:
            pytest.skip(f"test image {image} is not on the engine; run the docker setup script")
    return _ENGINE


def remove_labelled(label: str) -> int:
    """Force-remove every container, network and volume carrying ``label`` (key=value);
    returns how many containers."""
    if isinstance(_ENGINE, Exception):
        return 0
    rows = _ENGINE.containers(all=True, filters={"label": label})
    for row in rows:
        with contextlib.suppress(Exception):
            _ENGINE.remove_container(row["Id"], force=True)
    for network in _ENGINE.networks(filters={"label": label}):
        with contextlib.suppress(Exception):
            _ENGINE.remove_network(network["Id"])
    for volume in _ENGINE.volumes(filters={"label": label}).get("Volumes") or []:
        with contextlib.suppress(Exception):
            _ENGINE.remove_volume(volume["Name"], force=True)
    return len(rows)


class LabelledDockerBackend(DockerBackend):
    """The real DockerBackend, adding the test run's label to every sandbox it creates."""

    run_label = f"{RUN_ID}"

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        labels = {**spec.labels, RUN_LABEL: self.run_label}
        return await super().create(spec.model_copy(update={"labels": labels}))


@pytest.fixture(scope="session", autouse=True)
def _session_cleanup() -> Iterator[None]:
    yield
    remove_labelled(f"{RUN_LABEL}={RUN_ID}")


@pytest.fixture(autouse=True)
def _testkit_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Client processes a test starts (reattach from another process) import this module."""
    here = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def docker_api() -> Any:
    """Raw docker-py client (the engine the tests use)."""
    return engine()


@pytest.fixture
def docker_label(request: pytest.FixtureRequest) -> Iterator[str]:
    """A label value unique to one test; its containers are removed when the test ends."""
    engine()
    value = f"{RUN_ID}-{uuid.uuid4().hex[:8]}"
    yield value
    remove_labelled(f"{RUN_LABEL}={value}")


@pytest.fixture
async def backend(docker_label: str) -> AsyncIterator[DockerBackend]:
    """A fresh backend whose sandboxes carry this test's cleanup label."""
    b = LabelledDockerBackend(DockerOptions())
    b.run_label = docker_label
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
def sandbox_backend(docker_label: str) -> DockerBackend:
    """The conformance suite's fixture: a fresh backend per test (the suite closes it)."""
    b = LabelledDockerBackend(DockerOptions())
    b.run_label = docker_label
    return b


@pytest.fixture
def egress_target(egress_server: Any) -> tuple[str, int]:
    """Where an open-network sandbox reaches the suite's server on this machine: the default
    bridge's gateway address (this host's end of docker0, one of the host's own addresses)."""
    api = engine()
    config = api.inspect_network("bridge")["IPAM"]["Config"]
    first = config[0]
    # the engine omits the gateway of the default bridge: it is the subnet's first address
    gateway = first.get("Gateway") or str(next(ipaddress.ip_network(first["Subnet"]).hosts()))
    return gateway, int(egress_server.port)


@pytest.fixture
def sandbox_spec() -> SandboxSpec:
    """The spec the conformance suite creates sandboxes from: the local debian-python image."""
    return SandboxSpec(image=IMAGE, ttl_seconds=600)
