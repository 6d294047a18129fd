"""Shared helpers of the docker_*.py benchmarks (not a benchmark itself).

Every benchmark creates its containers with the label ``agent-sandbox.bench=<run id>`` and
removes whatever carries it at exit.
"""

from __future__ import annotations

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


def report(title: str, samples: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Print medians (ms) and ratios to ``baseline``; return the medians."""
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\n{title}  (median of {min(len(v) for v in samples.values())} runs)")
    for name, value in medians.items():
        ratio = value / medians[baseline]
        print(f"  {name:<28} {value * 1000:9.2f} ms   {ratio:5.2f}x {baseline}")
    return medians
