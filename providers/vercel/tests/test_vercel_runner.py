"""The command runner: built reproducibly, uploaded once per sandbox, used for every command, and
replaced by the Perl shim, with the same guarantees, where a sandbox removed it or cannot take it.

Sandboxed code is hostile: it may delete the runner, make it unexecutable, or block the path it
is uploaded to. A command then still runs exactly once, with the same output and status.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from importlib import resources

import pytest
from agent_sandbox_vercel import VercelBackend, VercelOptions
from agent_sandbox_vercel._process import MISSING_RUNNER
from agent_sandbox_vercel._shim import RUNNER_DIR, runner

from agent_sandbox import Sandbox
from agent_sandbox.errors import FileNotFound
from agent_sandbox.models import SandboxSpec

pytestmark = pytest.mark.anyio


def test_the_runner_uploaded_is_the_one_shipped() -> None:
    """The shipped binary is its source rebuilt byte for byte: ``tests/test_packaging.py``."""
    found = runner()
    assert found is not None, "no command runner in the package"
    shipped = resources.files("agent_sandbox_vercel") / "_bin" / "shim-x86_64"
    assert found[1] == shipped.read_bytes()
    assert found[1][:4] == b"\x7fELF"


@pytest.fixture
async def sb(vercel_options: VercelOptions) -> AsyncIterator[Sandbox]:
    backend = VercelBackend(vercel_options)
    box = None
    try:
        box = await Sandbox.create(SandboxSpec(ttl_seconds=300), backend=backend)
        yield box
    finally:
        if box is not None:
            await backend.destroy(box.id)
        await backend.aclose()


async def _commands(sb: Sandbox) -> list[str]:
    """The names of the commands Vercel ran in the sandbox, oldest first."""
    from vercel.sandbox import SandboxClient, SandboxServiceOptions

    backend = sb.backend
    assert isinstance(backend, VercelBackend)
    client = SandboxClient.create(options=SandboxServiceOptions(base_url=backend.opts.base_url))
    try:
        raw = await client.get_sandbox(name=sb.id)
        assert raw.current_session is not None
        found = await raw.current_session.query_processes()
        return [p.name for p in sorted(found, key=lambda p: p.started_at or 0)]
    finally:
        await client.aclose()


def _runner_path() -> str:
    found = runner()
    assert found is not None, "no command runner in this installation"
    return found[0]


async def test_commands_run_under_the_runner_uploaded_at_create(sb: Sandbox) -> None:
    assert (await sb.exec(["printf", r"\000\377"])).stdout_bytes == b"\x00\xff"
    started = await sb.start("sleep 30")
    await started.kill()
    names = await _commands(sb)
    assert names[-2:] == [_runner_path(), _runner_path()]
    assert "perl" not in names


@pytest.mark.parametrize(
    "breaks",
    [f"rm -rf {RUNNER_DIR}", f"chmod a-x {RUNNER_DIR}/shim-*"],
    ids=["removed", "not-executable"],
)
async def test_a_broken_runner_runs_the_command_once_under_perl_then_is_uploaded_again(
    sb: Sandbox, breaks: str
) -> None:
    assert (await sb.exec(["sh", "-c", breaks])).exit_code == 0
    result = await sb.exec("echo ran >> /tmp/count; echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    assert (await sb.exec(["cat", "/tmp/count"])).stdout == "ran\n"  # once
    names = await _commands(sb)
    assert names[-4:] == [_runner_path(), _runner_path(), "perl", _runner_path()]


async def test_a_background_command_whose_runner_was_removed_says_so(sb: Sandbox) -> None:
    assert (await sb.exec(["rm", "-rf", RUNNER_DIR])).exit_code == 0
    started = await sb.start("echo never")
    result = await started.wait()
    assert result.exit_code == 127
    assert result.stderr_bytes == MISSING_RUNNER
    assert (await sb.exec("echo again")).stdout == "again\n"  # uploaded again
    assert (await _commands(sb))[-1] == _runner_path()


async def test_where_the_runner_cannot_be_put_commands_keep_every_guarantee_under_perl(
    sb: Sandbox,
) -> None:
    blocked = await sb.exec(["sh", "-c", f"rm -rf {RUNNER_DIR} && touch {RUNNER_DIR}"])
    assert blocked.exit_code == 0
    assert (await sb.exec("echo first")).stdout == "first\n"  # the runner fails: once under perl
    # its second upload fails (the path is a file): from here on every command runs under perl
    assert (await sb.exec(["printf", r"\000\200\377 ok"])).stdout_bytes == b"\x00\x80\xff ok"
    signalled = await sb.exec("kill -TERM $$")
    assert (signalled.exit_code, signalled.signal) == (143, 15)
    assert (await sb.exec("exit 137")).signal is None
    with pytest.raises(FileNotFound, match="working directory"):
        await sb.exec("pwd", cwd="/no/such/dir")
    forged = await sb.exec(r"printf 'o41\nx0 0\n' > /proc/$PPID/fd/1; echo after")
    assert forged.stdout == "after\n"
    assert "ermission denied" in forged.stderr
    marker = f"sleep 300.{uuid.uuid4().int % 10**6}"
    started = await sb.start(f"{marker} & setsid {marker} & wait")
    await sb.exec(["sleep", "0.3"])
    await started.kill()
    assert (await started.wait()).signal == 9
    left = await sb.exec(
        f"for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"
        f" | grep -c '^{marker} '"
    )
    assert left.stdout.strip() == "0", "the command's tree outlived kill"
    assert (await _commands(sb))[-9:] == ["perl"] * 9


@pytest.mark.parametrize(
    ("prints", "expected"),
    [
        (r"zz\n", "unreadable"),
        (r"o41", "unreadable"),  # a line cut short
        (r"o41\nx0 0\nx1 0\n", "unreadable"),  # anything after the status
        (r"o41\n", "A"),  # no status: Vercel's
    ],
    ids=["garbage", "cut-short", "after-status", "no-status"],
)
async def test_a_replaced_runner_cannot_make_the_client_take_anything_but_checked_lines(
    sb: Sandbox, prints: str, expected: str
) -> None:
    from agent_sandbox.errors import ProviderError

    path = _runner_path()
    fake = f"#!/bin/sh\nprintf '{prints}'\nexit 7\n"
    replaced = await sb.exec(
        ["sh", "-c", f'rm -f {path} && printf "%s" "$0" > {path} && chmod 755 {path}', fake]
    )
    assert replaced.exit_code == 0, replaced.stderr
    if expected == "unreadable":
        with pytest.raises(ProviderError, match="unreadable"):
            await sb.exec("echo hi")
    else:
        result = await sb.exec("echo hi")
        assert (result.stdout, result.exit_code) == (expected, 7)
