"""Create-to-first-command: ``Sandbox.create`` + ``exec(["true"])`` against docker-py's own
``create_container`` + ``start`` + ``exec_run(["true"])`` with the same image, interleaved, median
of N runs; then the removal of each: ``Sandbox.destroy()`` against docker-py's
``remove_container(force=True)``. docker-py runs twice: on the default bridge (what a bare
``docker run`` does) and on ``agent-sandbox-open``, the network our open sandboxes join (inter-
container traffic off), so the network's own cost shows apart from the library's.

Run: ``uv run --all-extras python benchmarks/docker_create.py [--runs N]``.
Target: ours / docker-py <= 1.15 (create + first exec); destroy: no graceful 10 s stop.
"""

from __future__ import annotations

import argparse

import anyio
from agent_sandbox_docker import DockerBackend
from agent_sandbox_docker._backend import OPEN_NETWORK
from docker_common import BENCH_LABEL, IMAGE, RUN_ID, cleanup, raw_client, report, timed, timed_sync

from agent_sandbox import Sandbox


async def main(runs: int) -> None:
    import docker

    api = raw_client()
    client = docker.DockerClient(version="auto")
    backend = DockerBackend()
    ids: list[str] = []
    mine: list[Sandbox] = []
    try:

        async def ours() -> None:
            sb = await Sandbox.create(
                backend=backend, image=IMAGE, labels={BENCH_LABEL: RUN_ID}, ttl_seconds=600
            )
            mine.append(sb)
            assert (await sb.exec(["true"])).exit_code == 0

        def raw(network: str | None = None) -> None:
            container = client.containers.create(
                IMAGE, command=["sleep", "600"], labels={BENCH_LABEL: RUN_ID}, network=network
            )
            ids.append(container.id)
            container.start()
            assert container.exec_run(["true"]).exit_code == 0

        def raw_same_network() -> None:
            raw(OPEN_NETWORK)

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

        for _ in range(3):
            await ours()  # also creates agent-sandbox-open when missing
            raw()
            raw_same_network()
            await remove_all(record=False)
        bridge, same = "docker-py, default bridge", "docker-py, agent-sandbox-open"
        samples: dict[str, list[float]] = {bridge: [], same: [], "Sandbox.create+exec": []}
        for i in range(runs):
            if i % 2 == 0:
                samples[bridge].append(timed_sync(raw))
                samples[same].append(timed_sync(raw_same_network))
                samples["Sandbox.create+exec"].append(await timed(ours))
            else:
                samples["Sandbox.create+exec"].append(await timed(ours))
                samples[same].append(timed_sync(raw_same_network))
                samples[bridge].append(timed_sync(raw))
            await remove_all()
        report("create + first exec", samples, same)
        report("create + first exec (against a bare docker run)", samples, bridge)
        report("destroy (kill + remove)", removal, "docker-py remove_container(force)")
    finally:
        await backend.aclose()
        client.close()
        left = cleanup(api)
        print(f"  containers left after cleanup: {left}")
        api.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    anyio.run(main, parser.parse_args().runs)
