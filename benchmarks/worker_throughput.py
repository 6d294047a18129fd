# Starting the worker and redis processes blocks for a moment; nothing else runs then.
# ruff: noqa: ASYNC220
"""The self-hosted worker under load: S sessions x C tool calls through W worker processes
(``agent-sandbox worker``, concurrency K each, local provider), against the same calls run
directly through ``ToolKit.run`` in one process with the same number of sessions served at once
(W x K) — the baseline: what the queue, the leases and the processes add.

Every call is ``echo N >> calls.log; wc -l < calls.log``: the answer proves the call ran once and
in order. Prints throughput (calls/s), p50/p99 tool-call latency as the agent sees it (from
``call_tool`` to its answer) for the calls after each session's first, the p50 of first calls
(which include waiting in the queue for a free worker and creating the sandbox), and the ratios
to the baseline, for SQLite and (when ``redis-server`` is installed) Redis.

Run: ``uv run --all-extras python benchmarks/worker_throughput.py [--sessions 200 --calls 10
--workers 4 --concurrency 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from measure import percentile

import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.worker import open_source

COMMAND = Path(sys.executable).parent / "agent-sandbox"


def command(n: int) -> str:
    return f"echo {n} >> calls.log; wc -l < calls.log"


def summary(
    name: str, latencies: list[float], firsts: list[float], wall: float
) -> dict[str, float]:
    p99 = percentile(latencies, 0.99)
    calls = len(latencies) + len(firsts)
    row = {
        "throughput": calls / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": p99 * 1000,
        "first_ms": statistics.median(firsts) * 1000,
    }
    print(
        f"{name:<24} {row['throughput']:6.1f} calls/s  p50 {row['p50_ms']:6.1f} ms  "
        f"p99 {row['p99_ms']:6.1f} ms  first call p50 {row['first_ms']:7.1f} ms  "
        f"({calls} calls in {wall:.1f} s)"
    )
    return row


async def baseline(args: argparse.Namespace, root: Path) -> dict[str, float]:
    """The same calls through ToolKit.run, W x K sessions at a time, one process."""
    backend = LocalBackend(LocalOptions(root=root))
    slots = anyio.Semaphore(args.workers * args.concurrency)
    latencies: list[float] = []
    firsts: list[float] = []

    async def session() -> None:
        queued = time.perf_counter()
        async with slots:
            sandbox = await asb.Sandbox.create(backend=backend)
            try:
                toolkit = asb.ToolKit(sandbox)
                for n in range(args.calls):
                    start = queued if n == 0 else time.perf_counter()
                    result = await toolkit.run("bash", {"command": command(n)})
                    (firsts if n == 0 else latencies).append(time.perf_counter() - start)
                    assert result.content.strip() == str(n + 1), result.content
            finally:
                await sandbox.destroy()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(args.sessions):
            tg.start_soon(session)
    return summary("baseline (ToolKit.run)", latencies, firsts, time.perf_counter() - start)


async def through_workers(
    args: argparse.Namespace, name: str, url: str, root: Path, logs: Path
) -> dict[str, float]:
    procs = [
        subprocess.Popen(
            [
                str(COMMAND),
                "worker",
                "--source",
                url,
                "--provider",
                "local",
                "-o",
                f"root={root}",
                "--concurrency",
                str(args.concurrency),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(logs / f"{name}-{i}.log").open("wb"),
        )
        for i in range(args.workers)
    ]
    queue = open_source(url)
    sessions = queue.sessions  # type: ignore[attr-defined]
    latencies: list[float] = []
    firsts: list[float] = []

    async def agent() -> None:
        session = await sessions.create()
        for n in range(args.calls):
            start = time.perf_counter()
            result = await sessions.call_tool(session, "bash", {"command": command(n)})
            (firsts if n == 0 else latencies).append(time.perf_counter() - start)
            assert result.content.strip() == str(n + 1), result.content
        await sessions.close(session)

    try:
        await anyio.sleep(3)  # let the workers start (imports), outside the measurement
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(args.sessions):
                tg.start_soon(agent)
        return summary(f"worker ({name})", latencies, firsts, time.perf_counter() - start)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        await queue.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(
        f"{args.sessions} sessions x {args.calls} calls; {args.workers} workers x concurrency "
        f"{args.concurrency}; local provider; {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o711)  # as root, the sandboxes' own uids pass through it
        work = Path(tmp)
        base = await baseline(args, work / "baseline")
        rows = {"sqlite": await through_workers(
            args, "sqlite", f"sqlite://{work / 'queue.db'}", work / "sqlite", work
        )}  # fmt: skip
        redis = shutil.which("redis-server")
        if redis is None:
            print("redis-server not installed: Redis skipped")
        else:
            port = free_port()
            server = subprocess.Popen(
                [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
                stdout=subprocess.DEVNULL,
            )
            try:
                await anyio.sleep(0.5)
                rows["redis"] = await through_workers(
                    args, "redis", f"redis://127.0.0.1:{port}/0", work / "redis", work
                )
            finally:
                server.terminate()
                server.wait()
        print("\nratios to the baseline (ToolKit.run in one process):")
        for name, row in rows.items():
            print(
                f"  {name:<7} throughput x{row['throughput'] / base['throughput']:.2f}  "
                f"p50 x{row['p50_ms'] / base['p50_ms']:.2f}  p99 x{row['p99_ms'] / base['p99_ms']:.2f}  "
                f"first call x{row['first_ms'] / base['first_ms']:.2f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
