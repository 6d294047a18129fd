"""The async Sandbox handle, exercised through FakeBackend (a real in-memory provider)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sandbox import (
    CommandTimeout,
    ConfigError,
    InvalidPath,
    NetworkPolicy,
    Sandbox,
    SandboxNotFound,
    SandboxSpec,
    Unsupported,
    labels,
    registry,
)
from agent_sandbox.registry import KnownProvider
from agent_sandbox.testing import FakeBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingBackend(FakeBackend):
    """A FakeBackend that counts aclose() calls, to see who closes the backend."""

    closed = 0

    async def aclose(self) -> None:
        self.closed += 1
        await super().aclose()


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    b = FakeBackend()
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
async def sb(backend: FakeBackend) -> AsyncIterator[Sandbox]:
    sandbox = await Sandbox.create(backend=backend)
    try:
        yield sandbox
    finally:
        await sandbox.destroy()


@pytest.fixture
def fake_provider(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """``provider="fake"`` resolvable through config, from an empty project directory."""
    monkeypatch.setitem(
        registry.KNOWN_PROVIDERS, "fake", KnownProvider("agent_sandbox.testing:FakeBackend", None)
    )
    for key in list(os.environ):
        if key.startswith("AGENT_SANDBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return "fake"


# -- paths ------------------------------------------------------------------------------------


async def test_path_resolution(sb: Sandbox) -> None:
    w = sb.info.workdir
    assert sb.path("a.txt") == posixpath.join(w, "a.txt")
    assert sb.path("./a/../b//c/") == posixpath.join(w, "b/c")
    assert sb.path("/etc/x") == "/etc/x"
    assert sb.path("//double/lead") == "/double/lead"
    assert sb.path(".") == w
    assert sb.path("/..") == "/"
    for bad in ("", "a\x00b"):
        with pytest.raises(InvalidPath):
            sb.path(bad)


_segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=8,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(st.lists(st.one_of(_segment, st.sampled_from([".", ".."])), min_size=1, max_size=8))
async def test_resolved_paths_are_absolute_and_normal(sb: Sandbox, parts: list[str]) -> None:
    resolved = sb.path("/".join(parts))
    assert resolved.startswith("/")
    assert posixpath.normpath(resolved) == resolved
    assert ".." not in resolved.split("/")
    assert not resolved.startswith("//")


# -- lifecycle --------------------------------------------------------------------------------


async def test_create_stamps_ownership_labels(backend: FakeBackend) -> None:
    async with await Sandbox.create(backend=backend, labels={"mine": "1"}, owner="me@here") as sb:
        got = sb.info.labels
        assert got["mine"] == "1"
        assert got[labels.MANAGED] == "true"
        assert got[labels.OWNER] == "me@here"
        created = labels.created_at(got)
        expires = labels.expires_at(got)
        assert created is not None
        assert expires is not None
        assert (expires - created).total_seconds() == pytest.approx(3600, abs=2)


async def test_create_keyword_shortcuts_override_the_spec(backend: FakeBackend) -> None:
    spec = SandboxSpec(env={"A": "spec"}, workdir="/spec-dir")
    async with await Sandbox.create(spec, backend=backend, env={"A": "kw"}, ttl_seconds=60) as sb:
        assert sb.info.workdir == "/spec-dir"
        assert (await sb.exec('printf %s "$A"')).stdout == "kw"
        assert sb.info.expires_at is not None
        assert sb.info.created_at is not None
        assert (sb.info.expires_at - sb.info.created_at).total_seconds() == pytest.approx(60)


async def test_invalid_spec_is_a_config_error(backend: FakeBackend) -> None:
    with pytest.raises(ConfigError, match="invalid sandbox spec"):
        await Sandbox.create(backend=backend, ttl_seconds=-1)
    with pytest.raises(ConfigError):
        await Sandbox.create(backend=backend, network="sideways")
    assert await backend.list() == []


async def test_unsupported_spec_is_refused_before_create(backend: FakeBackend) -> None:
    allow = NetworkPolicy(mode="allowlist", allow=("10.0.0.1",))
    with pytest.raises(Unsupported, match="allowlist"):
        await Sandbox.create(backend=backend, network=allow)
    with pytest.raises(Unsupported):
        await Sandbox.create(backend=backend, cpus=2)
    with pytest.raises(Unsupported):
        await Sandbox.create(backend=backend, user="nobody")
    assert await backend.list() == []
    async with await Sandbox.create(backend=backend, network="none") as sb:
        assert (await sb.exec("nc -w 1 127.0.0.1 80")).exit_code != 0


async def test_context_manager_destroys_on_success(backend: FakeBackend) -> None:
    async with await Sandbox.create(backend=backend) as sb:
        sandbox_id = sb.id
    with pytest.raises(SandboxNotFound):
        await backend.connect(sandbox_id)


async def test_context_manager_destroys_when_the_body_raises(backend: FakeBackend) -> None:
    ids: list[str] = []

    async def body() -> None:
        async with await Sandbox.create(backend=backend) as sb:
            ids.append(sb.id)
            raise KeyError("from the body")

    with pytest.raises(KeyError, match="from the body"):
        await body()
    with pytest.raises(SandboxNotFound):
        await backend.connect(ids[0])


async def test_context_manager_destroys_when_cancelled(backend: FakeBackend) -> None:
    ids: list[str] = []
    with anyio.move_on_after(0.2):
        async with await Sandbox.create(backend=backend) as sb:
            ids.append(sb.id)
            await sb.exec("sleep 30")
    assert await backend.list() == []


async def test_destroy_is_idempotent_and_close_leaves_it_running(backend: FakeBackend) -> None:
    sb = await Sandbox.create(backend=backend)
    await sb.close()
    info = await backend.connect(sb.id)  # still there
    again = await Sandbox.connect(info.id, backend=backend)
    assert (await again.exec("echo hi")).stdout == "hi\n"
    await again.destroy()
    await again.destroy()
    await sb.destroy()  # the closed handle does nothing more
    with pytest.raises(SandboxNotFound):
        await again.refresh()
    with pytest.raises(SandboxNotFound):
        await Sandbox.connect(info.id, backend=backend)


async def test_a_given_backend_is_not_closed_by_the_handle() -> None:
    backend = CountingBackend()
    async with await Sandbox.create(backend=backend):
        pass
    assert backend.closed == 0
    sb = await Sandbox.create(backend=backend)
    await sb.close()
    assert backend.closed == 0
    await backend.destroy(sb.id)


async def test_provider_by_name_owns_and_closes_its_backend(fake_provider: str) -> None:
    sb = await Sandbox.create(provider=fake_provider, options={"world": "handle-test"})
    assert sb.provider == "fake"
    assert isinstance(sb.backend, FakeBackend)
    found = await Sandbox.list(
        {labels.MANAGED: "true"}, provider="fake", options={"world": "handle-test"}
    )
    assert sb.id in {i.id for i in found}
    again = await Sandbox.connect(sb.id, provider="fake", options={"world": "handle-test"})
    assert (await again.exec("echo same")).stdout == "same\n"
    await again.close()
    await sb.destroy()
    assert await Sandbox.sweep(provider="fake", options={"world": "handle-test"}) == []
    with pytest.raises(SandboxNotFound):
        await Sandbox.connect(sb.id, provider="fake", options={"world": "handle-test"})


async def test_sweep_through_the_handle(fake_provider: str) -> None:
    options = {"world": "sweep-test"}
    short = await Sandbox.create(provider=fake_provider, options=options, ttl_seconds=0.2)
    keep = await Sandbox.create(provider=fake_provider, options=options)
    try:
        await anyio.sleep(1.2)  # the expiry label has a resolution of one second
        assert await Sandbox.sweep(provider="fake", options=options) in ([], [short.id])
        with pytest.raises(SandboxNotFound):
            await short.refresh()
        await keep.refresh()
    finally:
        await keep.destroy()
        await short.destroy()


# -- commands ---------------------------------------------------------------------------------


async def test_exec_options(sb: Sandbox) -> None:
    await sb.mkdir("sub")
    r = await sb.exec("pwd", cwd="sub")
    assert r.stdout == posixpath.join(sb.info.workdir, "sub") + "\n"
    assert (await sb.exec("pwd")).stdout == sb.info.workdir + "\n"
    assert (await sb.exec(["cat"], stdin="héllo")).stdout == "héllo"
    assert (await sb.exec(["cat"], stdin=b"\x00\xff")).stdout_bytes == b"\x00\xff"
    assert (await sb.exec('printf %s "$X"', env={"X": "y"})).stdout == "y"
    limited = await sb.exec("printf 0123456789", output_limit=4)
    assert (limited.stdout, limited.stdout_truncated) == ("0123", True)
    assert limited.duration_s >= 0


async def test_exec_rejects_empty_commands(sb: Sandbox) -> None:
    with pytest.raises(ValueError, match="empty"):
        await sb.exec("   ")
    with pytest.raises(ValueError, match="empty"):
        await sb.exec([])
    with pytest.raises(TypeError):
        await sb.exec(b"echo")  # type: ignore[arg-type]


async def test_timeout_carries_partial_output(sb: Sandbox) -> None:
    with pytest.raises(CommandTimeout) as caught:
        await sb.exec("echo partial; echo e >&2; sleep 30", timeout=0.3)
    assert caught.value.stdout == b"partial\n"
    assert caught.value.stderr == b"e\n"
    assert caught.value.timeout == 0.3
    assert caught.value.sandbox_id == sb.id


async def test_exec_stream_and_early_close(sb: Sandbox) -> None:
    events = [e async for e in sb.exec_stream("echo a; echo b >&2; exit 2")]
    assert [(e.kind, e.data) for e in events[:-1]] == [("stdout", b"a\n"), ("stderr", b"b\n")]
    assert (events[-1].kind, events[-1].exit_code) == ("exit", 2)
    stream = sb.exec_stream(
        "echo x >> beat; echo go; while true; do echo x >> beat; sleep 0.05; done"
    )
    async for event in stream:
        assert event.data == b"go\n"
        break
    await stream.aclose()  # type: ignore[attr-defined]
    await anyio.sleep(0.2)
    size = len(await sb.read_file("beat"))
    await anyio.sleep(0.3)
    assert len(await sb.read_file("beat")) == size


# -- files ------------------------------------------------------------------------------------


async def test_file_methods(sb: Sandbox, tmp_path: Path) -> None:
    await sb.write_file("t.txt", "ünï")
    assert await sb.read_file("t.txt") == "ünï".encode()
    assert await sb.read_text("t.txt") == "ünï"
    await sb.write_file("b.bin", bytearray(b"\x01\x02"))
    assert await sb.read_file(posixpath.join(sb.info.workdir, "b.bin")) == b"\x01\x02"
    assert [e.name for e in await sb.list_dir()] == ["b.bin", "t.txt"]
    assert (await sb.stat("t.txt")).size == len("ünï".encode())
    assert await sb.exists("t.txt")
    await sb.remove("t.txt")
    assert not await sb.exists("t.txt")
    (tmp_path / "src" / "d").mkdir(parents=True)
    (tmp_path / "src" / "d" / "f").write_bytes(b"f")
    await sb.upload(tmp_path / "src")
    assert await sb.read_file("d/f") == b"f"
    await sb.download("d", tmp_path / "out")
    assert (tmp_path / "out" / "f").read_bytes() == b"f"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(st.binary(max_size=4096))
async def test_bytes_round_trip(sb: Sandbox, data: bytes) -> None:
    await sb.write_file("rt.bin", data)
    assert await sb.read_file("rt.bin") == data
    assert (await sb.exec(["cat", "rt.bin"])).stdout_bytes == data


_arg = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(st.lists(_arg, min_size=1, max_size=6))
async def test_argv_arrives_unchanged(sb: Sandbox, args: list[str]) -> None:
    r = await sb.exec(["printf", r"%s\000", *args])
    assert r.stdout_bytes.split(b"\x00")[:-1] == [a.encode() for a in args]


async def test_optional_capabilities(sb: Sandbox, backend: FakeBackend) -> None:
    with pytest.raises(Unsupported):
        await sb.expose_port(8080)
    with pytest.raises(Unsupported):
        await sb.pause()
    with pytest.raises(Unsupported):
        await sb.resume()
    await sb.write_file("saved.txt", b"snap")
    snap = await sb.snapshot()
    async with await Sandbox.create(backend=backend, snapshot=snap) as restored:
        assert await restored.read_file("saved.txt") == b"snap"


async def test_repr(sb: Sandbox) -> None:
    assert repr(sb) == f"<Sandbox fake:{sb.id}>"
