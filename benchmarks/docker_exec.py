"""What the Docker provider adds to one command: ``Sandbox.exec(["true"])`` against docker-py's
``exec_run(["true"])`` and the ``docker exec`` CLI, in the same container, interleaved so machine
noise hits all alike, median of N runs.

Run: ``uv run --all-extras python benchmarks/docker_exec.py [--runs N]``.
Targets: ours / exec_run <= 1.10; ours faster than the CLI.
"""

from __future__ import annotations

import argparse
import subprocess

import anyio
from agent_sandbox_docker import DockerBackend
from docker_common import BENCH_LABEL, IMAGE, RUN_ID, cleanup, raw_client, report, timed, timed_sync

from agent_sandbox import Sandbox


async def main(runs: int) -> None:
    import docker

    api = raw_client()
    client = docker.DockerClient(version="auto")
    backend = DockerBackend()
    try:
        async with await Sandbox.create(
            backend=backend, image=IMAGE, labels={BENCH_LABEL: RUN_ID}, ttl_seconds=900
        ) as sb:
            container = client.containers.get(sb.id)

            async def ours() -> None:
                result = await sb.exec(["true"])
                assert result.exit_code == 0

            def raw() -> None:
                assert container.exec_run(["true"]).exit_code == 0

            def cli() -> None:
                subprocess.run(["docker", "exec", sb.id, "true"], check=True)

            for _ in range(5):  # warm up connections and caches
                await ours()
                raw()
                cli()
            samples: dict[str, list[float]] = {
                "docker-py exec_run": [],
                "Sandbox.exec": [],
                "docker exec CLI": [],
            }
            for i in range(runs):
                order = [0, 1, 2] if i % 2 == 0 else [2, 1, 0]
                for which in order:
                    if which == 0:
                        samples["docker-py exec_run"].append(timed_sync(raw))
                    elif which == 1:
                        samples["Sandbox.exec"].append(await timed(ours))
                    else:
                        samples["docker exec CLI"].append(timed_sync(cli))
            report('exec(["true"]), same container', samples, "docker-py exec_run")
    finally:
        await backend.aclose()
        client.close()
        left = cleanup(api)
        print(
            f"  containers left after cleanup: {left} (removed)" if left else "  no containers left"
        )
        api.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=60)
    anyio.run(main, parser.parse_args().runs)
