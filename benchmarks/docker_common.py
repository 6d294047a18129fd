"""Shared helpers of the docker_*.py benchmarks (not a benchmark itself).

Every benchmark creates its containers with the label ``agent-sandbox.bench=<run id>`` and
removes whatever carries it at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from typing import Any

IMAGE = os.environ.get("AGENT_SANDBOX_TEST_DOCKER_IMAGE", "agent-sandbox/debian-python:bookworm")
BENCH_LABEL = "agent-sandbox.bench"
RUN_ID = uuid.uuid4().hex[:12]


def raw_client() -> Any:
    """A docker-py APIClient (the baseline) on the same engine."""
    import docker

    return docker.APIClient(version="auto")


def cleanup(api: Any) -> int:
    """Force-remove this run's containers; returns how many were left."""
    rows = api.containers(all=True, filters={"label": f"{BENCH_LABEL}={RUN_ID}"})
    for row in rows:
        with contextlib.suppress(Exception):
            api.remove_container(row["Id"], force=True)
    return len(rows)


def sandbox_spec(network: str, ttl_seconds: int) -> dict[str, Any]:
    """``Sandbox.create``'s keywords for a benchmark's sandbox: the image, this run's label."""
    return {
        "image": IMAGE,
        "labels": {BENCH_LABEL: RUN_ID},
        "ttl_seconds": ttl_seconds,
        "network": network,
    }


def add_sandbox_options(parser: argparse.ArgumentParser) -> None:
    """``--network none`` and ``--runtime runsc`` (gVisor), for ours and the baseline alike."""
    parser.add_argument("--network", choices=["open", "none"], default="open")
    parser.add_argument("--runtime", default=None, help="e.g. runsc (gVisor; network none only)")


def runs_parser(description: str | None) -> argparse.ArgumentParser:
    """The command line of a benchmark measuring ``--runs N`` rounds, with the sandbox options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=200)
    add_sandbox_options(parser)
    return parser
