# The polling loops watch another process's effects (sandbox state on disk): no event to await.
# ruff: noqa: ASYNC110, ASYNC240
"""The MCP server, end to end: the real ``mcp`` SDK client over stdio and streamable HTTP against
``agent-sandbox mcp`` running as a subprocess on the local backend.

Each test gives the server its own local-provider state directory, so "the sandbox is gone" is
checked by listing that directory's sandboxes through the local backend.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("mcp", reason="the MCP server needs the mcp extra")

import httpx2
from local_support import end_sandboxes
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from agent_sandbox.audit import verify_chain
from agent_sandbox.local import LocalBackend, LocalOptions
from agent_sandbox.mcp import SandboxMCPServer
from agent_sandbox.mcp.server import main as mcp_main

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def root(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "state"
    try:
        yield path
    finally:
        # End whatever a failed test left behind (a passing test leaves nothing).
        await anyio.to_thread.run_sync(end_sandboxes, path)


async def sandboxes(root: Path) -> list[str]:
    if not root.exists():
        return []
    backend = LocalBackend(LocalOptions(root=root))
    try:
        return [info.id for info in await backend.list()]
    finally:
        await backend.aclose()


def server_argv(root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent_sandbox.cli",
        "mcp",
        "--provider",
        "local",
        "--option",
        f"root={root}",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def text(result: Any) -> str:
    return "".join(block.text for block in result.content if block.type == "text")


async def exercise(client: Client) -> None:
    """The tool calls every transport must carry."""
    listed = await client.list_tools()
    names = {tool.name for tool in listed.tools}
    assert {"bash", "read", "write", "edit", "glob", "grep"} <= names
    bash = next(tool for tool in listed.tools if tool.name == "bash")
    assert "command" in bash.input_schema["properties"]

    ran = await client.call_tool("bash", {"command": "export GREETING=hello; echo $((6*7))"})
    assert not ran.is_error, text(ran)
    assert "42" in text(ran)
    again = await client.call_tool("bash", {"command": "echo $GREETING"})
    assert "hello" in text(again)  # one persistent shell across calls

    wrote = await client.call_tool("write", {"file_path": "notes.txt", "content": "alpha\nbeta\n"})
    assert not wrote.is_error, text(wrote)
    read = await client.call_tool("read", {"file_path": "notes.txt"})
    assert not read.is_error
    assert "alpha" in text(read)
    assert "beta" in text(read)

    edit = await client.call_tool(
        "edit", {"file_path": "notes.txt", "old_string": "gamma", "new_string": "delta"}
    )
    assert edit.is_error
    assert "gamma" in text(edit) or "not found" in text(edit).lower()

    slow = await client.call_tool("bash", {"command": "sleep 30", "timeout_ms": 1000})
    assert slow.is_error
    assert "timed out" in text(slow).lower() or "timeout" in text(slow).lower()

    after = await client.call_tool("bash", {"command": "echo still-alive"})
    assert "still-alive" in text(after)


# -- stdio ------------------------------------------------------------------------------------


async def test_stdio_end_to_end_and_sandbox_destroyed_at_exit(root: Path) -> None:
    argv = server_argv(root)
    params = StdioServerParameters(command=argv[0], args=argv[1:], env={"PYTHONUNBUFFERED": "1"})
    async with Client(params) as client:
        await exercise(client)
        assert len(await sandboxes(root)) == 1
    with anyio.fail_after(20):
        while await sandboxes(root):
            await anyio.sleep(0.1)


async def test_stdio_sigterm_destroys_the_sandbox(root: Path) -> None:
    process = await anyio.open_process(
        server_argv(root), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        with anyio.fail_after(30):
            while not await sandboxes(root):  # the sandbox exists as soon as the server runs
                assert process.returncode is None, "the server exited early"
                await anyio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            code = await process.wait()
        assert code == 0
        assert await sandboxes(root) == []
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


# -- streamable HTTP ----------------------------------------------------------------------------


@asynccontextmanager
async def http_server(
    root: Path, *extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, Any]]:
    port = free_port()
    process = await anyio.open_process(
        server_argv(root, "--transport", "http", "--port", str(port), *extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "AGENT_SANDBOX_MCP_TOKEN": TOKEN, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        with anyio.fail_after(30):
            while True:
                assert process.returncode is None, "the server exited early"
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.1)
                    continue
                await stream.aclose()
                break
        yield url, process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(20):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


@asynccontextmanager
async def http_client(
    url: str, token: str | None = TOKEN, mode: str = "auto"
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def test_http_end_to_end_auth_host_check_audit_and_sigterm(
    root: Path, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    async with http_server(root, "--audit", str(audit_file)) as (url, process):
        async with http_client(url) as client:
            await exercise(client)
        # A second client reaches the same sandbox (server lifetime): the file is still there.
        async with http_client(url) as client:
            read = await client.call_tool("read", {"file_path": "notes.txt"})
            assert "alpha" in text(read)

        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"Accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient(timeout=30) as raw:
            missing = await raw.post(url, json=body, headers=headers)
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = await raw.post(
                url, json=body, headers={**headers, "Authorization": "Bearer not-the-token"}
            )
            assert wrong.status_code == 401
            rebinding = await raw.post(
                url,
                json=body,
                headers={**headers, "Authorization": f"Bearer {TOKEN}", "Host": "evil.example"},
            )
            assert rebinding.status_code == 421

        assert len(await sandboxes(root)) == 1
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            code = await process.wait()
        assert code == 0
    assert await sandboxes(root) == []

    report = verify_chain(audit_file)
    assert report.ok, report
    events = [json.loads(line) for line in audit_file.read_text().splitlines()]
    tools = [e["tool"] for e in events if e["op"] == "tool_call"]
    assert tools.count("bash") >= 4
    assert "edit" in tools
    assert events[0]["op"] == "create"
    assert events[-1]["op"] == "destroy"
    failed_edit = next(e for e in events if e["tool"] == "edit")
    assert failed_edit["result"]["is_error"] is True


async def test_http_without_token_only_when_asked_loudly(root: Path) -> None:
    async with (
        http_server(root, "--insecure-no-auth") as (url, _),
        http_client(url, token=None) as client,
    ):
        ran = await client.call_tool("bash", {"command": "echo open"})
        assert "open" in text(ran)


def test_refuses_non_loopback_without_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code = mcp_main(
        ["--provider", "local", "--transport", "http", "--host", "0.0.0.0", "--insecure-no-auth"]
    )
    assert code == 2
    assert "without authentication" in capsys.readouterr().err
    monkeypatch.setenv("AGENT_SANDBOX_TEST_MCP_TOKEN", TOKEN)
    code = mcp_main(
        ["--transport", "http", "--host", "0.0.0.0", "--token-env", "AGENT_SANDBOX_TEST_MCP_TOKEN"]
    )
    assert code == 2
    assert "--allowed-host" in capsys.readouterr().err


def test_token_env_must_be_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENT_SANDBOX_TEST_MCP_TOKEN", raising=False)
    code = mcp_main(["--transport", "http", "--token-env", "AGENT_SANDBOX_TEST_MCP_TOKEN"])
    assert code == 2
    assert "AGENT_SANDBOX_TEST_MCP_TOKEN" in capsys.readouterr().err


def test_http_app_refuses_all_interfaces_without_allowed_hosts() -> None:
    from agent_sandbox.errors import ConfigError

    server = SandboxMCPServer(provider="local")
    with pytest.raises(ConfigError, match="allowed-host"):
        server.http_app(host="0.0.0.0", token=TOKEN)
    with pytest.raises(ConfigError, match="without authentication"):
        server.http_app(host="10.1.2.3", insecure_no_auth=True)
    with pytest.raises(ConfigError, match="without authentication"):
        server.http_app()


# -- in process ---------------------------------------------------------------------------------


@pytest.fixture
async def local_backend(root: Path) -> AsyncIterator[LocalBackend]:
    backend = LocalBackend(LocalOptions(root=root))
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_in_process_session_lifetime_gives_each_session_its_own_sandbox(
    root: Path, local_backend: LocalBackend
) -> None:
    srv = SandboxMCPServer(backend=local_backend, lifetime="session")
    async with srv:
        assert srv.sandbox_ids == []  # created on a session's first request
        one = await srv.toolkit("session-1")
        two = await srv.toolkit("session-2")
        assert one.sandbox.id != two.sandbox.id
        assert await srv.toolkit("session-1") is one
        await srv.end_session("session-1")
        assert set(await sandboxes(root)) == {two.sandbox.id}
    assert await sandboxes(root) == []


async def test_in_process_client_and_tool_error_is_a_result(
    root: Path, local_backend: LocalBackend
) -> None:
    async with (
        SandboxMCPServer(backend=local_backend, workdir="/workspace/project") as srv,
        Client(srv.server) as client,
    ):
        outside = await client.call_tool("read", {"file_path": "/etc/passwd"})
        assert outside.is_error
        unknown = await client.call_tool("no-such-tool", {})
        assert unknown.is_error
        assert "unknown tool" in text(unknown)
    assert await sandboxes(root) == []


def test_cli_help_names_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent_sandbox.cli", "mcp", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    ).stdout
    for option in ("--transport", "--token-env", "--allowed-host", "--lifetime", "--audit"):
        assert option in out


async def test_policy_file_denials_reach_the_client_as_errors(
    tmp_path: Path, root: Path, local_backend: LocalBackend
) -> None:
    from agent_sandbox.mcp.server import build_parser, server_from_args

    toml = tmp_path / "policy.toml"
    toml.write_text("[policy]\ndeny_tools = [\"write\"]\ndeny_commands = ['\\bshutdown\\b']\n")
    srv = server_from_args(build_parser().parse_args(["--policy", str(toml)]))
    assert srv.policy is not None
    assert srv.policy.deny_tools == ("write",)

    as_json = tmp_path / "policy.json"
    as_json.write_text(json.dumps({"allow_paths": ["/workspace"]}))
    srv = server_from_args(build_parser().parse_args(["--policy", str(as_json)]))
    assert srv.policy is not None
    assert srv.policy.allow_paths == ("/workspace",)

    denied_policy = server_from_args(build_parser().parse_args(["--policy", str(toml)])).policy
    async with (
        SandboxMCPServer(backend=local_backend, policy=denied_policy) as served,
        Client(served.server) as client,
    ):
        wrote = await client.call_tool("write", {"file_path": "a.txt", "content": "x"})
        assert wrote.is_error
        assert "deny_tools" in text(wrote)
        ran = await client.call_tool("bash", {"command": "shutdown now"})
        assert ran.is_error
        assert "deny_commands" in text(ran)


async def test_http_session_lifetime_one_sandbox_per_session(root: Path) -> None:
    async with http_server(root, "--lifetime", "session") as (url, _):
        # Sessions exist in the handshake-era protocol (2025 revisions); 2026-07-28 is sessionless.
        async with http_client(url, mode="legacy") as first:
            await first.call_tool("write", {"file_path": "mine.txt", "content": "first"})
            async with http_client(url, mode="legacy") as second:
                seen = await second.call_tool("read", {"file_path": "mine.txt"})
                assert seen.is_error  # another session, another sandbox
                assert len(await sandboxes(root)) == 2
            mine = await first.call_tool("read", {"file_path": "mine.txt"})
            assert "first" in text(mine)
            # The second client closed its session (DELETE): its sandbox goes.
            with anyio.fail_after(20):
                while len(await sandboxes(root)) != 1:
                    await anyio.sleep(0.2)
        with anyio.fail_after(20):
            while await sandboxes(root):
                await anyio.sleep(0.2)


DOCKER_IMAGE = "agent-sandbox/debian-python:bookworm"


def _docker_client() -> Any:
    docker = pytest.importorskip("docker", reason="docker-py is not installed")
    pytest.importorskip("agent_sandbox_docker", reason="the docker provider is not installed")
    try:
        client = docker.from_env()
        client.images.get(DOCKER_IMAGE)
    except Exception as exc:
        pytest.skip(f"no Docker engine with {DOCKER_IMAGE} here: {exc}")
    return client


async def test_stdio_on_docker_end_to_end_and_container_removed() -> None:
    import uuid

    client = _docker_client()
    owner = f"mcp-test-{uuid.uuid4().hex[:12]}"
    label = {"label": f"agent-sandbox.owner={owner}"}
    argv = [
        sys.executable,
        "-m",
        "agent_sandbox.cli",
        "mcp",
        "--provider",
        "docker",
        "--image",
        DOCKER_IMAGE,
    ]
    params = StdioServerParameters(
        command=argv[0], args=argv[1:], env={"AGENT_SANDBOX_OWNER": owner}
    )
    try:
        async with Client(params) as mcp_client:
            await exercise(mcp_client)
            running = client.containers.list(all=True, filters=label)
            assert len(running) == 1
        with anyio.fail_after(30):
            while client.containers.list(all=True, filters=label):
                await anyio.sleep(0.2)
    finally:
        for container in client.containers.list(all=True, filters=label):
            container.remove(force=True)
        client.close()
