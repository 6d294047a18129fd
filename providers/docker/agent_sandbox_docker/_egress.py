"""Network policy ``allowlist`` on Docker: a sandbox with no network at all, and one way out.

The sandbox container runs with ``network_mode: none``: it has loopback and nothing else, so no
packet of its own reaches this host, another container or the outside, whatever it tries (raw
sockets included). Two helper containers give it its only way out:

- the *egress proxy*, on the engine's default bridge: an HTTP proxy (``CONNECT host:port`` tunnels
  and plain ``http://`` requests) listening on a unix socket in a volume the helpers share. It
  dials only what the allowlist admits and answers 403 to everything else;
- the *relay*, which joins the sandbox's network namespace (``network_mode: container:<id>``) and
  carries each connection made to ``127.0.0.1:3128`` there to that unix socket, byte for byte.

The sandbox gets ``HTTP_PROXY``/``HTTPS_PROXY`` = ``http://127.0.0.1:3128``, so proxy-aware clients
(curl, pip, requests, urllib, npm, git) reach allowed hosts; nothing else has anywhere to go.

What the allowlist admits: an IP or CIDR entry admits those addresses; a host name (or
``*.domain``) admits the *public* addresses it resolves to. A private, loopback, link-local or
otherwise non-public address (this host's own, a container's, a cloud metadata service) is
reached only through an IP or CIDR entry naming it, so a name that resolves, or is rebound, to an
internal address opens nothing. The address checked is the address dialled.

Both helpers are small scripts run by ``python3 -c`` (standard library only); like a sandbox they
end by themselves when the TTL runs out.
"""

from __future__ import annotations

PROXY_PORT = 3128
SOCKET_DIR = "/run/agent-sandbox-egress"
SOCKET = f"{SOCKET_DIR}/proxy.sock"

_RELAY = r"""
import select, socket, sys, threading, time

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

def serve(server, deadline, handle):
    server.settimeout(1)
    while time.monotonic() < deadline:
        try:
            conn, _ = server.accept()
        except OSError:
            continue
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""

PROXY_SCRIPT = (
    _RELAY
    + r"""
import ipaddress, os
from urllib.parse import urlsplit

listen_at, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
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
    found = []
    for family, _, _, _, addr in infos:
        ip = ipaddress.ip_address(addr[0].split("%")[0])
        if any(ip in net for net in nets) or (by_name and ip.is_global):
            found.append((family, addr))
    return found

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
                           b"Connection: close\r\n\r\nagent-sandbox: host not in the allowlist "
                           b"(a name admits public addresses only; allow others by IP or CIDR)\n")
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

if os.path.exists(listen_at):
    os.unlink(listen_at)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(listen_at)
server.listen(64)
serve(server, deadline, handle)
"""
)
"""The egress proxy. Arguments: its unix socket's path, TTL seconds, then the allowlist entries
(``host``, ``*.domain``, an IP or a CIDR)."""

RELAY_SCRIPT = (
    _RELAY
    + r"""
port, target, deadline = int(sys.argv[1]), sys.argv[2], time.monotonic() + float(sys.argv[3])

def handle(client):
    upstream = None
    try:
        for _ in range(100):  # the proxy may still be starting
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(target)
                break
            except OSError:
                upstream.close()
                upstream = None
                time.sleep(0.1)
        if upstream is not None:
            relay(client, upstream)
    except OSError:
        pass
    finally:
        client.close()
        if upstream is not None:
            upstream.close()

serve(socket.create_server(("127.0.0.1", port)), deadline, handle)
"""
)
"""The relay. Arguments: the loopback port to listen on, the proxy's socket, TTL seconds."""


def proxy_env() -> dict[str, str]:
    """The environment that sends a sandbox's proxy-aware clients through the egress proxy."""
    url = f"http://127.0.0.1:{PROXY_PORT}"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
    }
