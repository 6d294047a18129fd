"""What the Docker provider adds to one command: ``Sandbox.exec(["true"])`` (through the exec
agent) against docker-py's ``exec_run(["true"])`` in the same container, and the same command on
a sandbox without the agent (``agent=False``, the engine's exec), interleaved so machine noise
hits all alike; p50 and p99 of N runs.

Run: ``uv run --all-extras python benchmarks/docker_exec.py [--runs N] [--network none]
[--runtime runsc]``. Targets: p50 <= 6 ms and <= 0.15x exec_run (p99 too).
"""

from __future__ import annotations

import argparse

import anyio
from agent_sandbox_docker import DockerBackend, DockerOptions
from docker_common import (
    BENCH_LABEL,
    IMAGE,
    RUN_ID,
    add_sandbox_options,
    cleanup,
    raw_client,
    report,
    timed,
    timed_sync,
)

from agent_sandbox import Sandbox


async def main(runs: int, network: str, runtime: str | None) -> None:
    import docker

    api = raw_client()
    client = docker.DockerClient(version="auto")
    backend = DockerBackend(DockerOptions(runtime=runtime))
    engine = DockerBackend(DockerOptions(runtime=runtime, agent=False))
    spec = {"image": IMAGE, "labels": {BENCH_LABEL: RUN_ID}, "ttl_seconds": 900, "network": network}
    try:
        async with (
            await Sandbox.create(backend=backend, **spec) as sb,
            await Sandbox.create(backend=engine, **spec) as plain,
        ):

            async def ours() -> None:
                assert (await sb.exec(["true"])).exit_code == 0

            async def without_agent() -> None:
                assert (await plain.exec(["true"])).exit_code == 0

            container = client.containers.get(sb.id)

            def raw() -> None:
                assert container.exec_run(["true"]).exit_code == 0

            for _ in range(5):  # warm up connections and caches
                await ours()
                await without_agent()
                raw()
            samples: dict[str, list[float]] = {
                "docker-py exec_run": [],
                "Sandbox.exec (agent)": [],
                "Sandbox.exec (agent=False)": [],
            }
            for i in range(runs):
                for which in [0, 1, 2] if i % 2 == 0 else [2, 1, 0]:
                    if which == 0:
                        samples["docker-py exec_run"].append(timed_sync(raw))
                    elif which == 1:
                        samples["Sandbox.exec (agent)"].append(await timed(ours))
                    else:
                        samples["Sandbox.exec (agent=False)"].append(await timed(without_agent))
            title = f'exec(["true"]), network {network}, runtime {runtime or "default"}'
            report(title, samples, "docker-py exec_run")
    finally:
        await backend.aclose()
        await engine.aclose()
        client.close()
        left = cleanup(api)
        print(f"  containers left after cleanup: {left}")
        api.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    add_sandbox_options(parser)
    args = parser.parse_args()
    anyio.run(main, args.runs, args.network, args.runtime)
