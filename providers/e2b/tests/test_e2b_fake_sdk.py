"""The fake E2B, proven with the raw ``e2b`` SDK alone (no agent-sandbox code involved).

If the SDK's own calls work against the fake, and the fake refuses what E2B refuses, the
adapter's tests against it test the adapter's translation rather than the fake's leniency.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    SandboxQuery,
)
from fake_e2b import FakeE2B

pytestmark = pytest.mark.anyio


def _params(fake: FakeE2B, **extra: Any) -> dict[str, Any]:
    return {
        "api_key": fake.api_key,
        "api_url": fake.url,
        "sandbox_url": fake.url,
        "domain": "e2b.local",
        **extra,
    }


@pytest.fixture
async def sdk_sandbox(fake_e2b: FakeE2B) -> AsyncIterator[AsyncSandbox]:
    sbx = await AsyncSandbox.create(
        timeout=120, metadata={"suite": "fake-sdk"}, **_params(fake_e2b)
    )
    try:
        yield sbx
    finally:
        await sbx.kill()


async def test_commands_run_real_processes(sdk_sandbox: AsyncSandbox) -> None:
    r = await sdk_sandbox.commands.run("echo out; echo err >&2; id -un; pwd")
    assert r.exit_code == 0
    assert r.stdout == "out\nuser\n/home/user\n"
    assert r.stderr == "err\n"
    root = await sdk_sandbox.commands.run("id -u", user="root")
    assert root.stdout == "0\n"
    with pytest.raises(CommandExitException) as caught:
        await sdk_sandbox.commands.run("echo partial; exit 3")
    assert caught.value.exit_code == 3
    assert caught.value.stdout == "partial\n"
    assert caught.value.error == "exit status 3"


async def test_command_killed_by_signal_reports_like_envd(sdk_sandbox: AsyncSandbox) -> None:
    with pytest.raises(CommandExitException) as caught:
        await sdk_sandbox.commands.run("kill -9 $$")
    # Go's ProcessState: a signal death has exit code -1 and status "signal: killed".
    assert caught.value.exit_code == -1
    assert caught.value.error == "signal: killed"


async def test_streaming_callbacks_and_stdin(sdk_sandbox: AsyncSandbox) -> None:
    seen: list[str] = []
    handle = await sdk_sandbox.commands.run(
        # waits for EOF, so the process is still there when close_stdin arrives
        "read line; echo got:$line; cat >/dev/null",
        background=True,
        stdin=True,
        on_stdout=seen.append,
    )
    await sdk_sandbox.commands.send_stdin(handle.pid, "hello\n")
    await sdk_sandbox.commands.close_stdin(handle.pid)
    result = await handle.wait()
    assert result.stdout == "got:hello\n"
    assert "".join(seen) == "got:hello\n"


async def test_a_child_holding_stdout_keeps_the_stream_open(sdk_sandbox: AsyncSandbox) -> None:
    """envd's ``Handler.Wait`` waits for both output pipes to close before it reaps the
    command: what a background child writes later still arrives, then the end."""
    r = await sdk_sandbox.commands.run("(sleep 1; echo late) & echo early", timeout=30)
    assert r.stdout == "early\nlate\n"


async def test_connect_streams_only_what_comes_next(sdk_sandbox: AsyncSandbox) -> None:
    """envd's ``Connect`` subscribes to the output from then on: nothing is replayed."""
    first: list[str] = []
    handle = await sdk_sandbox.commands.run(
        "echo one; read go; echo two", background=True, stdin=True, on_stdout=first.append
    )
    for _ in range(200):
        if "one" in "".join(first):
            break
        await anyio.sleep(0.02)
    later: list[str] = []
    again = await sdk_sandbox.commands.connect(handle.pid, on_stdout=later.append)
    listed = {p.pid: p for p in await sdk_sandbox.commands.list()}
    assert listed[handle.pid].args[-1] == "echo one; read go; echo two"
    await sdk_sandbox.commands.send_stdin(handle.pid, "go\n")
    result = await again.wait()
    assert (result.exit_code, "".join(later)) == (0, "two\n")
    assert (await handle.wait()).stdout == "one\ntwo\n"
    # An ended process is remembered for a while: connecting gives its end at once.
    ended = await sdk_sandbox.commands.connect(handle.pid)
    assert (await ended.wait()).exit_code == 0


async def test_files_round_trip_and_missing(sdk_sandbox: AsyncSandbox) -> None:
    payload = bytes(range(256)) * 10
    info = await sdk_sandbox.files.write("/home/user/dir/sub/blob.bin", payload)
    assert info.path == "/home/user/dir/sub/blob.bin"
    assert bytes(await sdk_sandbox.files.read("dir/sub/blob.bin", format="bytes")) == payload
    await sdk_sandbox.files.write("/tmp/octet.bin", payload, use_octet_stream=True)
    r = await sdk_sandbox.commands.run(
        "sha256sum /tmp/octet.bin dir/sub/blob.bin | cut -c1-64 | uniq | wc -l"
    )
    assert r.stdout.strip() == "1"
    with pytest.raises(FileNotFoundException):
        await sdk_sandbox.files.read("/no/such/file")


async def test_sandboxes_do_not_share_files(fake_e2b: FakeE2B, sdk_sandbox: AsyncSandbox) -> None:
    await sdk_sandbox.files.write("/tmp/mine.txt", "secret")
    other = await AsyncSandbox.create(timeout=60, **_params(fake_e2b))
    try:
        r = await other.commands.run("ls /tmp/mine.txt 2>&1 || true")
        assert "No such file" in r.stdout
    finally:
        await other.kill()


async def test_list_by_metadata_get_info_and_kill(
    fake_e2b: FakeE2B, sdk_sandbox: AsyncSandbox
) -> None:
    paginator = AsyncSandbox.list(
        query=SandboxQuery(metadata={"suite": "fake-sdk"}), **_params(fake_e2b)
    )
    ids = {s.sandbox_id for s in await paginator.next_items()}
    assert sdk_sandbox.sandbox_id in ids
    info = await AsyncSandbox.get_info(sdk_sandbox.sandbox_id, **_params(fake_e2b))
    assert info.metadata == {"suite": "fake-sdk"}
    assert info.template_id == "base"
    assert await AsyncSandbox.kill(sdk_sandbox.sandbox_id, **_params(fake_e2b)) is True
    assert await AsyncSandbox.kill(sdk_sandbox.sandbox_id, **_params(fake_e2b)) is False


async def test_pause_and_connect_resumes(fake_e2b: FakeE2B, sdk_sandbox: AsyncSandbox) -> None:
    await sdk_sandbox.files.write("/tmp/state", "kept")
    assert await sdk_sandbox.pause() is True
    info = await AsyncSandbox.get_info(sdk_sandbox.sandbox_id, **_params(fake_e2b))
    assert info.state.value == "paused"
    again = await AsyncSandbox.connect(sdk_sandbox.sandbox_id, timeout=60, **_params(fake_e2b))
    assert (await again.commands.run("cat /tmp/state")).stdout == "kept"


async def test_wrong_api_key_is_refused(fake_e2b: FakeE2B) -> None:
    with pytest.raises(AuthenticationException):
        await AsyncSandbox.create(**_params(fake_e2b, api_key="e2b_wrong"))


def _post(
    fake: FakeE2B, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        fake.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"X-API-KEY": fake.api_key, "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_create_requests_are_validated_like_the_vendor(fake_e2b: FakeE2B) -> None:
    assert _post(fake_e2b, "/v2/sandboxes", {"timeout": 10})[0] == 400  # templateID missing
    assert _post(fake_e2b, "/v2/sandboxes", {"templateID": "base", "cpuCount": 4})[0] == 400
    assert _post(fake_e2b, "/v2/sandboxes", {"templateID": "base", "timeout": "10"})[0] == 400
    status, body = _post(fake_e2b, "/v2/sandboxes", {"templateID": "no-such-template"})
    assert status == 404
    assert "not found" in body["message"]


def test_idempotency_key_returns_the_same_sandbox(fake_e2b: FakeE2B) -> None:
    body = {"templateID": "base", "timeout": 30, "metadata": {"k": "v"}}
    key = {"Idempotency-Key": "test-key-1"}
    first = _post(fake_e2b, "/v2/sandboxes", body, key)
    second = _post(fake_e2b, "/v2/sandboxes", body, key)
    try:
        assert first[0] == second[0] == 201
        assert first[1]["sandboxID"] == second[1]["sandboxID"]
        assert _post(fake_e2b, "/v2/sandboxes", {**body, "timeout": 31}, key)[0] == 422
    finally:
        fake_e2b.run(fake_e2b._kill(fake_e2b.sandboxes[first[1]["sandboxID"]]))
