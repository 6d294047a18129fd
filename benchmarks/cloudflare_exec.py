"""What the Cloudflare provider adds to running a command, measured against the fake Worker.

Two ways to run ``true`` in the same sandbox, interleaved so machine noise hits both alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"], timeout=30)`` through ``CloudflareBackend`` (the process
  route, its events read by the handle's task, the deadline armed);
* ``httpx``: the same request made directly with ``httpx`` -- ``POST
  /asb/v1/sandboxes/{id}/processes`` with the same body, the event stream read until ``exit`` --
  the baseline.

Both speak to the same fake Worker (real processes on 127.0.0.1, the Worker's runner in them).
Run: ``uv run --all-extras python benchmarks/cloudflare_exec.py [--runs N]`` (as root: the fake
gives each container its own mounts and uid). Target: ours/httpx <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets

import httpx
from agent_sandbox_cloudflare import CloudflareBackend, CloudflareOptions
from fakes import exec_true, use_tests_of
from measure import interleave, report_medians

import agent_sandbox as asb


async def main(runs: int) -> None:
    use_tests_of("cloudflare")
    from fake_bridge import FakeWorker

    fake = FakeWorker().start()
    try:
        backend = CloudflareBackend(CloudflareOptions(url=fake.url, api_key=fake.api_key))
        async with (
            await asb.Sandbox.create(backend=backend) as sb,
            httpx.AsyncClient(
                base_url=fake.url, headers={"Authorization": f"Bearer {fake.api_key}"}
            ) as client,
        ):

            async def raw() -> None:
                body = {
                    "ref": "p-" + secrets.token_hex(8),
                    "argv": ["true"],
                    "cwd": sb.info.workdir,
                    "timeout_ms": 40_000,
                }
                path = f"/asb/v1/sandboxes/{sb.id}/processes"
                headers = {"Session-Id": "asb"}
                async with client.stream("POST", path, json=body, headers=headers) as answer:
                    event = ""
                    async for line in answer.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif event == "exit" and line.startswith("data: "):
                            assert line == 'data: {"exit_code": 0}'
                            return
                raise AssertionError("no exit event")

            samples = await interleave({"ours": exec_true(sb), "httpx": raw}, runs)
        await backend.aclose()
    finally:
        fake.stop()
    report_medians(samples, [("ours", "httpx", "target <= 1.10")])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
