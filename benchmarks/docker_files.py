"""Moving a file in and out: ``write_file`` + ``read_file`` (through the exec agent) against
docker-py's own ``put_archive`` (tar built in memory) + ``get_archive`` (tar read back and
unpacked), same container, interleaved, p50/p99 of N runs, for each size; then the peak client
memory of one round trip each, measured with tracemalloc (the payload is allocated before).

Run: ``uv run --all-extras python benchmarks/docker_files.py [--runs N] [--sizes 4096,10485760]
[--network none] [--runtime runsc]``. Target: ours / docker-py <= 0.5.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import tracemalloc
from typing import Any

import anyio
from agent_sandbox_docker import DockerBackend, DockerOptions
from docker_common import cleanup, raw_client, runs_parser, sandbox_spec
from measure import interleave, report_percentiles

from agent_sandbox import Sandbox


def raw_round_trip(api: Any, cid: str, data: bytes) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("raw.bin")
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    api.put_archive(cid, "/tmp", buffer.getvalue())
    del buffer
    stream, _ = api.get_archive(cid, "/tmp/raw.bin")
    archive = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        member = tar.extractfile("raw.bin")
        assert member is not None
        back = member.read()
    assert len(back) == len(data)


async def main(runs: int, sizes: list[int], network: str, runtime: str | None) -> None:
    api = raw_client()
    backend = DockerBackend(DockerOptions(runtime=runtime))
    try:
        async with await Sandbox.create(backend=backend, **sandbox_spec(network, 1800)) as sb:
            for size in sizes:
                await one_size(api, sb, runs, size)
    finally:
        await backend.aclose()
        cleanup(api)
        api.close()


async def one_size(api: Any, sb: Sandbox, runs: int, size: int) -> None:
    data = os.urandom(size)

    async def ours() -> None:
        await sb.write_file("/tmp/ours.bin", data)
        back = await sb.read_file("/tmp/ours.bin")
        assert len(back) == len(data)

    def raw() -> None:
        raw_round_trip(api, sb.id, data)

    cases = {"docker-py put/get_archive": raw, "write_file+read_file": ours}
    samples = await interleave(cases, runs, warmup=2)
    title = f"write + read {size} bytes, same container"
    report_percentiles(title, samples, "docker-py put/get_archive")

    tracemalloc.start()
    await ours()
    _, ours_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    raw()
    _, raw_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  peak client memory of one round trip: docker-py {raw_peak / 2**20:.1f} MiB, ours")
    print(f"  {ours_peak / 2**20:.1f} MiB (incl. the returned bytes)")


if __name__ == "__main__":
    parser = runs_parser(__doc__)
    parser.add_argument("--sizes", default="4096,10485760")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    anyio.run(main, args.runs, sizes, args.network, args.runtime)
