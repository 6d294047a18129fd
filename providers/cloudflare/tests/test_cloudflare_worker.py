"""The Worker project users deploy: what the tests model is what it ships.

The bridge's OpenAPI document kept here is the one in the pinned ``@cloudflare/sandbox`` package;
the Worker's image is that version's; the Worker's routes are the ones its own document
describes; its TypeScript type-checks; and its ``wrangler.jsonc`` is valid for the pinned wrangler.
The checks that need the Worker's npm dependencies (``npm ci`` in ``providers/cloudflare/worker``,
which CI runs) say so when they are absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from jsonschema import Draft7Validator
from workerd_worker import wrangler_config

WORKER = Path(__file__).resolve().parents[1] / "worker"
PACKAGE = json.loads((WORKER / "package.json").read_text())
VERSION = PACKAGE["dependencies"]["@cloudflare/sandbox"]
VENDORED = Path(__file__).parent / f"bridge-openapi-{VERSION}.json"


def _installed() -> Path:
    bridge = WORKER / "node_modules" / "@cloudflare" / "sandbox"
    if not (bridge / "package.json").is_file() or shutil.which("node") is None:
        pytest.skip("the Worker's npm dependencies are not installed (npm ci in its folder)")
    return bridge


def test_the_bridge_version_is_pinned_everywhere() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), "pin @cloudflare/sandbox exactly"
    assert VENDORED.is_file(), f"no OpenAPI document of the bridge {VERSION} in tests/"
    dockerfile = (WORKER / "Dockerfile").read_text()
    assert f"FROM docker.io/cloudflare/sandbox:{VERSION}\n" in dockerfile


def test_the_vendored_document_is_the_packages() -> None:
    bridge = _installed()
    installed = json.loads((bridge / "package.json").read_text())["version"]
    assert installed == VERSION, "npm ci installed another version than package.json pins"
    extracted = subprocess.run(
        ["node", "scripts/bridge-openapi.mjs"],
        cwd=WORKER,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    assert json.loads(extracted) == json.loads(VENDORED.read_text())


def test_the_workers_routes_are_its_documents() -> None:
    source = (WORKER / "src" / "routes.ts").read_text()
    routes = {
        (method, "/asb/v1" + re.sub(r":(\w+)", r"{\1}", path))
        for method, path in re.findall(r"app\.(get|post|put|delete)\('([^']+)'", source)
    }
    document = json.loads((WORKER / "src" / "openapi.json").read_text())
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routes == documented


def test_the_worker_type_checks() -> None:
    _installed()
    tsc = WORKER / "node_modules" / ".bin" / "tsc"
    done = subprocess.run(
        [str(tsc), "--noEmit", "-p", "."], cwd=WORKER, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_wrangler_config_is_valid_for_wrangler() -> None:
    _installed()
    schema = json.loads((WORKER / "node_modules" / "wrangler" / "config-schema.json").read_text())
    config = wrangler_config()
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft7Validator(schema).iter_errors(config)
    ]
    assert not errors, errors
    # Every Durable Object class is one the Worker exports, each SQLite-backed by a migration.
    exported = set(
        re.findall(r"^export \{ (\w+) \}", (WORKER / "src" / "index.ts").read_text(), re.M)
    )
    bound = {b["class_name"] for b in config["durable_objects"]["bindings"]}
    migrated = {c for m in config["migrations"] for c in m.get("new_sqlite_classes", [])}
    assert bound == exported == migrated
    # The bridge's pool must know the containers' ceiling (its pool.ts says to keep them equal).
    (container,) = config["containers"]
    assert container["class_name"] == "Sandbox"
    assert int(config["vars"]["WARM_POOL_MAX_INSTANCES"]) == container["max_instances"]
