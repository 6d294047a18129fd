"""What the E2B provider adds to running a command, measured against the fake E2B.

Three ways to run ``true`` in the same sandbox, interleaved so machine noise hits all alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"], timeout=30)`` through ``E2BBackend`` (envd's process service
  through the SDK's connect-rpc client, output kept as bytes, under the tree supervisor);
* ``sdk``: the e2b SDK called directly, ``sandbox.commands.run("true", timeout=30)`` — the
  baseline;
* ``sdk-supervised``: the same call running ``true`` under the tree supervisor, as ours does, so
  the ratio to it is what the client side adds.

All speak to the same fake E2B (the SDK's generated envd stub serving real processes on
127.0.0.1). Run: ``uv run --all-extras python benchmarks/e2b_exec.py [--runs N]`` (as root: the
fake gives each sandbox its own mount namespace). Target: ours/sdk <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio

from agent_sandbox_e2b import E2BBackend, E2BOptions
from fakes import exec_true, use_tests_of
from measure import interleave, report_medians

import agent_sandbox as asb
from agent_sandbox import tree


async def main(runs: int) -> None:
    use_tests_of("e2b")
    from e2b import AsyncSandbox
    from fake_e2b import FakeE2B

    fake = FakeE2B().start()
    try:
        params = {
            "api_key": fake.api_key,
            "api_url": fake.url,
            "sandbox_url": fake.url,
            "domain": "e2b.local",
        }
        backend = E2BBackend(E2BOptions(**params))
        async with await asb.Sandbox.create(backend=backend) as sb:
            raw = await AsyncSandbox.connect(sb.id, timeout=600, **params)

            async def sdk() -> None:
                result = await raw.commands.run("true", timeout=30)
                assert result.exit_code == 0

            # The same call running "true" under the tree supervisor, as ours does: what is left
            # is the client side.
            supervised = f"set -- asb-bench '' asb-bench true\n{tree.SUPERVISE}"

            async def sdk_supervised() -> None:
                result = await raw.commands.run(supervised, timeout=30)
                assert result.exit_code == 0

            cases = {"ours": exec_true(sb), "sdk": sdk, "sdk-supervised": sdk_supervised}
            samples = await interleave(cases, runs)
        await backend.aclose()
    finally:
        fake.stop()
    report_medians(
        samples,
        [
            ("ours", "sdk", "target <= 1.10"),
            ("ours", "sdk-supervised", "the client side: the same in-sandbox work on both"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
