"""The allowlist's egress proxy script, run as a plain local process against a loopback server.

No engine needed: this checks the proxy's own decisions (host names, CIDRs, CONNECT and plain
HTTP, its TTL); test_docker_backend.py checks it wired into an internal Docker network.
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
from collections.abc import Iterator

import pytest
from agent_sandbox_docker._egress import PROXY_SCRIPT

TOKEN = b"proxied-token"


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


def _start_proxy(ttl: str, *allow: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", PROXY_SCRIPT, str(port), ttl, *allow],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("the proxy did not start listening")


@pytest.fixture
def proxy() -> Iterator[int]:
    proc, port = _start_proxy("120", "localhost", "10.99.0.0/16")
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _fetch(proxy_port: int, url: str) -> bytes:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}"})
    )
    with opener.open(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def test_allowed_host_name_is_forwarded(proxy: int, origin: int) -> None:
    assert _fetch(proxy, f"http://localhost:{origin}/x?y=1") == TOKEN


def test_other_hosts_get_403(proxy: int, origin: int) -> None:
    # same server, but named by an address that is neither an allowed name nor in the CIDR
    with pytest.raises(urllib.error.HTTPError) as caught:
        _fetch(proxy, f"http://127.0.0.1:{origin}/")
    assert caught.value.code == 403


def test_connect_tunnel(proxy: int, origin: int) -> None:
    with socket.create_connection(("127.0.0.1", proxy), timeout=10) as s:
        s.sendall(f"CONNECT localhost:{origin} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.endswith(TOKEN)
    with socket.create_connection(("127.0.0.1", proxy), timeout=10) as s:
        s.sendall(f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 403")


def test_cidr_entries_allow_addresses() -> None:
    proc, port = _start_proxy("120", "127.0.0.0/8")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _fetch(port, f"http://127.0.0.1:{server.server_address[1]}/") == TOKEN
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_proxy_ends_itself_at_its_ttl() -> None:
    proc, _ = _start_proxy("1", "localhost")
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
