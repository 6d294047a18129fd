"""The egress proxy behind network policy ``allowlist``.

A sandbox with an allowlist sits alone on an *internal* Docker network (no route out at all).
The only other member of that network is a small HTTP proxy container, also attached to the
default bridge, that forwards ``CONNECT host:port`` tunnels and plain ``http://`` requests to
the hosts and CIDRs of the allowlist and answers 403 to everything else. The sandbox gets
``HTTP_PROXY``/``HTTPS_PROXY`` pointing at it, so proxy-aware clients (curl, pip, requests,
urllib, npm, git) reach allowed hosts; any other connection has nowhere to go.

The proxy is the script below, run by ``python3 -c`` (standard library only); like a sandbox,
it exits by itself when its TTL runs out. Arguments: port, TTL seconds, then the allowlist
entries (``host``, ``*.domain``, an IP or a CIDR).
"""

from __future__ import annotations

PROXY_PORT = 3128
PROXY_ALIAS = "egress-proxy"

PROXY_SCRIPT = r"""
import ipaddress, select, socket, sys, threading, time
from urllib.parse import urlsplit

port_number, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
names, nets = [], []
for entry in sys.argv[3:]:
    try:
        nets.append(ipaddress.ip_network(entry, strict=False))
    except ValueError:
        names.append(entry.lower().rstrip("."))

def resolve(host, port):
    # the address checked is the address used: no second lookup to race with
    host = host.strip("[]").lower().rstrip(".")
    by_name = any(host == n or (n.startswith("*.") and host.endswith(n[1:])) for n in names)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [
        (family, addr)
        for family, _, _, _, addr in infos
        if by_name or any(ipaddress.ip_address(addr[0].split("%")[0]) in net for net in nets)
    ]

def dial(candidates):
    error = OSError("no address")
    for family, addr in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(15)
            sock.connect(addr)
            sock.settimeout(None)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error

def relay(a, b):
    socks = [a, b]
    while socks:
        ready, _, _ = select.select(socks, [], [], 300)
        if not ready:
            return
        for s in ready:
            data = s.recv(65536)
            other = b if s is a else a
            if not data:
                socks.remove(s)
                try:
                    other.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            else:
                other.sendall(data)

def handle(client):
    upstream = None
    try:
        client.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data or len(head) > 65536:
                return
            head += data
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            port = int(port)
        else:
            url = urlsplit(target)
            host, port = url.hostname or "", url.port or 80
            path = (url.path or "/") + ("?" + url.query if url.query else "")
        found = resolve(host, port)
        if not found:
            print("egress denied:", method, target, file=sys.stderr, flush=True)
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                           b"Connection: close\r\n\r\nagent-sandbox: host not in the allowlist\n")
            return
        try:
            upstream = dial(found)
        except OSError as exc:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n"
                           + str(exc).encode() + b"\n")
            return
        client.settimeout(None)
        if method == "CONNECT":
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            body = head.split(b"\r\n\r\n", 1)[1]
            if body:
                upstream.sendall(body)
        else:
            upstream.sendall(f"{method} {path} {version}\r\n".encode("latin-1") + rest)
        relay(client, upstream)
    except (OSError, ValueError):
        pass
    finally:
        client.close()
        if upstream is not None:
            upstream.close()

server = socket.create_server(("0.0.0.0", port_number))
server.settimeout(1)
while time.monotonic() < deadline:
    try:
        conn, _ = server.accept()
    except OSError:
        continue
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


def proxy_env() -> dict[str, str]:
    """The environment that sends a sandbox's proxy-aware clients through the egress proxy."""
    url = f"http://{PROXY_ALIAS}:{PROXY_PORT}"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
    }
