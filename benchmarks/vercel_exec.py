"""What the Vercel provider adds to running a command, measured against the fake Vercel.

Four ways to run ``true`` in the same sandbox, interleaved so machine noise hits all alike,
median of N runs each:

* ``ours``: ``Sandbox.exec(["true"], timeout=30)`` through ``VercelBackend`` (one streamed
  ``run_process`` request, the command under the provider's command runner, uploaded when the
  sandbox was created, output kept as bytes);
* ``sdk``: the vercel-sandbox SDK called directly, ``sandbox.run_process("true",
  capture_output=True)`` (one streamed request, text output) — the baseline;
* ``shim``: the same SDK call running ``true`` under the command runner — what the runner costs
  inside the sandbox, so ``ours/shim`` is what the client side adds;
* ``perl``: the same SDK call running ``true`` under the Perl shim, what commands run under where
  the runner cannot (for comparison).

Both speak to the same fake Vercel (its own process, running real confined processes on
127.0.0.1). Run: ``uv run --all-extras python benchmarks/vercel_exec.py [--runs N]`` (as root:
the fake confines each session's processes). Target: ours/sdk <= 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from agent_sandbox_vercel import VercelBackend, VercelOptions
from agent_sandbox_vercel._shim import runner, wrap
from fakes import exec_true, use_tests_of
from measure import interleave, report_medians

import agent_sandbox as asb


async def main(runs: int) -> None:
    use_tests_of("vercel")
    from conftest import CREDENTIALS, FakeVercelServer
    from vercel.sandbox import SandboxClient, SandboxServiceOptions

    os.environ.update(CREDENTIALS)
    fake = FakeVercelServer()
    try:
        backend = VercelBackend(VercelOptions(base_url=fake.url))
        client = SandboxClient.create(options=SandboxServiceOptions(base_url=fake.url))
        async with await asb.Sandbox.create(backend=backend) as sb:
            raw = await client.get_sandbox(name=sb.id)

            async def sdk() -> None:
                result = await raw.run_process("true", capture_output=True)
                assert result.returncode == 0

            found = runner()
            assert found is not None, "no command runner in this installation"
            command, args = wrap(["true"], "/vercel/sandbox", "exec", 60, found[0])
            perl_command, perl_args = wrap(["true"], "/vercel/sandbox", "exec", 60)

            async def shim() -> None:
                result = await raw.run_process(command, args, capture_output=True)
                assert result.returncode == 0
                assert result.stdout == "x0 0\n"

            async def perl() -> None:
                result = await raw.run_process(perl_command, perl_args, capture_output=True)
                assert result.returncode == 0

            cases = {"ours": exec_true(sb), "sdk": sdk, "shim": shim, "perl": perl}
            samples = await interleave(cases, runs)
        await client.aclose()
        await backend.aclose()
    finally:
        fake.stop()
    report_medians(
        samples,
        [
            ("ours", "sdk", "target <= 1.10"),
            ("ours", "shim", "the client side alone"),
            ("perl", "sdk", "commands under the Perl shim"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
