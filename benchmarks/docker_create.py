"""Create-to-first-command: ``Sandbox.create`` + ``exec(["true"])`` against docker-py's own
``create_container`` + ``start`` + ``exec_run(["true"])`` with the same image and runtime,
interleaved, p50/p99 of N runs; then the removal of each: ``Sandbox.destroy()`` against
docker-py's ``remove_container(force=True)``. On network ``open`` docker-py runs twice: on the
default bridge (what a bare ``docker run`` does) and on ``agent-sandbox-open``, the network our
open sandboxes join (inter-container traffic off), so the network's own cost shows apart from the
library's; on network ``none`` it runs with ``network_mode: none`` like ours.

Run: ``uv run --all-extras python benchmarks/docker_create.py [--runs N] [--network none]
[--runtime runsc]``. Target: ours / docker-py <= 1.10 (create + first exec); destroy: no
graceful 10 s stop.
"""

from __future__ import annotations

import argparse

import anyio
from agent_sandbox_docker import DockerBackend, DockerOptions
from agent_sandbox_docker._backend import OPEN_NETWORK
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
    ids: list[str] = []
    mine: list[Sandbox] = []
    try:

        async def ours() -> None:
            sb = await Sandbox.create(
                backend=backend,
                image=IMAGE,
                labels={BENCH_LABEL: RUN_ID},
                ttl_seconds=600,
                network=network,
            )
            mine.append(sb)
            assert (await sb.exec(["true"])).exit_code == 0

        def raw(on: str | None = None) -> None:
            container = client.containers.create(
                IMAGE,
                command=["sleep", "600"],
                labels={BENCH_LABEL: RUN_ID},
                network=on if network == "open" else None,
                network_mode="none" if network == "none" else None,
                runtime=runtime,
            )
            ids.append(container.id)
            container.start()
            assert container.exec_run(["true"]).exit_code == 0

        removal: dict[str, list[float]] = {
            "docker-py remove_container(force)": [],
            "Sandbox.destroy": [],
        }

        async def remove_all(record: bool = True) -> None:
            while ids:
                cid = ids.pop()
                took = timed_sync(lambda cid=cid: api.remove_container(cid, force=True))
                if record:
                    removal["docker-py remove_container(force)"].append(took)
            while mine:
                sb = mine.pop()
                took = await timed(sb.destroy)
                if record:
                    removal["Sandbox.destroy"].append(took)

        baselines = {"docker-py, network none": None}
        if network == "open":
            baselines = {
                "docker-py, default bridge": None,
                "docker-py, agent-sandbox-open": OPEN_NETWORK,
            }
        for _ in range(3):
            await ours()  # also creates agent-sandbox-open when missing
            for on in baselines.values():
                raw(on)
            await remove_all(record=False)
        samples: dict[str, list[float]] = {name: [] for name in baselines}
        samples["Sandbox.create+exec"] = []
        for i in range(runs):
            order = list(baselines.items())
            if i % 2:
                samples["Sandbox.create+exec"].append(await timed(ours))
            for name, on in order if i % 2 == 0 else reversed(order):
                samples[name].append(timed_sync(lambda on=on: raw(on)))
            if i % 2 == 0:
                samples["Sandbox.create+exec"].append(await timed(ours))
            await remove_all()
        where = f"network {network}, runtime {runtime or 'default'}"
        for name in reversed(baselines):
            report(f"create + first exec, {where}", samples, name)
        report("destroy (kill + remove)", removal, "docker-py remove_container(force)")
    finally:
        await backend.aclose()
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
