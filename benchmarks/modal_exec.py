"""What the Modal provider adds to running a command, measured against the fake Modal.

Two ways to run ``true`` in the same sandbox, interleaved so machine noise hits both alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"], timeout=30)`` through ``ModalBackend`` (the task command
  router through the SDK's client: start, stdout and stderr streamed, exit status; output kept
  as bytes, timeout watchdog armed);
* ``sdk``: the modal SDK called directly, ``sb.exec("true", timeout=30)``, then its stdout and
  stderr read and ``wait()`` — the baseline.

Both speak to the same fake Modal (the SDK's own gRPC service bases serving real processes on
127.0.0.1). Run: ``uv run --all-extras python benchmarks/modal_exec.py [--runs N]`` (as root: the
fake enters each sandbox's namespaces). Target: ours/sdk <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from fakes import exec_true, use_tests_of
from measure import interleave, report_medians


async def main(runs: int) -> None:
    use_tests_of("modal")
    from fake_modal import FakeModal

    fake = FakeModal().start()
    # The SDK reads its server and credentials when it first makes a client.
    os.environ["MODAL_SERVER_URL"] = fake.url
    os.environ["MODAL_TOKEN_ID"] = fake.token_id
    os.environ["MODAL_TOKEN_SECRET"] = fake.token_secret
    import modal
    from agent_sandbox_modal import ModalBackend, ModalOptions

    import agent_sandbox as asb

    try:
        backend = ModalBackend(ModalOptions())
        async with await asb.Sandbox.create(backend=backend) as sb:
            client = await modal.Client.from_env.aio()
            raw = await modal.Sandbox.from_id.aio(sb.id, client=client)

            async def sdk() -> None:
                process = await raw.exec.aio("true", timeout=30)
                await process.stdout.read.aio()
                await process.stderr.read.aio()
                assert await process.wait.aio() == 0

            samples = await interleave({"ours": exec_true(sb), "sdk": sdk}, runs)
            await raw.detach.aio()
        await backend.aclose()
    finally:
        fake.stop()
    report_medians(samples, [("ours", "sdk", "target <= 1.10")])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
