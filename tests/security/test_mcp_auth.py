"""Attacks on the MCP HTTP server: another local user connecting to it, or reading its token.

The server runs as ``agent-sandbox mcp`` in a subprocess on the local provider; its token file
lives in the test's own state folder (``XDG_STATE_HOME``).
"""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

pytest.importorskip("mcp", reason="the MCP server needs the mcp extra")

from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.mcp.server import main as mcp_main

pytestmark = pytest.mark.anyio

LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's state folder (where the default token file goes), and no token variable."""
    path = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(path))
    monkeypatch.delenv("AGENT_SANDBOX_MCP_TOKEN", raising=False)
    return path


@pytest.fixture
async def served(state: Path, tmp_path: Path) -> AsyncIterator[Path]:
    """``state``, then removing the sandboxes a failed server test left behind."""
    yield state
    root = tmp_path / "sandboxes"
    if root.exists():
        backend = LocalBackend(LocalOptions(root=root))
        for info in await backend.list():
            await backend.destroy(info.id)
        await backend.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serving(tmp_path: Path, *extra: str) -> AsyncIterator[tuple[str, list[str]]]:
    """``agent-sandbox mcp --transport http`` on a free loopback port; yields its URL and the
    stderr lines it printed before listening."""
    port = free_port()
    argv = [sys.executable, "-m", "agent_sandbox.cli", "mcp", "--provider", "local"]
    argv += ["--option", f"root={tmp_path / 'sandboxes'}", "--transport", "http"]
    argv += ["--port", str(port), *extra]
    process = await anyio.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    said: list[str] = []
    try:
        with anyio.fail_after(30):
            buffered = b""
            while b"serving" not in buffered:
                chunk = await process.stderr.receive()
                buffered += chunk
            said = buffered.decode().splitlines()
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.1)
                    continue
                await stream.aclose()
                break
        yield f"http://127.0.0.1:{port}/mcp", said
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(20):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


async def test_without_any_token_option_the_server_still_requires_one(
    served: Path, tmp_path: Path
) -> None:
    state = served
    async with serving(tmp_path) as (url, said), httpx.AsyncClient(timeout=30) as client:
        anonymous = await client.post(url, json=LIST_TOOLS, headers=ACCEPT)
        assert anonymous.status_code == 401
        token_file = state / "agent-sandbox" / "mcp-token"
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        assert any(str(token_file) in line for line in said)
        assert not any(token in line for line in said)  # the secret is not in logs
        authorised = await client.post(
            url, json=LIST_TOOLS, headers={**ACCEPT, "Authorization": f"Bearer {token}"}
        )
        assert authorised.status_code == 200
        assert "bash" in authorised.text


async def test_a_token_file_is_read_and_kept(served: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-from-a-file\n")
    token_file.chmod(0o600)
    async with (
        serving(tmp_path, "--token-file", str(token_file)) as (url, _),
        httpx.AsyncClient(timeout=30) as client,
    ):
        ok = await client.post(
            url,
            json=LIST_TOOLS,
            headers={**ACCEPT, "Authorization": "Bearer s3cret-token-from-a-file"},
        )
        assert ok.status_code == 200
    assert token_file.read_text() == "s3cret-token-from-a-file\n"


def test_a_token_on_the_command_line_is_refused(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = mcp_main(["--transport", "http", "--token", "visible-in-ps"])
    assert code == 2
    err = capsys.readouterr().err
    assert "process list" in err
    assert len(err.strip().splitlines()) == 1
    assert not (state / "agent-sandbox").exists()


def test_a_token_file_other_users_can_read_is_refused(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("shared")
    token_file.chmod(0o644)
    code = mcp_main(["--transport", "http", "--token-file", str(token_file)])
    assert code == 2
    assert "chmod 600" in capsys.readouterr().err


def test_unknown_and_malformed_options_are_one_line_errors(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["--no-such-option"], ["--port", "eighty"], ["--tok", "abbreviated"]):
        assert mcp_main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("agent-sandbox mcp: ")
    assert mcp_main(["--transport", "http", "--insecure-no-auth", "--ttl", "inf"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "ttl_seconds" in err


def test_the_library_serves_http_without_a_token_only_when_asked_loudly() -> None:
    from agent_sandbox.errors import ConfigError
    from agent_sandbox.mcp import SandboxMCPServer

    server = SandboxMCPServer(provider="local")
    with pytest.raises(ConfigError, match="insecure_no_auth"):
        server.http_app()
    assert server.http_app(insecure_no_auth=True) is not None
