"""What the E2B provider adds to running a command, measured against the fake E2B.

Three ways to run ``true`` in the same sandbox, interleaved so machine noise hits all alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"], timeout=30)`` through ``E2BBackend`` (envd's process service
  through the SDK's connect-rpc client, output kept as bytes, under the tree supervisor);
* ``sdk``: the e2b SDK called directly, ``sandbox.commands.run("true", timeout=30)`` — the
  baseline;
* ``sdk-supervised``: the same call running ``true`` under the tree supervisor, as ours does, so
  the ratio to it is what the client side adds.

All speak to the same fake E2B (the SDK's generated envd stub serving real processes on
127.0.0.1). Run: ``uv run --all-extras python benchmarks/e2b_exec.py [--runs N]`` (as root: the
fake gives each sandbox its own mount namespace). Target: ours/sdk <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "providers" / "e2b" / "tests"))

from agent_sandbox_e2b import E2BBackend, E2BOptions
from fake_e2b import FakeE2B

import agent_sandbox as asb
from agent_sandbox import tree


async def _timed(func: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await func()
    return time.perf_counter() - start


async def main(runs: int) -> None:
    from e2b import AsyncSandbox

    fake = FakeE2B().start()
    try:
        params = {
            "api_key": fake.api_key,
            "api_url": fake.url,
            "sandbox_url": fake.url,
            "domain": "e2b.local",
        }
        backend = E2BBackend(E2BOptions(**params))
        async with await asb.Sandbox.create(backend=backend) as sb:
            raw = await AsyncSandbox.connect(sb.id, timeout=600, **params)

            async def ours() -> None:
                result = await sb.exec(["true"], timeout=30)
                assert result.exit_code == 0

            async def sdk() -> None:
                result = await raw.commands.run("true", timeout=30)
                assert result.exit_code == 0

            # The same call running "true" under the tree supervisor, as ours does: what is left
            # is the client side.
            supervised = f"set -- asb-bench '' asb-bench true\n{tree.SUPERVISE}"

            async def sdk_supervised() -> None:
                result = await raw.commands.run(supervised, timeout=30)
                assert result.exit_code == 0

            cases = {"ours": ours, "sdk": sdk, "sdk-supervised": sdk_supervised}
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
    print(f"ratio ours/sdk: {medians['ours'] / medians['sdk']:.2f}  (target <= 1.10)")
    print(
        f"ratio ours/sdk-supervised: {medians['ours'] / medians['sdk-supervised']:.2f}"
        "  (the client side: the same in-sandbox work on both)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
