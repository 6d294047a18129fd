"""What the MCP tunnel adds to a tool call: an MCP client (the ``mcp`` SDK) calling ``add`` on an
MCP server through edge <- connector (TLS WebSocket, HTTP/2 streams, both sides audited to
JSONL) against the same client calling the same server directly. Median of N calls each,
interleaved so machine noise hits both alike; then the tunnel's throughput on a large result.

Everything runs on loopback as real processes, as in the end-to-end tests, so the ratio
measures the tunnel's own cost (two extra hops, TLS, framing, audit), not a network.

Run: ``uv run python benchmarks/tunnel_latency.py [--runs 300] [--mib 32]``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client
from measure import Case, interleave, percentile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tunnel_support import Tunnel, events, tunnel


def _ms(samples: list[float]) -> str:
    p99 = percentile(samples, 0.99)
    return f"median {statistics.median(samples) * 1000:7.2f} ms   p99 {p99 * 1000:7.2f} ms"


def _add(client: Client) -> Case:
    """One ``tools/call add`` through ``client``, checked to succeed."""
    numbers = itertools.count()

    async def call() -> None:
        result = await client.call_tool("add", {"a": next(numbers), "b": 1})
        assert not result.is_error

    return call


async def _latency(t: Tunnel, upstream: str, runs: int) -> tuple[list[float], list[float]]:
    async with t.client("bench") as via, t.client("", url=upstream) as plain:
        # warmed up: connections, tool listing, code paths
        samples = await interleave({"tunnel": _add(via), "direct": _add(plain)}, runs, warmup=20)
    return samples["direct"], samples["tunnel"]


async def _throughput(t: Tunnel, upstream: str, mib: int) -> tuple[float, float, int]:
    size = mib << 20
    timings = []
    for url in (None, upstream):
        async with t.client("bench", url=url, timeout=300) as client:
            await client.call_tool("big", {"size": 1 << 20})
            start = time.perf_counter()
            await client.call_tool("big", {"size": size})
            timings.append(time.perf_counter() - start)
    crossed = max(
        e["result"]["response_bytes"]
        for e in events(t.edge_audit)
        if e["op"] == "tunnel.exchange" and e["tool"] == "big"
    )
    return timings[0], timings[1], crossed


async def main(runs: int, mib: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with tunnel(Path(tmp)) as t:
            upstream = await t.upstream(json_response=True)
            await t.start_edge()
            await t.start_connector(
                {"bench": upstream}, "--allow-loopback", "--max-response-bytes", str(1 << 30)
            )
            direct, tunnelled = await _latency(t, upstream, runs)
            via_time, direct_time, crossed = await _throughput(t, upstream, mib)
    ratio = statistics.median(tunnelled) / statistics.median(direct)
    print(f"tools/call add, {runs} calls each (interleaved):")
    print(f"  direct   {_ms(direct)}")
    print(f"  tunnel   {_ms(tunnelled)}")
    print(f"  ratio tunnel/direct (median): {ratio:.2f}x")
    crossed_mib = crossed / (1 << 20)
    print(f"tools/call big, a {mib} MiB text ({crossed_mib:.1f} MiB of JSON over the wire):")
    print(f"  direct   {direct_time:6.2f} s   {crossed_mib / direct_time:7.1f} MiB/s")
    print(f"  tunnel   {via_time:6.2f} s   {crossed_mib / via_time:7.1f} MiB/s")
    print(f"  ratio tunnel/direct (time): {via_time / direct_time:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="calls per side (>= 200)")
    parser.add_argument("--mib", type=int, default=32, help="size of the large result")
    args = parser.parse_args()
    anyio.run(main, max(args.runs, 200), args.mib)
