"""A tunnel on loopback, as real processes: MCP servers, an edge and a connector.

Used by the tunnel's end-to-end tests and by ``benchmarks/tunnel_latency.py``. Everything runs
through the ``agent-sandbox tunnel`` command line; TLS uses a throwaway CA made by ``trustme``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import trustme
from anyio.abc import Process
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agent_sandbox.tunnel import generate_signing_key, hash_token, mint_token, new_caller_token

HERE = Path(__file__).parent
UPSTREAM = HERE / "tunnel_upstream.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def events(path: Path) -> list[dict[str, Any]]:
    """The audit records in a JSONL file so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_port(port: int, process: Process, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while True:
            assert process.returncode is None, "the server exited early"
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


class Tunnel:
    """Credentials and processes of one loopback tunnel; use :func:`tunnel` to get one."""

    def __init__(self, root: Path, stack: AsyncExitStack) -> None:
        self.root = root
        self.stack = stack
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file = root / "edge.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))
        private, public = generate_signing_key()
        self.signing_key = private
        self.public_key_file = root / "connector-keys.pem"
        self.public_key_file.write_bytes(public)
        self.caller_token = new_caller_token()
        self.callers_file = root / "callers"
        self.callers_file.write_text(f"agent {hash_token(self.caller_token)}\n")
        self.token_file = root / "connector.token"
        self.edge_audit = root / "edge-audit.jsonl"
        self.connector_audit = root / "connector-audit.jsonl"
        self.edge_port = free_port()
        self.edge_url = f"https://127.0.0.1:{self.edge_port}"
        self.edge: Process | None = None
        self.connector: Process | None = None

    def mint(self, routes: Sequence[str], *, ttl: float = 600, now: float | None = None) -> str:
        return mint_token(
            self.signing_key, connector="test-connector", routes=routes, ttl_seconds=ttl, now=now
        )

    async def process(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> Process:
        log = (self.root / f"{name}.log").open("ab")
        process = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.stack.push_async_callback(_end, process)
        self.stack.callback(log.close)
        return process

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def upstream(self, *, json_response: bool = False, redirect: bool = False) -> str:
        """Start an MCP server (or a redirecting one); its endpoint URL."""
        port = free_port()
        argv = [sys.executable, str(UPSTREAM), "--port", str(port)]
        if json_response:
            argv.append("--json")
        if redirect:
            argv.append("--redirect")
        process = await self.process(f"upstream-{port}", argv)
        await wait_port(port, process)
        return f"http://127.0.0.1:{port}/mcp"

    async def start_edge(self, *extra: str, audit: Path | None = None) -> Process:
        argv = [
            *_cli("edge"),
            "--listen",
            f"127.0.0.1:{self.edge_port}",
            "--tls-cert",
            str(self.cert_file),
            "--connector-keys",
            str(self.public_key_file),
            "--callers",
            str(self.callers_file),
            "--audit",
            str(audit or self.edge_audit),
            "--drain-seconds",
            "10",
            "-v",
            *extra,
        ]
        self.edge = await self.process("edge", argv)
        await wait_port(self.edge_port, self.edge)
        return self.edge

    async def start_connector(
        self, routes: dict[str, str], *extra: str, token: str | None = None, wait: bool = True
    ) -> Process:
        if token is not None or not self.token_file.exists():
            self.token_file.write_text(token or self.mint(list(routes)))
        argv = [
            *_cli("connect"),
            "--edge",
            f"wss://127.0.0.1:{self.edge_port}/connect",
            "--token-file",
            str(self.token_file),
            "--ca-file",
            str(self.ca_file),
            "--audit",
            str(self.connector_audit),
            "--backoff",
            "0.1",
            "--max-backoff",
            "0.5",
            "--drain-seconds",
            "10",
            "-v",
            *(arg for name, url in routes.items() for arg in ("--route", f"{name}={url}")),
            *extra,
        ]
        self.connector = await self.process("connector", argv)
        if wait:
            await self.wait_connected(2)
        return self.connector

    async def wait_connected(self, count: int, *, since: int = 0, timeout: float = 30) -> None:
        """Wait until the connector has made ``count`` connections (after record ``since``)."""
        with anyio.fail_after(timeout):
            while True:
                dials = [
                    e
                    for e in events(self.connector_audit)[since:]
                    if e["op"] == "tunnel.dial" and e["decision"] == "allow"
                ]
                if len(dials) >= count:
                    return
                assert self.connector is not None
                assert self.connector.returncode is None, self.log("connector")
                await anyio.sleep(0.05)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    @asynccontextmanager
    async def client(
        self,
        route: str,
        *,
        token: str | None = None,
        mode: str = "auto",
        timeout: float = 60,
        url: str | None = None,
    ) -> AsyncIterator[Client]:
        """An MCP client (the ``mcp`` SDK) of ``route`` through the edge (or of ``url``);
        ``token=""`` sends no token."""
        token = self.caller_token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(
            headers=headers, timeout=timeout, verify=self.ssl_context()
        ) as http:
            transport = streamable_http_client(
                url or f"{self.edge_url}/{route}/mcp", http_client=http, max_sse_event_size=None
            )
            async with Client(transport, mode=mode) as client:
                yield client


def _cli(command: str) -> list[str]:
    return [sys.executable, "-m", "agent_sandbox.cli", "tunnel", command]


async def _end(process: Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(15):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
    await process.aclose()


@asynccontextmanager
async def tunnel(root: Path) -> AsyncIterator[Tunnel]:
    """A :class:`Tunnel` whose processes all end when the block does, even on failure."""
    async with AsyncExitStack() as stack:
        yield Tunnel(root, stack)
