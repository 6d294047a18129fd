"""The Worker's own code, run by workerd, answers as the fake says it does.

The same requests go to the real Worker (:mod:`workerd_worker`: the bundled source in the Workers
runtime, without Containers) and to the fake; their statuses and error codes must agree, and the
real Worker's answers must be ones its OpenAPI documents declare. Only what needs no container can
be compared: auth, validation (process requests too, on a sandbox recorded without a container),
the registry and its gate in front of the bridge, destroys.
Then the provider itself against the real Worker: errors, listing, and a create that cannot start
its container leaving nothing behind.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agent_sandbox_cloudflare import CloudflareBackend, CloudflareOptions
from conftest import fake_unavailable, live_mode
from fake_bridge import BRIDGE_DOC, WORKER_DOC, FakeWorker
from openapi_check import SchemaViolation
from workerd_worker import WORKER, RealWorker, missing

from agent_sandbox.errors import (
    AuthenticationError,
    ProviderUnavailable,
    SandboxNotFound,
)
from agent_sandbox.models import SandboxSpec

pytestmark = pytest.mark.skipif(
    live_mode("cloudflare") or fake_unavailable() is not None,
    reason="compares the real Worker with the fake (offline, as root on Linux)",
)


@pytest.fixture(scope="module")
def real_worker(fake_worker: FakeWorker) -> Iterator[RealWorker]:
    """The real Worker, with the fake's API key."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    with RealWorker(fake_worker.api_key) as worker:
        yield worker


def _unused_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def _ask(url: str, key: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        return client.request(method, path, **kwargs)


def _answer(response: httpx.Response) -> tuple[int, str | None]:
    """A response's status and error code (``None`` when it has none)."""
    try:
        body = response.json()
    except ValueError:
        return response.status_code, None
    code = body.get("code") if isinstance(body, dict) else None
    return response.status_code, code


def _check_declared(response: httpx.Response) -> None:
    """The real Worker's answer is one its documents declare for the operation."""
    path = response.request.url.path
    doc = WORKER_DOC if path.startswith("/asb/") else BRIDGE_DOC
    op = doc.operation(response.request.method, path)
    if op is None:
        return
    ctype = response.headers.get("content-type", "")
    body = b"" if ctype.startswith("text/event-stream") else response.content
    try:
        doc.check_response(op, response.status_code, ctype, body)
    except SchemaViolation as exc:
        if doc is BRIDGE_DOC and _answer(response) in GATES:
            return
        raise AssertionError(f"{response.request.method} {path}: {exc}") from None


GATES = {(404, "sandbox_not_found"), (400, "invalid_request")}
"""Answers on the bridge's routes that its document does not declare: the registry's in front of
them, and the bridge's own check of the id's format (its ``/sandbox/*`` middleware)."""


UNUSED = _unused_id()
CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    # (what, method, path, request options); "{id}" is an id no sandbox has
    ("health", "GET", "/health", {}),
    ("the Worker's document", "GET", "/asb/v1/openapi.json", {}),
    ("list", "GET", "/asb/v1/sandboxes", {}),
    ("list by label", "GET", "/asb/v1/sandboxes", {"params": {"labels": '{"a": "b"}'}}),
    ("labels not JSON", "GET", "/asb/v1/sandboxes", {"params": {"labels": "a=b"}}),
    ("labels not strings", "GET", "/asb/v1/sandboxes", {"params": {"labels": '{"a": 1}'}}),
    ("create without a TTL", "POST", "/asb/v1/sandboxes", {"json": {"labels": {}}}),
    ("create, unknown field", "POST", "/asb/v1/sandboxes", {"json": {"ttl_seconds": 5, "x": 1}}),
    ("create, TTL not positive", "POST", "/asb/v1/sandboxes", {"json": {"ttl_seconds": 0}}),
    (
        "create, label not a string",
        "POST",
        "/asb/v1/sandboxes",
        {"json": {"ttl_seconds": 5, "labels": {"a": 1}}},
    ),
    (
        "create, body not JSON",
        "POST",
        "/asb/v1/sandboxes",
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
    ),
    ("get an unknown sandbox", "GET", "/asb/v1/sandboxes/{id}", {}),
    ("get a malformed id", "GET", "/asb/v1/sandboxes/NOT-AN-ID", {}),
    ("processes of an unknown sandbox", "GET", "/asb/v1/sandboxes/{id}/processes", {}),
    (
        "start in an unknown sandbox",
        "POST",
        "/asb/v1/sandboxes/{id}/processes",
        {"json": {"ref": "p-1", "argv": ["true"]}},
    ),
    ("follow in an unknown sandbox", "GET", "/asb/v1/sandboxes/{id}/processes/p-1", {}),
    ("kill in an unknown sandbox", "POST", "/asb/v1/sandboxes/{id}/processes/p-1/kill", {}),
    (
        "stdin in an unknown sandbox",
        "PUT",
        "/asb/v1/sandboxes/{id}/processes/p-1/stdin",
        {"content": b"x", "headers": {"Content-Type": "application/octet-stream"}},
    ),
    ("a bridge route of an unknown sandbox", "POST", "/v1/sandbox/{id}/session", {"json": {}}),
    ("a bridge route, malformed id", "POST", "/v1/sandbox/NOT-AN-ID/session", {"json": {}}),
    ("tunnel of an unknown sandbox", "POST", "/v1/sandbox/{id}/tunnel/8080", {}),
    ("destroy an unknown sandbox", "DELETE", "/v1/sandbox/{id}", {}),
    ("the bridge's document", "GET", "/v1/openapi.json", {}),
]


@pytest.mark.parametrize("key", ["right", "wrong", "none"])
@pytest.mark.parametrize(
    ("method", "path", "options"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_fake_answers_as_the_worker_does(
    fake_worker: FakeWorker,
    real_worker: RealWorker,
    key: str,
    method: str,
    path: str,
    options: dict[str, Any],
) -> None:
    token = {"right": fake_worker.api_key, "wrong": "not-the-key", "none": None}[key]
    path = path.replace("{id}", UNUSED)
    real = _ask(real_worker.url, token, method, path, **options)
    fake = _ask(fake_worker.url, token, method, path, **options)
    assert _answer(fake) == _answer(real), f"fake {fake.text[:200]!r}, Worker {real.text[:200]!r}"
    _check_declared(real)
    if real.status_code == 200 and path.endswith("openapi.json"):
        assert real.json() == fake.json()


INVALID: list[tuple[str, str, str, dict[str, Any]]] = [
    # (what, method, path under the sandbox, request options): refused before any container
    ("no ref", "POST", "/processes", {"json": {"argv": ["true"]}}),
    ("a malformed ref", "POST", "/processes", {"json": {"ref": "a b", "argv": ["true"]}}),
    ("no argv", "POST", "/processes", {"json": {"ref": "p-1"}}),
    ("an empty argv", "POST", "/processes", {"json": {"ref": "p-1", "argv": []}}),
    ("argv not strings", "POST", "/processes", {"json": {"ref": "p-1", "argv": ["echo", 1]}}),
    (
        "a relative cwd",
        "POST",
        "/processes",
        {"json": {"ref": "p-1", "argv": ["true"], "cwd": "tmp"}},
    ),
    (
        "env value not a string",
        "POST",
        "/processes",
        {"json": {"ref": "p-1", "argv": ["true"], "env": {"A": 1}}},
    ),
    (
        "env name with =",
        "POST",
        "/processes",
        {"json": {"ref": "p-1", "argv": ["true"], "env": {"A=B": "c"}}},
    ),
    (
        "env name empty",
        "POST",
        "/processes",
        {"json": {"ref": "p-1", "argv": ["true"], "env": {"": "c"}}},
    ),
    (
        "timeout not positive",
        "POST",
        "/processes",
        {"json": {"ref": "p-1", "argv": ["true"], "timeout_ms": 0}},
    ),
    (
        "timeout not an integer",
        "POST",
        "/processes",
        {"json": {"ref": "p-1", "argv": ["true"], "timeout_ms": 1.5}},
    ),
    (
        "stdin not a boolean",
        "POST",
        "/processes",
        {"json": {"ref": "p-1", "argv": ["true"], "stdin": 1}},
    ),
    (
        "unknown field",
        "POST",
        "/processes",
        {"json": {"ref": "p-1", "argv": ["true"], "shell": True}},
    ),
    (
        "body not JSON",
        "POST",
        "/processes",
        {"content": b"[", "headers": {"Content-Type": "application/json"}},
    ),
    ("follow, negative offset", "GET", "/processes/p-1", {"params": {"stdout": "-1"}}),
    ("follow, offset not a number", "GET", "/processes/p-1", {"params": {"stderr": "x"}}),
    ("follow, malformed ref", "GET", "/processes/a.b", {}),
    ("kill, malformed ref", "POST", "/processes/a.b/kill", {}),
    (
        "stdin, malformed ref",
        "PUT",
        "/processes/a.b/stdin",
        {"content": b"x", "headers": {"Content-Type": "application/octet-stream"}},
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "options"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_process_requests_are_refused_as_the_worker_refuses_them(
    fake_worker: FakeWorker,
    real_worker: RealWorker,
    method: str,
    path: str,
    options: dict[str, Any],
) -> None:
    # A sandbox of each, minted by the bridge's POST /v1/sandbox: recorded, no container.
    answers = []
    for url in (real_worker.url, fake_worker.url):
        key = fake_worker.api_key
        sandbox_id = _ask(url, key, "POST", "/v1/sandbox").json()["id"]
        try:
            answers.append(
                _ask(url, key, method, f"/asb/v1/sandboxes/{sandbox_id}{path}", **options)
            )
        finally:
            _ask(url, key, "DELETE", f"/v1/sandbox/{sandbox_id}")
    real, fake = answers
    assert _answer(real) == (400, "invalid_request"), real.text
    assert _answer(fake) == _answer(real), f"fake {fake.text[:200]!r}, Worker {real.text[:200]!r}"
    _check_declared(real)


def test_the_workers_document_is_its_source(real_worker: RealWorker) -> None:
    served = _ask(real_worker.url, real_worker.api_key, "GET", "/asb/v1/openapi.json")
    assert served.json() == json.loads((WORKER / "src" / "openapi.json").read_text())


@pytest.mark.parametrize("target", ["fake", "real"])
def test_a_sandbox_minted_by_the_bridge_is_recorded_and_destroyed(
    fake_worker: FakeWorker, real_worker: RealWorker, target: str
) -> None:
    # The bridge's own POST /v1/sandbox still works for plain bridge clients: the Worker records
    # the id with its default TTL. It never had a container; destroying it starts none.
    url = fake_worker.url if target == "fake" else real_worker.url
    key = fake_worker.api_key
    minted = _ask(url, key, "POST", "/v1/sandbox")
    assert minted.status_code == 200
    sandbox_id = minted.json()["id"]
    record = _ask(url, key, "GET", f"/asb/v1/sandboxes/{sandbox_id}")
    assert record.status_code == 200, record.text
    assert record.json()["labels"] == {}
    listed = _ask(url, key, "GET", "/asb/v1/sandboxes").json()["sandboxes"]
    assert sandbox_id in [r["id"] for r in listed]
    gone = _ask(url, key, "DELETE", f"/v1/sandbox/{sandbox_id}")
    assert gone.status_code == 204, gone.text
    assert _answer(_ask(url, key, "GET", f"/asb/v1/sandboxes/{sandbox_id}")) == (
        404,
        "sandbox_not_found",
    )


@pytest.mark.anyio
async def test_the_provider_against_the_real_worker(real_worker: RealWorker) -> None:
    options = CloudflareOptions(url=real_worker.url, api_key=real_worker.api_key, create_attempts=1)
    backend = CloudflareBackend(options)
    try:
        assert await backend.list({"asb-test": "nothing"}) == []
        with pytest.raises(SandboxNotFound):
            await backend.connect(_unused_id())
        await backend.destroy(_unused_id())  # one already gone is fine
        before = await backend.list()
        # No container can start here: the create fails as on Cloudflare when the pool cannot
        # provide one, and destroys what it recorded.
        with pytest.raises(ProviderUnavailable, match="pool error"):
            await backend.create(SandboxSpec(ttl_seconds=60))
        assert await backend.list() == before
    finally:
        await backend.aclose()
    wrong = CloudflareBackend(CloudflareOptions(url=real_worker.url, api_key="not-the-key"))
    with pytest.raises(AuthenticationError):
        await wrong.list()
    await wrong.aclose()
