"""The allowlist's egress proxy and relay scripts, run as plain local processes.

No engine needed: this checks the proxy's own decisions (CIDRs, host names admitting public
addresses only, CONNECT and plain HTTP, its TTL) and the relay that carries a loopback port to
the proxy's unix socket; test_docker_backend.py checks them wired around a sandbox.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_sandbox_docker._egress import PROXY_SCRIPT, RELAY_SCRIPT

TOKEN = b"proxied-token"
Start = Callable[..., int]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(TOKEN)))
        self.end_headers()
        self.wfile.write(TOKEN)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    """An HTTP server on loopback answering ``TOKEN``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spawn(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture
def egress(tmp_path: Path) -> Iterator[Start]:
    """``start(*allow)``: a relay (on a loopback port, started first, as in a sandbox) and the
    proxy behind it; returns the relay's port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*allow: str, ttl: str = "120") -> int:
        sock = str(tmp_path / f"proxy-{len(procs)}.sock")
        port = _free_port()
        procs.append(_spawn(RELAY_SCRIPT, str(port), sock, ttl))
        procs.append(_spawn(PROXY_SCRIPT, sock, ttl, *allow))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the relay did not start listening")

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


def _fetch(port: int, url: str) -> bytes:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"})
    )
    with opener.open(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def _connect(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = s.recv(4096)
        if not answer.startswith(b"HTTP/1.1 200"):
            return answer
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return reply


def test_cidr_entries_admit_their_addresses(egress: Start, origin: int) -> None:
    port = egress("127.0.0.0/8")
    assert _fetch(port, f"http://127.0.0.1:{origin}/x?y=1") == TOKEN
    assert _connect(port, f"127.0.0.1:{origin}").endswith(TOKEN)


def test_other_addresses_get_403(egress: Start, origin: int) -> None:
    port = egress("10.99.0.0/16")
    with pytest.raises(urllib.error.HTTPError) as caught:
        _fetch(port, f"http://127.0.0.1:{origin}/")
    assert caught.value.code == 403
    assert _connect(port, f"127.0.0.1:{origin}").startswith(b"HTTP/1.1 403")


def test_a_name_admits_no_internal_address(egress: Start, origin: int) -> None:
    """``localhost`` is allowed by name, but resolves to loopback: refused, as a name pointing
    (or rebound) at this host, a container or a metadata service would be."""
    port = egress("localhost")
    with pytest.raises(urllib.error.HTTPError) as caught:
        _fetch(port, f"http://localhost:{origin}/")
    assert caught.value.code == 403
    assert _connect(port, f"localhost:{origin}").startswith(b"HTTP/1.1 403")


def test_a_name_reaches_an_internal_address_allowed_by_cidr(egress: Start, origin: int) -> None:
    port = egress("localhost", "127.0.0.1/32")
    assert _fetch(port, f"http://localhost:{origin}/") == TOKEN
    assert _connect(port, f"localhost:{origin}").endswith(TOKEN)


def test_proxy_and_relay_end_themselves_at_their_ttl(tmp_path: Path) -> None:
    sock = str(tmp_path / "ttl.sock")
    relay = _spawn(RELAY_SCRIPT, str(_free_port()), sock, "1")
    proxy = _spawn(PROXY_SCRIPT, sock, "1", "localhost")
    try:
        assert proxy.wait(timeout=30) == 0
        assert relay.wait(timeout=30) == 0
    finally:
        _stop(relay)
        _stop(proxy)
