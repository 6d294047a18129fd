"""The conformance suite: the behaviour every provider must show, as pytest tests.

A provider's test module subclasses :class:`ConformanceSuite` and supplies one fixture,
``sandbox_backend`` (a new backend instance per test; the suite closes it)::

    import pytest
    from agent_sandbox.testing import ConformanceSuite
    from my_provider import MyBackend

    class TestMyProviderConformance(ConformanceSuite):
        @pytest.fixture
        def sandbox_backend(self):
            return MyBackend(MyBackend.Options(region="test"))

Optional fixtures: ``sandbox_spec`` (the :class:`SandboxSpec` sandboxes are created from,
e.g. with the image to use; default ``SandboxSpec()``) and ``egress_target`` (the
``(host, port)`` at which an open-network sandbox reaches the test's server on this machine,
or ``None`` when it cannot; default ``("127.0.0.1", port)``).

Tests needing an optional capability carry ``@requires("name")`` and are skipped, with the
reason, when ``sandbox_backend.capabilities.name`` is false. Nothing else is skipped silently:
a test that cannot run for another reason (a tool missing from the image) says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ..backend import BaseBackend, close_stream
from ..errors import (
    CommandTimeout,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    IsADirectory,
    PermissionDenied,
    SandboxNotFound,
)
from ..models import ExecEvent, ExecResult, NetworkPolicy, SandboxSpec
from ..sandbox import Sandbox
from ._processes import HEARTBEAT, NewSandbox, ProcessTests, assert_stops_growing
from .plugin import MARKER, requires

__all__ = ["ConformanceSuite", "EgressServer", "requires"]

MiB = 1024 * 1024
LABEL = "asb-conformance"
"""Label key carrying a unique value per test, so tests never see each other's sandboxes."""


class EgressServer:
    """A TCP server on this machine (all interfaces, ephemeral port) answering each connection
    with a short HTTP response holding a random token, and counting connections."""

    def __init__(self) -> None:
        self.token = "asb-egress-" + uuid.uuid4().hex
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("0.0.0.0", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="asb-egress", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        body = self.token.encode()
        reply = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.sendall(reply)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


# Tries python3, then nc, then wget. Exit 3: no tool to probe with.
_PROBE = r"""
host=$1; port=$2
if command -v python3 >/dev/null 2>&1; then
  exec python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print(s.recv(4096).decode(errors="replace"))
' "$host" "$port"
fi
if command -v nc >/dev/null 2>&1; then
  exec nc -w 5 "$host" "$port" </dev/null
fi
if command -v wget >/dev/null 2>&1; then
  exec wget -q -T 5 -O - "http://$host:$port/"
fi
echo "no network probe tool (python3, nc, wget) in the sandbox" >&2
exit 3
"""


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[ExecEvent]) -> AsyncIterator[AsyncIterator[ExecEvent]]:
    """Close the stream (killing its command) when the block ends, as ``aclosing`` does."""
    try:
        yield stream
    finally:
        await close_stream(stream)


async def _peak_memory(command: Awaitable[ExecResult]) -> tuple[ExecResult, int]:
    """The result of ``command`` and the most memory the client held while it ran."""
    tracemalloc.start()
    try:
        return await command, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def _uid(sb: Sandbox) -> str:
    """The numeric uid a sandbox's commands run as."""
    result = await sb.exec(["id", "-u"])
    assert result.ok, result.stderr
    return result.stdout.strip()


def _tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> content (``None`` for directories) of a local tree."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


class ConformanceSuite(ProcessTests):
    """The provider conformance tests. Subclass it and provide ``sandbox_backend``.

    Every test is independent, labels its sandboxes uniquely, and destroys them however it
    ends; the backend is closed after each test.
    """

    pytestmark = [pytest.mark.anyio]

    # -- fixtures --------------------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> str:
        """The suite runs on asyncio."""
        return "asyncio"

    @pytest.fixture(autouse=True)
    async def conformance_backend(
        self, sandbox_backend: BaseBackend, request: pytest.FixtureRequest
    ) -> AsyncIterator[BaseBackend]:
        """``sandbox_backend``, skipped for missing capabilities and always closed."""
        if not isinstance(sandbox_backend, BaseBackend):
            raise TypeError(
                f"the sandbox_backend fixture must return a BaseBackend, got {sandbox_backend!r}"
            )
        try:
            required = dict.fromkeys(n for m in request.node.iter_markers(MARKER) for n in m.args)
            if missing := [n for n in required if not getattr(sandbox_backend.capabilities, n)]:
                pytest.skip(
                    "; ".join(
                        f"provider {sandbox_backend.name} lacks capability {n}" for n in missing
                    )
                )
            yield sandbox_backend
        finally:
            with anyio.CancelScope(shield=True):
                await sandbox_backend.aclose()

    @pytest.fixture
    def test_label(self) -> dict[str, str]:
        """A label unique to this test; every sandbox the test creates carries it."""
        return {LABEL: uuid.uuid4().hex}

    @pytest.fixture
    async def new_sandbox(
        self,
        conformance_backend: BaseBackend,
        sandbox_spec: SandboxSpec,
        test_label: dict[str, str],
    ) -> AsyncIterator[NewSandbox]:
        """A factory: ``await new_sandbox(**spec_fields)`` creates a sandbox from
        ``sandbox_spec`` (fields overridden) through :meth:`Sandbox.create`; all of them are
        destroyed at the end of the test, whatever happened."""
        created: list[Sandbox] = []

        async def make(**overrides: Any) -> Sandbox:
            labels = {**sandbox_spec.labels, **overrides.pop("labels", {}), **test_label}
            sb = await Sandbox.create(
                sandbox_spec, backend=conformance_backend, labels=labels, **overrides
            )
            created.append(sb)
            return sb

        try:
            yield make
        finally:
            with anyio.CancelScope(shield=True):
                errors: list[BaseException] = []
                for sb in created:
                    try:
                        await sb.destroy()
                    except Exception as exc:
                        errors.append(exc)
                if errors:
                    raise errors[0]

    @pytest.fixture
    async def sandbox(self, new_sandbox: NewSandbox) -> Sandbox:
        """One sandbox created from ``sandbox_spec``."""
        return await new_sandbox()

    @pytest.fixture
    def egress_server(self) -> Iterator[EgressServer]:
        """A TCP server on this machine that network tests try to reach."""
        server = EgressServer()
        try:
            yield server
        finally:
            server.close()

    # -- exec: exit status and streams ------------------------------------------------------

    async def test_exit_codes(self, sandbox: Sandbox) -> None:
        ok = await sandbox.exec(["true"])
        assert (ok.exit_code, ok.ok, ok.signal) == (0, True, None)
        fail = await sandbox.exec(["false"])
        assert (fail.exit_code, fail.ok) == (1, False)
        seven = await sandbox.exec("exit 7")
        assert (seven.exit_code, seven.signal) == (7, None)
        missing = "asb-no-such-command-" + uuid.uuid4().hex[:8]
        shell = await sandbox.exec(missing)
        assert shell.exit_code == 127
        assert "not found" in shell.stderr
        argv = await sandbox.exec([missing, "arg"])
        assert argv.exit_code == 127

    @requires("signals")
    async def test_killed_by_signal(self, sandbox: Sandbox) -> None:
        killed = await sandbox.exec("kill -9 $$")
        assert (killed.exit_code, killed.signal) == (137, 9)
        termed = await sandbox.exec("kill -TERM $$; sleep 5")
        assert (termed.exit_code, termed.signal) == (143, 15)

    async def test_stdout_and_stderr_are_separate(self, sandbox: Sandbox) -> None:
        r = await sandbox.exec("echo to-out; echo to-err >&2; echo more-out; exit 3")
        assert r.exit_code == 3
        assert r.stdout == "to-out\nmore-out\n"
        assert r.stderr == "to-err\n"
        assert not r.stdout_truncated
        assert not r.stderr_truncated

    async def test_shell_string_and_argv_are_not_confused(self, sandbox: Sandbox) -> None:
        literal = "$HOME; echo injected"
        argv = await sandbox.exec(["echo", literal])
        assert argv.stdout == literal + "\n"
        shell = await sandbox.exec("echo one; echo two")
        assert shell.stdout == "one\ntwo\n"
        spaced = await sandbox.exec(["printf", "%s|", "a b", "", "c'd\"e"])
        assert spaced.stdout == "a b||c'd\"e|"

    async def test_binary_output(self, sandbox: Sandbox) -> None:
        r = await sandbox.exec(r"printf '\000\001\177\200\376\377'")
        assert r.stdout_bytes == b"\x00\x01\x7f\x80\xfe\xff"
        assert "\ufffd" in r.stdout  # decoding never raises on non-UTF-8 output
        every_byte = bytes(range(256)) * 64
        await sandbox.write_file("bytes.bin", every_byte)
        cat = await sandbox.exec(["cat", "bytes.bin"])
        assert cat.stdout_bytes == every_byte
        head = await sandbox.exec(["head", "-c", "300", "bytes.bin"])
        assert head.stdout_bytes == every_byte[:300]
        err = await sandbox.exec("cat bytes.bin >&2")
        assert err.stderr_bytes == every_byte
        assert err.stdout_bytes == b""

    async def test_large_stdout_is_truncated_at_the_limit(self, sandbox: Sandbox) -> None:
        size = 20 * MiB
        r, peak = await _peak_memory(sandbox.exec(f"head -c {size} /dev/zero"))
        assert r.exit_code == 0
        assert r.stdout_truncated
        assert len(r.stdout_bytes) == 10 * MiB  # the default limit, exactly
        assert r.stdout_bytes == bytes(10 * MiB)
        assert not r.stderr_truncated
        # Keeping all of it would cost at least the 20 MiB; allow the kept 10 MiB plus copies.
        assert peak < 1.5 * size, f"client memory peaked at {peak / MiB:.1f} MiB"

    async def test_client_memory_is_bounded_by_the_output_limit(self, sandbox: Sandbox) -> None:
        size, limit = 20 * MiB, 1 * MiB
        r, peak = await _peak_memory(sandbox.exec(f"head -c {size} /dev/zero", output_limit=limit))
        assert (len(r.stdout_bytes), r.stdout_truncated) == (limit, True)
        assert peak < size / 2, (
            f"client memory peaked at {peak / MiB:.1f} MiB for {size // MiB} MiB of output "
            f"with a {limit // MiB} MiB limit"
        )

    async def test_unicode_paths_content_and_arguments(self, sandbox: Sandbox) -> None:
        folder = "ünïcode dir"
        name = "файл 名前 🎉.txt"
        text = "héllo wörld ✓ — 你好 🎉\n"
        path = f"{folder}/{name}"
        await sandbox.write_file(path, text)
        assert await sandbox.read_text(path) == text
        assert [e.name for e in await sandbox.list_dir(folder)] == [name]
        cat = await sandbox.exec(["cat", path])
        assert cat.stdout == text
        echo = await sandbox.exec(["printf", "%s", text])
        assert echo.stdout == text
        shell = await sandbox.exec(f"printf '%s' '{text}'")
        assert shell.stdout == text

    async def test_env_from_spec_and_exec(self, new_sandbox: NewSandbox) -> None:
        sb = await new_sandbox(env={"ASB_SPEC": "from spec", "ASB_BOTH": "spec"})
        script = 'printf "%s|%s|%s" "$ASB_SPEC" "$ASB_BOTH" "$ASB_EXEC"'
        base = await sb.exec(script)
        assert base.stdout == "from spec|spec|"
        over = await sb.exec(script, env={"ASB_BOTH": "exec wins", "ASB_EXEC": "ü 'q' $x"})
        assert over.stdout == "from spec|exec wins|ü 'q' $x"
        again = await sb.exec(script)
        assert again.stdout == "from spec|spec|", "exec env must not persist"

    async def test_cwd_default_relative_and_absolute(self, sandbox: Sandbox) -> None:
        workdir = sandbox.info.workdir
        here = await sandbox.exec("echo here > where.txt")
        assert here.ok
        assert await sandbox.read_file(posixpath.join(workdir, "where.txt")) == b"here\n"
        await sandbox.mkdir("sub/dir")
        rel = await sandbox.exec("pwd; echo in-sub > marker.txt", cwd="sub/dir")
        assert rel.ok
        assert rel.stdout.strip().endswith("/sub/dir")
        assert await sandbox.read_file("sub/dir/marker.txt") == b"in-sub\n"
        absolute = await sandbox.exec("pwd", cwd="/tmp")
        assert absolute.stdout.strip() == "/tmp"

    @requires("stdin")
    async def test_stdin(self, sandbox: Sandbox) -> None:
        data = bytes(range(256)) * 4096 + "ünï\n".encode()
        r = await sandbox.exec(["cat"], stdin=data)
        assert r.stdout_bytes == data
        count = await sandbox.exec("wc -c", stdin=b"12345")
        assert count.stdout.strip() == "5"
        text = await sandbox.exec(["cat"], stdin="text stdin\n")
        assert text.stdout == "text stdin\n"
        empty = await sandbox.exec(["cat"], stdin=b"")
        assert (empty.exit_code, empty.stdout_bytes) == (0, b"")

    # -- exec: timeouts and streaming -------------------------------------------------------

    async def test_timeout_kills_the_process_tree(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("heartbeat.sh", HEARTBEAT)
        with pytest.raises(CommandTimeout) as caught:
            await sandbox.exec(
                "sh heartbeat.sh beats.txt & echo started; echo on-err >&2; sleep 60",
                timeout=3,
            )
        exc = caught.value
        assert isinstance(exc, TimeoutError)
        assert exc.code == "command_timeout"
        assert b"started" in exc.stdout
        assert b"on-err" in exc.stderr
        await assert_stops_growing(sandbox, "beats.txt")
        after = await sandbox.exec("echo still usable")
        assert after.stdout == "still usable\n"

    @requires("isolated")
    async def test_timeout_kills_children_that_escape(self, sandbox: Sandbox) -> None:
        # Children that leave the process group (setsid) and clear their environment (env -i),
        # daemons reparented away from the command (the process that started them exited),
        # and children of sudo (another user, a reset environment) must die with the command
        # too: an isolated provider owns the whole tree.
        await sandbox.write_file("heartbeat.sh", HEARTBEAT)
        if not (await sandbox.exec("command -v setsid")).ok:
            pytest.skip("no setsid in the sandbox's image")
        quiet = "</dev/null >/dev/null 2>&1 &"
        script = (
            f"setsid env -i /bin/sh heartbeat.sh escaped.txt {quiet} "
            f"sh -c 'setsid sh heartbeat.sh reparented.txt {quiet}'; "
        )
        beats = ["escaped.txt", "reparented.txt"]
        if (await sandbox.exec("sudo -n true")).ok:
            script += f"sudo -n env -i /bin/sh heartbeat.sh sudo.txt {quiet} "
            beats.append("sudo.txt")
        with pytest.raises(CommandTimeout) as caught:
            await sandbox.exec(script + "echo started; sleep 60", timeout=3)
        assert b"started" in caught.value.stdout
        for beat in beats:
            await assert_stops_growing(sandbox, beat)

    async def test_exec_stream_yields_before_the_command_ends(self, sandbox: Sandbox) -> None:
        # The command waits for a file the test writes only after seeing the first chunk:
        # it can only finish if that chunk arrived while it was still running.
        script = "echo first; while [ ! -e go.flag ]; do sleep 0.05; done; echo second"
        seen: list[ExecEvent] = []
        async with _closing(sandbox.exec_stream(script, timeout=60)) as events:
            async for event in events:
                seen.append(event)
                if event.kind == "stdout" and b"first" in event.data:
                    await sandbox.write_file("go.flag", b"")
        out = b"".join(e.data for e in seen if e.kind == "stdout")
        assert out == b"first\nsecond\n"
        assert seen[-1].kind == "exit"
        assert seen[-1].exit_code == 0

    async def test_exec_stream_ends_with_exactly_one_exit(self, sandbox: Sandbox) -> None:
        stream = sandbox.exec_stream("printf out1; printf err1 >&2; printf out2; exit 4")
        events = [event async for event in stream]
        exits = [e for e in events if e.kind == "exit"]
        assert len(exits) == 1
        assert events[-1] is exits[0]
        assert exits[0].exit_code == 4
        assert b"".join(e.data for e in events if e.kind == "stdout") == b"out1out2"
        assert b"".join(e.data for e in events if e.kind == "stderr") == b"err1"
        assert all(e.data for e in events if e.kind != "exit"), "no empty chunks"

    async def test_leaving_exec_stream_early_kills_the_command(self, sandbox: Sandbox) -> None:
        script = (
            "echo beat >> beats.txt; echo first; "
            "while true; do echo beat >> beats.txt; sleep 0.1; done"
        )
        async with _closing(sandbox.exec_stream(script, timeout=120)) as events:
            async for event in events:
                if event.kind == "stdout":
                    break
        await assert_stops_growing(sandbox, "beats.txt")

    # -- files -----------------------------------------------------------------------------

    async def test_large_file_round_trip(self, sandbox: Sandbox) -> None:
        data = os.urandom(50 * MiB)
        digest = hashlib.sha256(data).hexdigest()
        await sandbox.write_file("big/blob.bin", data)
        back = await sandbox.read_file("big/blob.bin")
        assert len(back) == len(data)
        assert hashlib.sha256(back).hexdigest() == digest
        del back
        inside = await sandbox.exec("sha256sum big/blob.bin")
        assert inside.ok, inside.stderr
        assert inside.stdout.split()[0] == digest
        assert (await sandbox.stat("big/blob.bin")).size == len(data)

    async def test_overwrite_replaces_content(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("f.txt", b"a much longer first content")
        await sandbox.write_file("f.txt", b"short")
        assert await sandbox.read_file("f.txt") == b"short"
        await sandbox.write_file("empty.txt", b"")
        assert await sandbox.read_file("empty.txt") == b""

    async def test_write_creates_parent_directories(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("a/b/c/d.txt", b"deep")
        assert await sandbox.read_file("a/b/c/d.txt") == b"deep"
        assert (await sandbox.stat("a/b/c")).type == "dir"

    async def test_relative_paths_resolve_under_workdir(self, sandbox: Sandbox) -> None:
        workdir = sandbox.info.workdir
        await sandbox.write_file("rel/x.txt", b"relative")
        absolute = posixpath.join(workdir, "rel/x.txt")
        assert await sandbox.read_file(absolute) == b"relative"
        assert (await sandbox.exec(["cat", "rel/x.txt"])).stdout == "relative"
        await sandbox.write_file(posixpath.join(workdir, "abs.txt"), b"absolute")
        assert await sandbox.read_file("./rel/../abs.txt") == b"absolute"

    async def test_missing_file_and_directory_errors(self, sandbox: Sandbox) -> None:
        with pytest.raises(FileNotFound) as caught:
            await sandbox.read_file("no/such/file.txt")
        assert isinstance(caught.value, FileNotFoundError)
        assert caught.value.code == "file_not_found"
        await sandbox.mkdir("a-dir")
        with pytest.raises(IsADirectory):
            await sandbox.read_file("a-dir")
        with pytest.raises(FileNotFound):
            await sandbox.stat("no-such-path")
        with pytest.raises(FileNotFound):
            await sandbox.remove("no-such-path")
        with pytest.raises(FileNotFound):
            await sandbox.list_dir("no-such-dir")
        assert not await sandbox.exists("no-such-path")

    async def test_derived_file_operations(self, sandbox: Sandbox) -> None:
        await sandbox.mkdir("tree/sub")
        await sandbox.mkdir("tree/sub")  # an existing directory is fine
        await sandbox.write_file("tree/one.txt", b"1")
        await sandbox.write_file("tree/sub/two.bin", b"\x00" * 2048)
        entries = await sandbox.list_dir("tree")
        assert [(e.name, e.type) for e in entries] == [("one.txt", "file"), ("sub", "dir")]
        assert entries[0].size == 1
        assert entries[0].path == posixpath.join(sandbox.info.workdir, "tree/one.txt")
        info = await sandbox.stat("tree/sub/two.bin")
        assert (info.name, info.type, info.size) == ("two.bin", "file", 2048)
        assert info.mtime > 0
        assert (await sandbox.stat("tree/sub")).type == "dir"
        assert await sandbox.exists("tree/one.txt")
        await sandbox.remove("tree/one.txt")
        assert not await sandbox.exists("tree/one.txt")
        await sandbox.remove("tree", recursive=True)
        assert not await sandbox.exists("tree")
        assert not await sandbox.exists("tree/sub/two.bin")

    async def test_file_transfer_in_and_out(self, sandbox: Sandbox, tmp_path: Path) -> None:
        data = os.urandom(3 * MiB + 17)
        source = tmp_path / "source.bin"
        source.write_bytes(data)
        seen: list[int] = []
        await sandbox.upload_file(source, "moved/blob.bin", on_progress=seen.append)
        assert seen[-1] == len(data)
        assert await sandbox.read_file("moved/blob.bin") == data
        back = tmp_path / "back.bin"
        await sandbox.download_file("moved/blob.bin", back)
        assert back.read_bytes() == data
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(FileNotFound):
            await sandbox.download_file("moved/no-such.bin", tmp_path / "never.bin")
        with pytest.raises(IsADirectory):
            await sandbox.download_file("moved", tmp_path / "never.bin")
        assert sorted(os.listdir(tmp_path)) == before, "a failed copy left a file"
        with pytest.raises(FileNotFound):
            await sandbox.upload_file(tmp_path / "no-such-local", "x.bin")

    async def test_upload_and_download_a_tree(self, sandbox: Sandbox, tmp_path: Path) -> None:
        source = tmp_path / "source"
        (source / "nested" / "deeper").mkdir(parents=True)
        (source / "empty-dir").mkdir()
        (source / "top.txt").write_text("top\n")
        (source / "nested" / "mid.txt").write_text("mïd ✓\n", encoding="utf-8")
        (source / "nested" / "deeper" / "blob.bin").write_bytes(os.urandom(300_000))
        await sandbox.upload(source, "up")
        assert await sandbox.read_file("up/top.txt") == b"top\n"
        assert (
            await sandbox.read_file("up/nested/deeper/blob.bin")
            == (source / "nested" / "deeper" / "blob.bin").read_bytes()
        )
        assert (await sandbox.stat("up/empty-dir")).type == "dir"
        target = tmp_path / "target"
        await sandbox.download("up", target)
        assert _tree(target) == _tree(source)
        with pytest.raises(FileNotFound):
            await sandbox.download("no-such-dir", tmp_path / "never")

    # -- files: the sandbox user's rules -------------------------------------------------
    #
    # File operations act as the sandbox's default user: whatever that user's own command may
    # not do, they refuse too (``PermissionDenied``), and replacing a file keeps its mode.

    @pytest.fixture
    def unprivileged_user(self) -> str:
        """A non-root user of ``sandbox_spec``'s image. Where a sandbox's default user is root
        and the provider can run sandboxes as another user (``exec_user``), the permission
        tests also run as this one. Override for images without ``nobody``."""
        return "nobody"

    async def test_write_onto_a_directory_leaves_the_tree_intact(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("tree/sub/keep.txt", b"kept")
        for target in ("tree", "tree/sub", "tree/sub/"):
            with pytest.raises(IsADirectory) as caught:
                await sandbox.write_file(target, b"a file where a directory is")
            assert isinstance(caught.value, IsADirectoryError)
        assert (await sandbox.stat("tree")).type == "dir"
        assert (await sandbox.stat("tree/sub")).type == "dir"
        assert await sandbox.read_file("tree/sub/keep.txt") == b"kept"

    async def test_overwrite_keeps_the_files_mode(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("run.sh", b"#!/bin/sh\necho one\n")
        assert (await sandbox.exec(["chmod", "750", "run.sh"])).ok
        await sandbox.write_file("run.sh", b"#!/bin/sh\necho two\n")
        assert (await sandbox.stat("run.sh")).mode & 0o7777 == 0o750
        assert (await sandbox.exec(["./run.sh"])).stdout == "two\n"
        await sandbox.write_file("fresh.txt", b"new")
        assert (await sandbox.stat("fresh.txt")).mode & 0o7777 == 0o644

    async def test_file_operations_act_as_the_sandbox_user(
        self,
        new_sandbox: NewSandbox,
        conformance_backend: BaseBackend,
        unprivileged_user: str,
    ) -> None:
        """The inspect-style checks (write and read without permission), compared with what
        the sandbox's own user may do; as a non-root user where the provider has one."""
        sb = await new_sandbox()
        base = posixpath.join(sb.info.workdir, "asb-perm-" + uuid.uuid4().hex[:8])
        if await _uid(sb) == "0" and conformance_backend.capabilities.exec_user:
            sb = await new_sandbox(user=unprivileged_user)
            base = "/tmp/asb-perm-" + uuid.uuid4().hex[:8]
        non_root = await _uid(sb) != "0"

        locked = f"{base}/locked.txt"
        await sb.write_file(locked, b"original")
        assert (await sb.exec(["chmod", "a-w", locked])).ok
        refused = not (await sb.exec(["sh", "-c", 'printf x > "$1"', "sh", locked])).ok
        assert refused or not non_root, "a non-root user wrote a read-only file"
        if refused:
            with pytest.raises(PermissionDenied) as caught:
                await sb.write_file(locked, b"rewritten")
            assert isinstance(caught.value, PermissionError)
            assert await sb.read_file(locked) == b"original"
        else:  # root: permission bits bind it, in commands and file operations alike, not
            await sb.write_file(locked, b"rewritten")
            assert await sb.read_file(locked) == b"rewritten"
        assert (await sb.stat(locked)).mode & 0o777 == 0o444

        secret = f"{base}/secret.txt"
        await sb.write_file(secret, b"hidden")
        assert (await sb.exec(["chmod", "a-r", secret])).ok
        refused = not (await sb.exec(["cat", secret])).ok
        assert refused or not non_root, "a non-root user read an unreadable file"
        if refused:
            with pytest.raises(PermissionDenied) as caught:
                await sb.read_file(secret)
            assert isinstance(caught.value, PermissionError)
        else:
            assert await sb.read_file(secret) == b"hidden"

        shut = f"{base}/shut"
        await sb.write_file(f"{shut}/inside.txt", b"x")
        assert (await sb.exec(["chmod", "a-w", shut])).ok
        refused = not (await sb.exec(["sh", "-c", 'printf x > "$1/new.txt"', "sh", shut])).ok
        assert refused or not non_root, "a non-root user created a file in a read-only directory"
        if refused:
            with pytest.raises(PermissionDenied):
                await sb.write_file(f"{shut}/other.txt", b"x")
            assert not await sb.exists(f"{shut}/other.txt")
        else:
            await sb.write_file(f"{shut}/other.txt", b"x")

    async def test_read_file_is_bounded(self, sandbox: Sandbox) -> None:
        await sandbox.write_file("sized.bin", b"a" * 2048)
        with pytest.raises(FileTooLarge) as caught:
            await sandbox.read_file("sized.bin", max_bytes=1024)
        assert isinstance(caught.value, OSError)
        assert caught.value.code == "file_too_large"
        assert await sandbox.read_file("sized.bin", max_bytes=2048) == b"a" * 2048

    async def test_read_file_refuses_a_huge_sparse_file(self, sandbox: Sandbox) -> None:
        sparse = await sandbox.exec(["truncate", "-s", "64G", "sparse.bin"])
        if sparse.exit_code == 127:
            pytest.skip("no truncate in the sandbox to make a 64 GiB sparse file")
        assert sparse.ok, sparse.stderr
        with pytest.raises(FileTooLarge):
            await sandbox.read_file("sparse.bin")  # the default limit

    async def test_read_file_never_blocks_on_a_fifo(self, sandbox: Sandbox) -> None:
        made = await sandbox.exec(["mkfifo", "pipe"])
        if made.exit_code == 127:
            pytest.skip("no mkfifo in the sandbox")
        assert made.ok, made.stderr
        # A writer that frees a reader stuck on the FIFO after a while, so a provider that does
        # block fails this test instead of hanging the suite.
        writer = sandbox.exec_stream(["sh", "-c", "echo started; sleep 20; echo late > pipe"])
        async with _closing(writer) as events:
            async for event in events:
                if event.kind == "stdout":
                    break
            with pytest.raises(InvalidPath, match="not a regular file"):
                await sandbox.read_file("pipe")

    # -- lifecycle -------------------------------------------------------------------------

    async def test_missing_sandbox_and_idempotent_destroy(
        self, new_sandbox: NewSandbox, conformance_backend: BaseBackend
    ) -> None:
        sb = await new_sandbox()
        assert (await sb.exec("echo alive")).stdout == "alive\n"
        await conformance_backend.destroy(sb.id)
        await conformance_backend.destroy(sb.id)  # already gone: not an error
        with pytest.raises(SandboxNotFound) as caught:
            await conformance_backend.connect(sb.id)
        assert isinstance(caught.value, LookupError)
        with pytest.raises(SandboxNotFound):
            await sb.exec("echo gone")
        with pytest.raises(SandboxNotFound):
            await sb.read_file("anything")
        with pytest.raises(SandboxNotFound):
            await conformance_backend.connect("asb-never-existed-" + uuid.uuid4().hex[:8])
        await sb.destroy()
        await sb.destroy()

    async def test_context_manager_destroys(
        self,
        conformance_backend: BaseBackend,
        sandbox_spec: SandboxSpec,
        test_label: dict[str, str],
    ) -> None:
        labels = {**sandbox_spec.labels, **test_label}
        ids: list[str] = []

        async def body() -> None:
            async with await Sandbox.create(
                sandbox_spec, backend=conformance_backend, labels=labels
            ) as sb:
                ids.append(sb.id)
                raise RuntimeError("body failed")

        with pytest.raises(RuntimeError, match="body failed"):
            await body()
        (sandbox_id,) = ids
        with pytest.raises(SandboxNotFound):
            await conformance_backend.connect(sandbox_id)

    async def test_labels_and_list(
        self, new_sandbox: NewSandbox, conformance_backend: BaseBackend, test_label: dict[str, str]
    ) -> None:
        role = "asb-role"
        a = await new_sandbox(labels={role: "a"})
        b = await new_sandbox(labels={role: "b"})
        c = await new_sandbox(labels={role: "a"})
        mine = await conformance_backend.list(test_label)
        assert {i.id for i in mine} == {a.id, b.id, c.id}
        only_a = await conformance_backend.list({**test_label, role: "a"})
        assert {i.id for i in only_a} == {a.id, c.id}
        info = next(i for i in only_a if i.id == a.id)
        assert info.labels[role] == "a"
        assert info.provider == conformance_backend.name
        assert await conformance_backend.list({LABEL: "asb-no-such-" + uuid.uuid4().hex}) == []
        await b.destroy()
        assert {i.id for i in await conformance_backend.list(test_label)} == {a.id, c.id}

    @requires("persistent")
    async def test_connect_by_id_from_a_new_backend(
        self, sandbox: Sandbox, conformance_backend: BaseBackend
    ) -> None:
        await sandbox.write_file("kept.txt", b"still here")
        other = self.new_backend(conformance_backend)
        try:
            again = await Sandbox.connect(sandbox.id, backend=other)
            assert again.id == sandbox.id
            assert again.info.workdir == sandbox.info.workdir
            assert await again.read_file("kept.txt") == b"still here"
            r = await again.exec(["cat", "kept.txt"])
            assert r.stdout == "still here"
            await again.close()  # leaves the sandbox running
            assert (await sandbox.exec("echo ok")).stdout == "ok\n"
        finally:
            with anyio.CancelScope(shield=True):
                await other.aclose()

    async def test_ttl_expiry_and_sweep(
        self,
        new_sandbox: NewSandbox,
        conformance_backend: BaseBackend,
        test_label: dict[str, str],
    ) -> None:
        short = await new_sandbox(ttl_seconds=1)
        keeper = await new_sandbox()
        deadline = time.monotonic() + 60
        await anyio.sleep(2.5)
        swept: list[str] = []
        while True:
            # scoped to this test: a provider's engine or account may be shared
            swept += await conformance_backend.sweep(labels=test_label)
            try:
                await conformance_backend.connect(short.id)
            except SandboxNotFound:
                break
            assert time.monotonic() < deadline, "an expired sandbox was neither swept nor gone"
            await anyio.sleep(1)
        assert keeper.id not in swept
        assert (await keeper.exec("echo alive")).stdout == "alive\n"

    # -- isolation -------------------------------------------------------------------------

    @requires("isolated")
    async def test_sandboxes_cannot_see_each_other(self, new_sandbox: NewSandbox) -> None:
        first, second = await new_sandbox(), await new_sandbox()
        secret = uuid.uuid4().hex
        in_tmp = f"/tmp/asb-secret-{secret}"
        await first.write_file("secret.txt", secret)
        await first.write_file(in_tmp, secret)
        first_workdir_file = posixpath.join(first.info.workdir, "secret.txt")
        assert await first.read_text(first_workdir_file) == secret
        for path in (first_workdir_file, in_tmp):
            with pytest.raises(FileNotFound):
                await second.read_file(path)
            r = await second.exec(["cat", path])
            assert r.exit_code != 0
            assert secret not in r.stdout

    @requires("network_none")
    async def test_network_none_blocks_egress(
        self,
        new_sandbox: NewSandbox,
        egress_server: EgressServer,
        egress_target: tuple[str, int] | None,
    ) -> None:
        async def probe(sb: Sandbox, host: str, port: int) -> str:
            r = await sb.exec(["sh", "-c", _PROBE, "probe", host, str(port)], timeout=60)
            if r.exit_code == 3:
                pytest.skip(r.stderr.strip())
            return r.stdout

        host, port = egress_target or ("127.0.0.1", egress_server.port)
        if egress_target is not None:
            # The probe must be able to succeed, or its failure below would prove nothing.
            open_sb = await new_sandbox(network=NetworkPolicy(mode="open"))
            assert egress_server.token in await probe(open_sb, host, port), (
                f"an open-network sandbox could not reach {host}:{port}; override the "
                "egress_target fixture with an address the provider's sandboxes can reach"
            )
        before = egress_server.connections
        closed = await new_sandbox(network=NetworkPolicy(mode="none"))
        assert egress_server.token not in await probe(closed, host, port)
        assert egress_server.connections == before

    # -- concurrency -----------------------------------------------------------------------

    async def test_many_sandboxes_and_execs_at_once(self, new_sandbox: NewSandbox) -> None:
        n_sandboxes, n_execs = 20, 5
        sandboxes: list[Sandbox | None] = [None] * n_sandboxes
        results: dict[tuple[int, int], str] = {}

        async def make(i: int) -> None:
            sandboxes[i] = await new_sandbox()

        async with anyio.create_task_group() as tg:
            for i in range(n_sandboxes):
                tg.start_soon(make, i)

        async def run(i: int, j: int) -> None:
            sb = sandboxes[i]
            assert sb is not None
            r = await sb.exec(["sh", "-c", 'printf "%s-%s" "$1" "$2"', "sh", str(i), str(j)])
            assert r.exit_code == 0, r.stderr
            results[(i, j)] = r.stdout

        async with anyio.create_task_group() as tg:
            for i in range(n_sandboxes):
                for j in range(n_execs):
                    tg.start_soon(run, i, j)
        assert results == {(i, j): f"{i}-{j}" for i in range(n_sandboxes) for j in range(n_execs)}
        assert len({sb.id for sb in sandboxes if sb is not None}) == n_sandboxes
