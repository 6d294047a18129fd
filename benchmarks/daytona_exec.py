"""What the Daytona provider adds to running a command, measured against the fake Daytona.

Three ways to run ``true`` in the same sandbox, interleaved so machine noise hits all alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"], timeout=30)`` through ``DaytonaBackend`` (a session of its
  own, the byte-exact wrapper, the log stream closed by us once the wrapper reports the status);
* ``sdk-session``: the daytona SDK called directly, the cheapest way it gives separate, streamed
  stdout/stderr and an exit code: one session reused, ``execute_session_command(run_async=True)``,
  ``get_session_command_logs_async`` (it returns when the daemon ends the log: after its 50 polls
  of 20 ms once the output stopped, as the fake does like the daemon), ``get_session_command``;
* ``sdk-exec``: the SDK's one-shot ``process.exec`` (merged output, no streaming, no stdin).

Run: ``uv run --all-extras python benchmarks/daytona_exec.py [--runs N]`` (as root: each fake
sandbox has its own pid and mount namespaces). Target: ours/sdk-session <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Awaitable, Callable

from agent_sandbox_daytona import DaytonaBackend, DaytonaOptions
from fakes import exec_true, use_tests_of
from measure import interleave, report_medians

import agent_sandbox as asb


async def _per_operation(sb: asb.Sandbox, runs: int) -> dict[str, float]:
    """Median cost of each operation through the provider (file operations use the toolbox's
    file endpoints; ``write_file`` also runs one command that checks the user may write)."""
    await sb.write_file("bench/f.txt", b"x" * 1024)
    ops: dict[str, Callable[[], Awaitable[object]]] = {
        "exec": lambda: sb.exec(["true"]),
        "read_file": lambda: sb.read_file("bench/f.txt"),
        "write_file": lambda: sb.write_file("bench/f.txt", b"y" * 1024),
        "stat": lambda: sb.stat("bench/f.txt"),
        "list_dir": lambda: sb.list_dir("bench"),
        "mkdir": lambda: sb.mkdir("bench/d"),
        "remove": lambda: sb.remove("bench/d", recursive=True),
    }
    # In this order every time: mkdir makes what remove removes.
    times = await interleave(ops, runs, warmup=0, alternate=False)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


async def main(runs: int) -> None:
    use_tests_of("daytona")
    from conftest import ThreadedFake
    from daytona import AsyncDaytona, DaytonaConfig, SessionExecuteRequest

    with ThreadedFake() as fake:
        backend = DaytonaBackend(DaytonaOptions(api_key=fake.api_key, api_url=fake.api_url))
        config = DaytonaConfig(api_key=fake.api_key, api_url=fake.api_url)
        async with AsyncDaytona(config) as daytona, await asb.Sandbox.create(backend=backend) as sb:
            raw = await daytona.get(sb.id)
            await raw.process.create_session("bench")

            async def sdk_session() -> None:
                started = await raw.process.execute_session_command(
                    "bench", SessionExecuteRequest(command="true", run_async=True)
                )
                out: list[str] = []
                await raw.process.get_session_command_logs_async(
                    "bench", started.cmd_id, out.append, out.append
                )
                command = await raw.process.get_session_command("bench", started.cmd_id)
                assert command.exit_code == 0

            async def sdk_exec() -> None:
                response = await raw.process.exec("true", timeout=30)
                assert response.exit_code == 0

            cases = {"ours": exec_true(sb), "sdk-session": sdk_session, "sdk-exec": sdk_exec}
            samples = await interleave(cases, runs)
            await raw.process.delete_session("bench")
            costs = await _per_operation(sb, max(10, runs // 5))
        await backend.aclose()

    report_medians(
        samples,
        [
            ("ours", "sdk-session", "target <= 1.10"),
            ("ours", "sdk-exec", "merged output, no streams"),
        ],
    )
    print("per operation (ours):")
    for name, value in costs.items():
        print(f"  {name:12s} median {value:8.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
