"""The blocking twin, agent_sandbox.sync.Sandbox, through FakeBackend."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_sandbox import (
    CommandTimeout,
    FileNotFound,
    IsADirectory,
    SandboxNotFound,
    SandboxSpec,
    registry,
    sync,
)
from agent_sandbox.registry import KnownProvider
from agent_sandbox.sync import Sandbox
from agent_sandbox.testing import FakeBackend


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    b = FakeBackend()
    yield b
    sync._run(b.aclose)


@pytest.fixture
def sb(backend: FakeBackend) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(backend=backend)
    try:
        yield sandbox
    finally:
        sandbox.destroy()


def test_exec_and_files(sb: Sandbox, tmp_path: Path) -> None:
    r = sb.exec("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert sb.exec(["cat"], stdin=b"\x00\xff").stdout_bytes == b"\x00\xff"
    sb.write_file("d/t.txt", "ünï")
    assert sb.read_file("d/t.txt") == "ünï".encode()
    assert sb.read_text("d/t.txt") == "ünï"
    assert [e.name for e in sb.list_dir("d")] == ["t.txt"]
    assert sb.stat("d/t.txt").type == "file"
    assert sb.exists("d")
    sb.mkdir("e/f")
    sb.remove("d", recursive=True)
    assert not sb.exists("d")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.bin").write_bytes(b"\x01")
    sb.upload(tmp_path / "src", "up")
    sb.download("up", tmp_path / "down")
    assert (tmp_path / "down" / "x.bin").read_bytes() == b"\x01"
    assert repr(sb) == f"<sync.Sandbox fake:{sb.id}>"
    assert sb.info.workdir == sb.aio.info.workdir


def test_typed_errors_cross_the_thread(sb: Sandbox) -> None:
    with pytest.raises(FileNotFound):
        sb.read_file("missing")
    sb.mkdir("dir")
    with pytest.raises(IsADirectory):
        sb.read_file("dir")
    with pytest.raises(CommandTimeout) as caught:
        sb.exec("echo partial; sleep 30", timeout=0.3)
    assert caught.value.stdout == b"partial\n"


def test_context_manager_destroys_even_when_the_body_raises(backend: FakeBackend) -> None:
    ids: list[str] = []

    def body() -> None:
        with Sandbox.create(backend=backend) as sb:
            ids.append(sb.id)
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        body()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(ids[0], backend=backend)
    with Sandbox.create(SandboxSpec(env={"A": "1"}), backend=backend) as sb2:
        assert sb2.exec('printf %s "$A"').stdout == "1"
        second = sb2.id
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(second, backend=backend)


def test_connect_close_and_destroy(backend: FakeBackend) -> None:
    sb = Sandbox.create(backend=backend)
    sb.write_file("keep", b"k")
    sb.close()
    again = Sandbox.connect(sb.id, backend=backend)
    assert again.read_file("keep") == b"k"
    again.destroy()
    again.destroy()
    with pytest.raises(SandboxNotFound):
        Sandbox.connect(sb.id, backend=backend)


def test_exec_stream_iterates_chunks_then_the_exit(sb: Sandbox) -> None:
    events = list(sb.exec_stream("echo 1; echo 2 >&2; echo 3; exit 5"))
    assert [(e.kind, e.data) for e in events[:-1]] == [
        ("stdout", b"1\n"),
        ("stderr", b"2\n"),
        ("stdout", b"3\n"),
    ]
    assert (events[-1].kind, events[-1].exit_code) == ("exit", 5)


def test_breaking_out_of_exec_stream_kills_the_command(sb: Sandbox) -> None:
    script = "echo x >> beat; echo go; while true; do echo x >> beat; sleep 0.05; done"
    stream = sb.exec_stream(script)
    for event in stream:
        assert event.data == b"go\n"
        break
    stream.close()
    time.sleep(0.2)
    size = len(sb.read_file("beat"))
    time.sleep(0.4)
    assert len(sb.read_file("beat")) == size
    assert sb.exec("echo next").stdout == "next\n"


def test_usable_from_many_threads(sb: Sandbox) -> None:
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = sb.exec(["printf", "%s", str(i)]).stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {i: str(i) for i in range(8)}


def test_static_list_and_sweep_by_provider_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(
        registry.KNOWN_PROVIDERS, "fake", KnownProvider("agent_sandbox.testing:FakeBackend", None)
    )
    for key in list(os.environ):
        if key.startswith("AGENT_SANDBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    options = {"world": "sync-test"}
    with Sandbox.create(provider="fake", options=options, labels={"k": "v"}) as sb:
        assert [i.id for i in Sandbox.list({"k": "v"}, provider="fake", options=options)] == [sb.id]
        assert Sandbox.sweep(provider="fake", options=options) == []
    assert Sandbox.list({"k": "v"}, provider="fake", options=options) == []
