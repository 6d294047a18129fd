"""What the Daytona provider adds to running a command, measured against the fake Daytona.

Three ways to run ``true`` in the same sandbox, interleaved so machine noise hits all alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"])`` through ``DaytonaBackend``;
* ``ours-timeout``: the same with ``timeout=30`` (adds the in-sandbox ``timeout`` backstop);
* ``sdk-session``: the daytona SDK called directly, doing what a caller needs for separate,
  streamed stdout/stderr and a real exit code (create_session, execute_session_command with
  run_async, get_session_command_logs_async, get_session_command, delete_session) — the baseline;
* ``sdk-exec``: the SDK's ``process.exec`` (merged output, no streaming), for reference.

Run: ``uv run --all-extras python benchmarks/daytona_exec.py [--runs N]``. Target: ours/sdk-session
<= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "providers" / "daytona" / "tests"))

from agent_sandbox_daytona import DaytonaBackend, DaytonaOptions
from conftest import ThreadedFake

import agent_sandbox as asb


async def _timed(func: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await func()
    return time.perf_counter() - start


async def main(runs: int) -> None:
    from daytona import AsyncDaytona, DaytonaConfig, SessionExecuteRequest

    with ThreadedFake() as fake:
        backend = DaytonaBackend(DaytonaOptions(api_key=fake.api_key, api_url=fake.api_url))
        config = DaytonaConfig(api_key=fake.api_key, api_url=fake.api_url)
        async with AsyncDaytona(config) as daytona, await asb.Sandbox.create(backend=backend) as sb:
            raw = await daytona.get(sb.id)

            async def ours() -> None:
                result = await sb.exec(["true"])
                assert result.exit_code == 0

            async def ours_timeout() -> None:
                # With a timeout the command also runs under the in-sandbox backstop.
                result = await sb.exec(["true"], timeout=30)
                assert result.exit_code == 0

            async def sdk_session() -> None:
                session = f"bench-{uuid.uuid4().hex}"
                await raw.process.create_session(session)
                try:
                    started = await raw.process.execute_session_command(
                        session, SessionExecuteRequest(command="true", run_async=True)
                    )
                    out: list[str] = []
                    await raw.process.get_session_command_logs_async(
                        session, started.cmd_id, out.append, out.append
                    )
                    command = await raw.process.get_session_command(session, started.cmd_id)
                    assert command.exit_code == 0
                finally:
                    await raw.process.delete_session(session)

            async def sdk_exec() -> None:
                response = await raw.process.exec("true", timeout=30)
                assert response.exit_code == 0

            cases = {
                "ours": ours,
                "ours-timeout": ours_timeout,
                "sdk-session": sdk_session,
                "sdk-exec": sdk_exec,
            }
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for func in cases.values():  # warm up connections
                for _ in range(5):
                    await func()
            for _ in range(runs):
                for name, func in cases.items():
                    samples[name].append(await _timed(func))
        await backend.aclose()

    medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    for name, value in medians.items():
        print(f"{name:12s} median {value:7.2f} ms over {runs} runs")
    print(
        f"ratio ours/sdk-session: {medians['ours'] / medians['sdk-session']:.2f}  (target <= 1.10)"
    )
    print(
        f"ratio ours-timeout/sdk-session: {medians['ours-timeout'] / medians['sdk-session']:.2f}"
        "  (the SDK calls enforce no timeout; ours adds the in-sandbox kill backstop)"
    )
    print(
        f"ratio ours/sdk-exec:    {medians['ours'] / medians['sdk-exec']:.2f}  (merged output, no streams)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
