"""What the Docker provider adds to one command: ``Sandbox.exec(["true"])`` (through the exec
agent) against docker-py's ``exec_run(["true"])`` in the same container, and the same command on
a sandbox without the agent (``agent=False``, the engine's exec), interleaved so machine noise
hits all alike; p50 and p99 of N runs.

Run: ``uv run --all-extras python benchmarks/docker_exec.py [--runs N] [--network none]
[--runtime runsc]``. Targets: p50 <= 6 ms and <= 0.15x exec_run (p99 too).
"""

from __future__ import annotations

import anyio
from agent_sandbox_docker import DockerBackend, DockerOptions
from docker_common import cleanup, raw_client, runs_parser, sandbox_spec
from measure import interleave, report_percentiles

from agent_sandbox import Sandbox


async def main(runs: int, network: str, runtime: str | None) -> None:
    import docker

    api = raw_client()
    client = docker.DockerClient(version="auto")
    backend = DockerBackend(DockerOptions(runtime=runtime))
    engine = DockerBackend(DockerOptions(runtime=runtime, agent=False))
    spec = sandbox_spec(network, 900)
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

            cases = {
                "docker-py exec_run": raw,
                "Sandbox.exec (agent)": ours,
                "Sandbox.exec (agent=False)": without_agent,
            }
            samples = await interleave(cases, runs)  # warmed up: connections and caches
            title = f'exec(["true"]), network {network}, runtime {runtime or "default"}'
            report_percentiles(title, samples, "docker-py exec_run")
    finally:
        await backend.aclose()
        await engine.aclose()
        client.close()
        left = cleanup(api)
        print(f"  containers left after cleanup: {left}")
        api.close()


if __name__ == "__main__":
    args = runs_parser(__doc__).parse_args()
    anyio.run(main, args.runs, args.network, args.runtime)
