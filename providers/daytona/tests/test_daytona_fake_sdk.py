"""The fake speaks Daytona's wire protocol: the raw async SDK, with no adapter in between."""

from __future__ import annotations

import asyncio

import pytest
from daytona import (
    AsyncDaytona,
    CreateSandboxFromImageParams,
    DaytonaConfig,
    DaytonaFileNotFoundError,
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

            merged = await sb.process.exec("echo out; echo err >&2; exit 3", timeout=10)
            assert merged.exit_code == 3
            assert merged.result == "out\nerr\n"

            await sb.process.create_session("s1")
            started = await sb.process.execute_session_command(
                "s1",
                SessionExecuteRequest(
                    command="echo a; echo b >&2; sleep 0.1; echo c; exit 4", run_async=True
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
            with pytest.raises(DaytonaFileNotFoundError):
                await sb.fs.download_file("/home/daytona/missing")

            listed = [s.id async for s in daytona.list(ListSandboxesQuery(labels={"team": "raw"}))]
            assert listed == [sb.id]
            link = await sb.get_preview_link(8080)
            assert link.token
            assert link.url.startswith("http://127.0.0.1:")
        finally:
            await daytona.delete(sb)
        with pytest.raises(DaytonaNotFoundError):
            await daytona.get(sb.id)


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
        assert sb.process.exec("echo sync; exit 2", timeout=10).exit_code == 2
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
