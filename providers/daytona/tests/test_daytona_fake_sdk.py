"""The fake speaks Daytona's wire protocol: the raw async SDK, with no adapter in between."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from daytona import (
    AsyncDaytona,
    CreateSandboxFromImageParams,
    DaytonaConfig,
    DaytonaNotFoundError,
    ListSandboxesQuery,
    SessionExecuteRequest,
)
from fake_daytona import FakeDaytona

pytestmark = pytest.mark.anyio


async def test_raw_sdk_round_trip(fake_daytona: FakeDaytona) -> None:
    config = DaytonaConfig(api_key=fake_daytona.api_key, api_url=fake_daytona.api_url)
    async with AsyncDaytona(config) as daytona:
        sb = await daytona.create(
            CreateSandboxFromImageParams(image="debian:12", labels={"team": "raw"}), timeout=30
        )
        try:
            assert sb.state.value == "started"
            assert sb.labels["team"] == "raw"

            # The daemon splits the command on spaces outside quotes and runs it, no shell.
            merged = await sb.process.exec('sh -c "echo out; echo err >&2; exit 3"', timeout=10)
            assert merged.exit_code == 3
            assert merged.result == "out\nerr\n"

            await sb.process.create_session("s1")
            # The daemon sources the command in the session's shell: a bare ``exit`` would end
            # the session (``wrapper_linux.go``), so the status comes from a subshell.
            started = await sb.process.execute_session_command(
                "s1",
                SessionExecuteRequest(
                    command="echo a; echo b >&2; sleep 0.1; echo c; (exit 4)",
                    run_async=True,
                ),
            )
            out: list[str] = []
            err: list[str] = []
            await sb.process.get_session_command_logs_async(
                "s1", started.cmd_id, out.append, err.append
            )
            assert "".join(out) == "a\nc\n"
            assert "".join(err) == "b\n"
            command = await sb.process.get_session_command("s1", started.cmd_id)
            assert command.exit_code == 4
            await sb.process.delete_session("s1")

            await sb.fs.upload_file(b"\x00\xffbytes", "/home/daytona/deep/er/f.bin")
            assert await sb.fs.download_file("/home/daytona/deep/er/f.bin") == b"\x00\xffbytes"
            with pytest.raises(DaytonaNotFoundError, match="file not found"):
                await sb.fs.download_file("/home/daytona/missing")

            listed = [s.id async for s in daytona.list(ListSandboxesQuery(labels={"team": "raw"}))]
            assert listed == [sb.id]
            link = await sb.get_preview_link(8080)
            assert link.token
            assert link.url.startswith("http://127.0.0.1:")
        finally:
            await daytona.delete(sb)
        # A soft delete: the sandbox is "destroying" a moment, then gone.
        with pytest.raises(DaytonaNotFoundError), anyio.fail_after(10):  # noqa: PT012
            while (await daytona.get(sb.id)).state.value == "destroying":  # noqa: ASYNC110
                await anyio.sleep(0.05)


async def test_session_output_is_relayed_line_by_line(fake_daytona: FakeDaytona) -> None:
    """What the adapter works around, as the daemon does it (``wrapper_linux.go``, ``input.go``):
    output goes through shell ``read`` loops, so a NUL byte is lost and a last line gains a
    newline; input gains a newline and is echoed into the output unless suppressed."""
    config = DaytonaConfig(api_key=fake_daytona.api_key, api_url=fake_daytona.api_url)
    async with AsyncDaytona(config) as daytona:
        sb = await daytona.create(timeout=30)
        try:
            await sb.process.create_session("raw")

            async def run(command: str, given: str | None = None) -> tuple[str, str]:
                request = SessionExecuteRequest(command=command, run_async=True)
                started = await sb.process.execute_session_command("raw", request)
                if given is not None:
                    await sb.process.send_session_command_input("raw", started.cmd_id, given)
                out: list[str] = []
                err: list[str] = []
                await sb.process.get_session_command_logs_async(
                    "raw", started.cmd_id, out.append, err.append
                )
                return "".join(out), "".join(err)

            assert await run("printf 'a\\0b'; printf 'c\\0' >&2") == ("ab\n", "c\n")
            assert await run("head -c 2", "xy") == ("xy\nxy\n", "")
        finally:
            await daytona.delete(sb)


async def test_fake_rejects_what_daytona_rejects(fake_daytona: FakeDaytona) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {fake_daytona.api_key}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            fake_daytona.api_url + "/sandbox", json={"cpuu": 2}, headers=headers
        ) as r:
            assert r.status == 400
            assert "cpuu" in (await r.json())["message"]
        async with http.post(
            fake_daytona.api_url + "/sandbox", json={"labels": {"a": 1}}, headers=headers
        ) as r:
            assert r.status == 400
        async with http.get(
            fake_daytona.api_url + "/sandbox", headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 401


def test_sync_sdk_round_trip(fake_daytona: FakeDaytona) -> None:
    """The sync client speaks through another HTTP stack (urllib3/httpx); the fake serves it too."""
    from daytona import CreateSandboxFromSnapshotParams, Daytona

    # The sync client has no close(): its pools go with the object.
    daytona = Daytona(DaytonaConfig(api_key=fake_daytona.api_key, api_url=fake_daytona.api_url))
    sb = daytona.create(CreateSandboxFromSnapshotParams(labels={"team": "sync"}), timeout=30)
    try:
        assert sb.process.exec("sh -c 'echo sync; exit 2'", timeout=10).exit_code == 2
        sb.fs.upload_file(b"\x00sync", "/tmp/s.bin")
        assert sb.fs.download_file("/tmp/s.bin") == b"\x00sync"
        sb.process.create_session("s")
        started = sb.process.execute_session_command(
            "s", SessionExecuteRequest(command="echo o; echo e >&2", run_async=True)
        )
        out: list[str] = []
        err: list[str] = []
        asyncio.run(
            sb.process.get_session_command_logs_async("s", started.cmd_id, out.append, err.append)
        )
        assert ("".join(out), "".join(err)) == ("o\n", "e\n")
        assert sb.process.get_session_command("s", started.cmd_id).exit_code == 0
    finally:
        daytona.delete(sb)
