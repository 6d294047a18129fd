"""50 sandboxes at once: each is created, runs 20 commands one after the other and is
destroyed, all concurrently on one backend. Prints the wall time, per-sandbox latency, errors and
the containers left behind.

Run: ``uv run --all-extras python benchmarks/docker_concurrency.py [--count N] [--commands C]
[--rounds R] [--network none] [--runtime runsc]``. Targets: errors 0, leaks 0.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
from agent_sandbox_docker import DockerBackend, DockerOptions
from docker_common import (
    BENCH_LABEL,
    RUN_ID,
    add_sandbox_options,
    cleanup,
    raw_client,
    sandbox_spec,
)

from agent_sandbox import Sandbox


async def one(
    backend: DockerBackend,
    i: int,
    args: argparse.Namespace,
    latencies: list[float],
    errors: list[str],
) -> None:
    start = time.perf_counter()
    try:
        async with await Sandbox.create(backend=backend, **sandbox_spec(args.network, 600)) as sb:
            for n in range(args.commands):
                result = await sb.exec(["sh", "-c", f"echo {i}-{n}"])
                if result.stdout != f"{i}-{n}\n":
                    errors.append(f"sandbox {i}: wrong output {result.stdout!r}")
    except Exception as exc:
        errors.append(f"sandbox {i}: {type(exc).__name__}: {exc}")
    latencies.append(time.perf_counter() - start)


async def main(args: argparse.Namespace) -> None:
    api = raw_client()
    backend = DockerBackend(DockerOptions(runtime=args.runtime))
    count = args.count
    try:
        for r in range(args.rounds):
            latencies: list[float] = []
            errors: list[str] = []
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(one, backend, i, args, latencies, errors)
            wall = time.perf_counter() - start
            left = len(api.containers(all=True, filters={"label": f"{BENCH_LABEL}={RUN_ID}"}))
            print(
                f"round {r + 1}: {count} sandboxes x {args.commands} commands, network "
                f"{args.network}, runtime {args.runtime or 'default'}: "
                f"wall {wall:.2f} s, per sandbox median {statistics.median(latencies):.2f} s "
                f"max {max(latencies):.2f} s, errors {len(errors)}, leaked containers {left}"
            )
            for line in errors[:5]:
                print("   ", line)
    finally:
        await backend.aclose()
        cleanup(api)
        api.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--commands", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    add_sandbox_options(parser)
    anyio.run(main, parser.parse_args())
