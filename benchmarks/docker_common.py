"""Shared helpers of the docker_*.py benchmarks (not a benchmark itself).

Every benchmark creates its containers with the label ``agent-sandbox.bench=<run id>`` and
removes whatever carries it at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
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


async def timed(func: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await func()
    return time.perf_counter() - start


def timed_sync(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def add_sandbox_options(parser: argparse.ArgumentParser) -> None:
    """``--network none`` and ``--runtime runsc`` (gVisor), for ours and the baseline alike."""
    parser.add_argument("--network", choices=["open", "none"], default="open")
    parser.add_argument("--runtime", default=None, help="e.g. runsc (gVisor; network none only)")


def raw_host_config(api: Any, network: str, runtime: str | None) -> Any:
    """The baseline container's host config for the same network and runtime as ours."""
    return api.create_host_config(
        network_mode="none" if network == "none" else None, runtime=runtime
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(title: str, samples: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Print p50 and p99 (ms) and their ratios to ``baseline``; return the medians."""
    medians = {name: statistics.median(values) for name, values in samples.items()}
    p99 = {name: percentile(values, 0.99) for name, values in samples.items()}
    print(f"\n{title}  ({min(len(v) for v in samples.values())} runs)")
    for name, value in medians.items():
        print(
            f"  {name:<34} p50 {value * 1000:9.2f} ms {value / medians[baseline]:6.3f}x   "
            f"p99 {p99[name] * 1000:9.2f} ms {p99[name] / p99[baseline]:6.3f}x   ({baseline})"
        )
    return medians
