"""The OpenAI Agents SDK sandbox client on local and Docker, driven through the SDK's own session
machinery: manifest materialization, apply_patch, workspace confinement, persist/hydrate,
serialized state and resume (the lifecycle the SDK's own backends are held to)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

pytest.importorskip("agents.sandbox", reason="the openai-agents extra is not installed")

from agents.editor import ApplyPatchOperation
from agents.sandbox import Manifest
from agents.sandbox.entries import Dir, File
from agents.sandbox.errors import (
    ExecTimeoutError,
    ExposedPortUnavailableError,
    InvalidManifestPathError,
    WorkspaceArchiveReadError,
    WorkspaceReadNotFoundError,
)
from agents.sandbox.session import SandboxSession, SandboxSessionState
from agents.sandbox.snapshot import LocalSnapshotSpec
from frameworks_testkit import config

from agent_sandbox import Unsupported
from agent_sandbox.integrations.openai_agents import (
    AgentSandboxClient,
    AgentSandboxClientOptions,
    AgentSandboxSessionState,
)

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("provider", ["local", "docker"])]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client() -> AgentSandboxClient:
    return AgentSandboxClient()


def options(provider: str, **spec: object) -> AgentSandboxClientOptions:
    return AgentSandboxClientOptions.model_validate(config(provider, **spec))


@pytest.fixture
async def session(client: AgentSandboxClient, provider: str) -> AsyncIterator[SandboxSession]:
    manifest = Manifest(
        root=f"/tmp/ws-{uuid.uuid4().hex[:8]}",
        entries={
            "inline.txt": File(content=b"inline v1\n"),
            "delete_me.txt": File(content=b"delete me\n"),
            "tree": Dir(
                children={
                    "nested.txt": File(content=b"nested v1\n"),
                    "scratch.txt": File(content=b"ephemeral\n", ephemeral=True),
                }
            ),
        },
    )
    created = await client.create(manifest=manifest, options=options(provider))
    try:
        async with created:
            yield created
    finally:
        await client.delete(created)


async def text(session: SandboxSession, path: str) -> str:
    handle = await session.read(Path(path))
    try:
        data = handle.read()
    finally:
        handle.close()
    return data.decode() if isinstance(data, bytes) else str(data)


async def test_manifest_is_materialized_and_commands_run_in_its_root(
    session: SandboxSession,
) -> None:
    assert await text(session, "inline.txt") == "inline v1\n"
    assert await text(session, "tree/nested.txt") == "nested v1\n"
    result = await session.exec("pwd && cat tree/nested.txt")
    assert result.ok()
    assert result.stdout.decode().splitlines() == [session.state.manifest.root, "nested v1"]


async def test_file_operations(session: SandboxSession) -> None:
    await session.write(Path("new/deep/file.bin"), io.BytesIO(bytes(range(256))))
    handle = await session.read(Path("new/deep/file.bin"))
    assert handle.read() == bytes(range(256))
    await session.mkdir("made/here", parents=True)
    names = {Path(entry.path).name for entry in await session.ls(".")}
    assert {"inline.txt", "tree", "new", "made"} <= names
    await session.mv("inline.txt", "moved.txt")
    await session.rm("new", recursive=True)
    with pytest.raises(WorkspaceReadNotFoundError):
        await session.read(Path("new/deep/file.bin"))
    assert await text(session, "moved.txt") == "inline v1\n"


async def test_apply_patch(session: SandboxSession) -> None:
    result = await session.apply_patch(
        [
            ApplyPatchOperation(
                type="update_file", path="inline.txt", diff="@@\n-inline v1\n+inline v2\n"
            ),
            ApplyPatchOperation(type="create_file", path="created.txt", diff="+created\n"),
            ApplyPatchOperation(type="delete_file", path="delete_me.txt"),
        ]
    )
    assert result == "Done!"
    assert await text(session, "inline.txt") == "inline v2\n"
    assert await text(session, "created.txt") == "created"
    with pytest.raises(WorkspaceReadNotFoundError):
        await session.read(Path("delete_me.txt"))


async def test_paths_cannot_leave_the_workspace(session: SandboxSession) -> None:
    for path in ("../outside.txt", "/etc/passwd"):
        with pytest.raises(InvalidManifestPathError):
            await session.read(Path(path))
        with pytest.raises(InvalidManifestPathError):
            await session.write(Path(path), io.BytesIO(b"x"))
    assert (await session.exec("ln -s /etc escape")).ok()
    with pytest.raises(InvalidManifestPathError):
        await session.read(Path("escape/passwd"))


async def test_a_timeout_raises_the_sdk_error(session: SandboxSession) -> None:
    with pytest.raises(ExecTimeoutError):
        await session.exec("sleep 30", timeout=1)


async def test_exec_as_a_user(session: SandboxSession, provider: str) -> None:
    if provider == "local":
        with pytest.raises(Unsupported):
            await session.exec("whoami", user="nobody")
        return
    result = await session.exec("whoami", user="nobody")
    assert result.stdout.decode().strip() == "nobody"
    assert (await session.read(Path("inline.txt"), user="root")).read() == b"inline v1\n"
    big = 11 * 1024 * 1024  # past the exec output limit a user's read goes through
    await session.write(Path("big.bin"), io.BytesIO(b"x" * big))
    with pytest.raises(WorkspaceArchiveReadError):
        await session.read(Path("big.bin"), user="root")


async def test_an_unconfigured_port_is_refused(session: SandboxSession) -> None:
    with pytest.raises(ExposedPortUnavailableError):
        await session.resolve_exposed_port(8000)


async def test_persist_then_hydrate_into_a_fresh_sandbox(
    session: SandboxSession, client: AgentSandboxClient, provider: str
) -> None:
    await session.write(Path("bin/data"), io.BytesIO(b"\x00\xff" * 1000))
    archive = await session.persist_workspace()
    fresh = await client.create(
        manifest=Manifest(root=session.state.manifest.root), options=options(provider)
    )
    try:
        async with fresh:
            await fresh.hydrate_workspace(archive)
            assert (await fresh.read(Path("bin/data"))).read() == b"\x00\xff" * 1000
            assert await text(fresh, "tree/nested.txt") == "nested v1\n"
            with pytest.raises(WorkspaceReadNotFoundError):  # ephemeral: not persisted
                await fresh.read(Path("tree/scratch.txt"))
    finally:
        await client.delete(fresh)


async def test_serialized_state_resumes_the_same_sandbox(
    session: SandboxSession, client: AgentSandboxClient
) -> None:
    await session.write(Path("note.txt"), io.BytesIO(b"kept"))
    payload = json.loads(json.dumps(client.serialize_session_state(session.state)))
    assert isinstance(SandboxSessionState.parse(dict(payload)), AgentSandboxSessionState)

    state = client.deserialize_session_state(payload)
    resumed = await client.resume(state)
    async with resumed:
        assert resumed.state.sandbox_id == session.state.sandbox_id  # type: ignore[attr-defined]
        assert await text(resumed, "note.txt") == "kept"


async def test_resume_after_delete_recreates_from_the_snapshot(
    client: AgentSandboxClient, provider: str, tmp_path: Path
) -> None:
    session = await client.create(
        snapshot=LocalSnapshotSpec(base_path=tmp_path),
        manifest=Manifest(root=f"/tmp/ws-{uuid.uuid4().hex[:8]}"),
        options=options(provider),
    )
    async with session:
        await session.write(Path("work.txt"), io.BytesIO(b"survives the sandbox"))
    # leaving the block persisted the workspace into the snapshot; now the sandbox goes
    await client.delete(session)
    gone = session.state.sandbox_id  # type: ignore[attr-defined]

    resumed = await client.resume(
        client.deserialize_session_state(client.serialize_session_state(session.state))
    )
    try:
        async with resumed:
            assert resumed.state.sandbox_id != gone  # type: ignore[attr-defined]
            assert await text(resumed, "work.txt") == "survives the sandbox"
    finally:
        await client.delete(resumed)


async def test_an_exposed_port_resolves_to_a_reachable_endpoint(
    client: AgentSandboxClient, provider: str
) -> None:
    if provider == "local":
        pytest.skip("the local provider cannot expose ports (Capabilities.expose_port is false)")
    import httpx

    session = await client.create(options=options(provider, ports=(8000,)))
    try:
        async with session:
            await session.write(Path("index.html"), io.BytesIO(b"served from the sandbox"))
            # A server that outlives its exec: sandboxes have no background-process API yet.
            started = await session.exec("nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
            assert started.ok()
            endpoint = await session.resolve_exposed_port(8000)
            url = endpoint.url_for("http") + "/index.html"
            async with httpx.AsyncClient() as http:
                for _ in range(100):  # until the server listens
                    try:
                        response = await http.get(url)
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.1)
            assert response.text == "served from the sandbox"
    finally:
        await client.delete(session)
