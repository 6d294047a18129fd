"""What the local provider adds to running a command: ``Sandbox.exec(["true"])`` against a bare
``subprocess.run(["true"])``, and (with bubblewrap) against a bare ``bwrap ... true`` built from
the same jail recipe (run as root, the bare bwrap drops to the sandbox's unprivileged uid with
``setpriv`` first, as the provider must). Median of N runs each, interleaved so machine noise
hits all alike.

Run: ``uv run python benchmarks/local_exec.py [--runs N]``. Target: both ratios <= 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile

from measure import Case, interleave

import agent_sandbox as asb
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.local._jail import bwrap_prefix
from agent_sandbox.local._user import drop_argv


async def _measure(isolation: str, runs: int, root: str) -> dict[str, float]:
    backend = LocalBackend(LocalOptions(root=root, isolation=isolation))  # type: ignore[arg-type]
    async with await asb.Sandbox.create(backend=backend) as sb:
        cases: dict[str, Case] = {
            "sandbox": lambda: sb.exec(["true"]),
            "subprocess": lambda: subprocess.run(["true"], check=True),
        }
        if isolation == "bwrap":
            bwrap = shutil.which("bwrap")
            assert bwrap is not None
            directory = sb.info.metadata["path"]
            uid = sb.info.metadata.get("uid")
            bare_bwrap = [
                *(drop_argv(int(uid), int(uid)) if uid else []),
                *bwrap_prefix(
                    bwrap,
                    os.path.join(directory, "workspace"),
                    os.path.join(directory, "tmp"),
                    share_net=True,
                ),
                "--setenv", "PATH", "/usr/bin:/bin",
                "--chdir", "/workspace",
                "true",
            ]  # fmt: skip
            cases["bwrap"] = lambda: subprocess.run(bare_bwrap, check=True)
        samples = await interleave(cases, runs, warmup=10)  # warmed up: caches, the page cache
    await backend.aclose()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per measurement (>= 200)")
    args = parser.parse_args()
    modes = ["none"]
    if shutil.which("bwrap"):
        modes.insert(0, "bwrap")
    else:
        print("bwrap not on PATH: measuring isolation='none' only")
    with tempfile.TemporaryDirectory(prefix="asb-bench-") as root:
        os.chmod(root, 0o711)  # as root, the sandboxes' own uids pass through it
        for mode in modes:
            medians = asyncio.run(_measure(mode, args.runs, root))
            ms = {name: value * 1000 for name, value in medians.items()}
            line = (
                f"isolation={mode:<5}  Sandbox.exec(['true']) {ms['sandbox']:.3f} ms  "
                f"subprocess.run(['true']) {ms['subprocess']:.3f} ms  "
                f"ratio {medians['sandbox'] / medians['subprocess']:.2f}x"
            )
            if "bwrap" in medians:
                line += (
                    f"  bare bwrap {ms['bwrap']:.3f} ms  "
                    f"ratio to bare bwrap {medians['sandbox'] / medians['bwrap']:.2f}x"
                )
            print(line)
    print(f"(median of {args.runs} runs each; target: ratios <= 1.5)")


if __name__ == "__main__":
    main()
