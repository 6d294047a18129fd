"""What the Modal provider adds to running a command, measured against the fake Modal.

Two ways to run ``true`` in the same sandbox, interleaved so machine noise hits both alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"], timeout=30)`` through ``ModalBackend`` (the task command
  router through the SDK's client: start, stdout and stderr streamed, exit status; output kept
  as bytes, timeout watchdog armed);
* ``sdk``: the modal SDK called directly, ``sb.exec("true", timeout=30)``, then its stdout and
  stderr read and ``wait()`` — the baseline.

Both speak to the same fake Modal (the SDK's own gRPC service bases serving real processes on
127.0.0.1). Run: ``uv run --all-extras python benchmarks/modal_exec.py [--runs N]`` (as root: the
fake enters each sandbox's namespaces). Target: ours/sdk <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "providers" / "modal" / "tests"))

from fake_modal import FakeModal


async def _timed(func: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await func()
    return time.perf_counter() - start


async def main(runs: int) -> None:
    fake = FakeModal().start()
    # The SDK reads its server and credentials when it first makes a client.
    os.environ["MODAL_SERVER_URL"] = fake.url
    os.environ["MODAL_TOKEN_ID"] = fake.token_id
    os.environ["MODAL_TOKEN_SECRET"] = fake.token_secret
    import modal
    from agent_sandbox_modal import ModalBackend, ModalOptions

    import agent_sandbox as asb

    try:
        backend = ModalBackend(ModalOptions())
        async with await asb.Sandbox.create(backend=backend) as sb:
            client = await modal.Client.from_env.aio()
            raw = await modal.Sandbox.from_id.aio(sb.id, client=client)

            async def ours() -> None:
                result = await sb.exec(["true"], timeout=30)
                assert result.exit_code == 0

            async def sdk() -> None:
                process = await raw.exec.aio("true", timeout=30)
                await process.stdout.read.aio()
                await process.stderr.read.aio()
                assert await process.wait.aio() == 0

            cases = {"ours": ours, "sdk": sdk}
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for func in cases.values():  # warm up connections
                for _ in range(5):
                    await func()
            for _ in range(runs):
                for name, func in cases.items():
                    samples[name].append(await _timed(func))
            await raw.detach.aio()
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
