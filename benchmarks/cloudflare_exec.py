"""What the Cloudflare provider adds to running a command, measured against the fake Worker.

Two ways to run ``true`` in the same sandbox, interleaved so machine noise hits both alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"], timeout=30)`` through ``CloudflareBackend`` (the process
  route, its events read by the handle's task, the deadline armed);
* ``httpx``: the same request made directly with ``httpx`` -- ``POST
  /asb/v1/sandboxes/{id}/processes`` with the same body, the event stream read until ``exit`` --
  the baseline.

Both speak to the same fake Worker (real processes on 127.0.0.1, the Worker's runner in them).
Run: ``uv run --all-extras python benchmarks/cloudflare_exec.py [--runs N]`` (as root: the fake
gives each container its own mounts and uid). Target: ours/httpx <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "providers" / "cloudflare" / "tests")
)

import httpx
from agent_sandbox_cloudflare import CloudflareBackend, CloudflareOptions
from fake_bridge import FakeWorker

import agent_sandbox as asb


async def _timed(func: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await func()
    return time.perf_counter() - start


async def main(runs: int) -> None:
    fake = FakeWorker().start()
    try:
        backend = CloudflareBackend(CloudflareOptions(url=fake.url, api_key=fake.api_key))
        async with (
            await asb.Sandbox.create(backend=backend) as sb,
            httpx.AsyncClient(
                base_url=fake.url, headers={"Authorization": f"Bearer {fake.api_key}"}
            ) as client,
        ):

            async def ours() -> None:
                result = await sb.exec(["true"], timeout=30)
                assert result.exit_code == 0

            async def raw() -> None:
                body = {
                    "ref": "p-" + secrets.token_hex(8),
                    "argv": ["true"],
                    "cwd": sb.info.workdir,
                    "timeout_ms": 40_000,
                }
                path = f"/asb/v1/sandboxes/{sb.id}/processes"
                headers = {"Session-Id": "asb"}
                async with client.stream("POST", path, json=body, headers=headers) as answer:
                    event = ""
                    async for line in answer.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif event == "exit" and line.startswith("data: "):
                            assert line == 'data: {"exit_code": 0}'
                            return
                raise AssertionError("no exit event")

            cases = {"ours": ours, "httpx": raw}
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for func in cases.values():  # warm up connections
                for _ in range(5):
                    await func()
            for _ in range(runs):
                for name, func in cases.items():
                    samples[name].append(await _timed(func))
        await backend.aclose()
    finally:
        fake.stop()

    medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    for name, values in samples.items():
        q1, _, q3 = statistics.quantiles(values, n=4)
        print(
            f"{name:5s} median {medians[name]:7.2f} ms  (quartiles {q1 * 1000:.2f}-{q3 * 1000:.2f},"
            f" mean {statistics.fmean(values) * 1000:.2f}) over {runs} runs"
        )
    print(f"ratio ours/httpx: {medians['ours'] / medians['httpx']:.2f}  (target <= 1.10)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
