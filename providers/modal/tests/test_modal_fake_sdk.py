"""The fake Modal, proven with the raw ``modal`` SDK alone (no agent-sandbox code involved).

If the SDK's own public calls work against the fake, and the fake refuses what Modal refuses, the
adapter's tests against it test the adapter's translation rather than the fake's leniency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import modal
import pytest
from fake_modal import FakeModal
from modal import exception as modal_errors

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(fake_modal: FakeModal) -> AsyncIterator[modal.Client]:
    sdk_client = await modal.Client.from_credentials.aio(
        fake_modal.token_id, fake_modal.token_secret
    )
    try:
        yield sdk_client
    finally:
        await sdk_client.close.aio()


@pytest.fixture
async def app(client: modal.Client) -> modal.App:
    return await modal.App.lookup.aio("fake-sdk-suite", create_if_missing=True, client=client)


@pytest.fixture
async def sandbox(app: modal.App, client: modal.Client) -> AsyncIterator[modal.Sandbox]:
    sb = await modal.Sandbox.create.aio(app=app, client=client, timeout=120, tags={"suite": "sdk"})
    try:
        yield sb
    finally:
        await sb.terminate.aio()
        await sb.detach.aio()  # type: ignore[no-untyped-call]


async def test_exec_runs_real_processes(sandbox: modal.Sandbox) -> None:
    p = await sandbox.exec.aio("sh", "-c", "echo out; echo err >&2; id -u; pwd; exit 3")
    assert await p.stdout.read.aio() == "out\n0\n/\n"
    assert await p.stderr.read.aio() == "err\n"
    assert await p.wait.aio() == 3
    killed = await sandbox.exec.aio("sh", "-c", "kill -TERM $$")
    assert await killed.wait.aio() == 128 + 15  # the public API folds a signal into 128 + N
    moved = await sandbox.exec.aio("pwd", workdir="/tmp", env={"X": "1"})
    assert await moved.stdout.read.aio() == "/tmp\n"


async def test_exec_stdin_and_a_missing_workdir(sandbox: modal.Sandbox) -> None:
    p = await sandbox.exec.aio("cat")
    p.stdin.write(b"fed through the router")
    p.stdin.write_eof()
    await p.stdin.drain.aio()
    assert await p.stdout.read.aio() == "fed through the router"
    with pytest.raises(modal_errors.Error):
        await sandbox.exec.aio("true", workdir="/no/such/dir")


async def test_filesystem_through_the_in_sandbox_tools(sandbox: modal.Sandbox) -> None:
    await sandbox.filesystem.write_bytes.aio(b"\x00\x01binary", "/root/d/f.bin")
    assert await sandbox.filesystem.read_bytes.aio("/root/d/f.bin") == b"\x00\x01binary"
    names = [e.name for e in await sandbox.filesystem.list_files.aio("/root/d")]
    assert names == ["f.bin"]
    with pytest.raises(modal_errors.SandboxFilesystemNotFoundError):
        await sandbox.filesystem.read_bytes.aio("/root/missing")
    with pytest.raises(modal_errors.SandboxFilesystemIsADirectoryError):
        await sandbox.filesystem.read_bytes.aio("/root/d")


async def test_tags_list_and_lookup(
    sandbox: modal.Sandbox, app: modal.App, client: modal.Client
) -> None:
    assert await sandbox.get_tags.aio() == {"suite": "sdk"}
    listed = [
        sb.object_id
        async for sb in modal.Sandbox.list.aio(
            app_id=app.app_id, tags={"suite": "sdk"}, client=client
        )
    ]
    assert sandbox.object_id in listed
    again = await modal.Sandbox.from_id.aio(sandbox.object_id, client=client)
    assert await again.poll.aio() is None
    with pytest.raises(modal_errors.NotFoundError):
        await modal.Sandbox.from_id.aio("sb-doesnotexist", client=client)


async def test_the_fake_refuses_what_modal_refuses(
    fake_modal: FakeModal, app: modal.App, client: modal.Client
) -> None:
    with pytest.raises(modal_errors.InvalidError):
        await modal.Sandbox.create.aio(app=app, client=client, timeout=25 * 3600)
    named = await modal.Sandbox.create.aio(app=app, client=client, name="only-once", timeout=60)
    try:
        with pytest.raises(modal_errors.AlreadyExistsError):
            await modal.Sandbox.create.aio(app=app, client=client, name="only-once", timeout=60)
        with pytest.raises(modal_errors.UnimplementedError):
            await named.set_tags.aio({"a": "b"})  # an RPC the fake does not serve says so
    finally:
        await named.terminate.aio()
    assert await named.wait.aio(raise_on_termination=False) is None
    assert named.returncode is not None
    wrong = await modal.Client.from_credentials.aio("ak-wrong", "as-wrong")
    try:
        with pytest.raises(modal_errors.AuthError):
            await modal.App.lookup.aio("fake-sdk-suite", client=wrong)
    finally:
        await wrong.close.aio()


async def test_a_sandbox_ends_at_its_timeout(app: modal.App, client: modal.Client) -> None:
    sb = await modal.Sandbox.create.aio(app=app, client=client, timeout=1)
    with pytest.raises(modal_errors.SandboxTimeoutError):
        await sb.wait.aio()
    with pytest.raises(modal_errors.Error):
        await sb.exec.aio("true")
