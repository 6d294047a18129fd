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

import anyio
from agent_sandbox_docker import DockerBackend, DockerOptions
from agent_sandbox_docker._backend import OPEN_NETWORK
from docker_common import (
    BENCH_LABEL,
    IMAGE,
    RUN_ID,
    cleanup,
    raw_client,
    runs_parser,
    sandbox_spec,
)
from measure import Case, interleave, report_percentiles, timed

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
            sb = await Sandbox.create(backend=backend, **sandbox_spec(network, 600))
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
                took = await timed(lambda cid=cid: api.remove_container(cid, force=True))
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
        cases: dict[str, Case] = {name: lambda on=on: raw(on) for name, on in baselines.items()}
        cases["Sandbox.create+exec"] = ours
        await ours()  # creates agent-sandbox-open when missing
        # Warm up (removals not recorded), then measure; each round's containers are removed
        # after it.
        await interleave(cases, 3, warmup=0, after_round=lambda: remove_all(record=False))
        samples = await interleave(cases, runs, warmup=0, after_round=remove_all)
        where = f"network {network}, runtime {runtime or 'default'}"
        for name in reversed(baselines):
            report_percentiles(f"create + first exec, {where}", samples, name)
        report_percentiles("destroy (kill + remove)", removal, "docker-py remove_container(force)")
    finally:
        await backend.aclose()
        client.close()
        left = cleanup(api)
        print(f"  containers left after cleanup: {left}")
        api.close()


if __name__ == "__main__":
    args = runs_parser(__doc__).parse_args()
    anyio.run(main, args.runs, args.network, args.runtime)
