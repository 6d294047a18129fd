"""``agent-sandbox tunnel``: run a connector or an edge, and make their credentials.

Secrets never go on the command line: the connector token comes from ``--token-file`` (read
again on every dial) or ``$AGENT_SANDBOX_TUNNEL_TOKEN``; keys and caller tokens live in files.
This module imports nothing heavy until a tunnel command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ..errors import ConfigError

__all__ = ["add_tunnel_parser", "main", "run_tunnel"]

TOKEN_ENV = "AGENT_SANDBOX_TUNNEL_TOKEN"
log = logging.getLogger(__name__)


def add_tunnel_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tunnel`` and its sub-commands to ``subparsers``; run the parsed result with
    :func:`run_tunnel`."""
    tunnel: argparse.ArgumentParser = subparsers.add_parser(
        "tunnel", help="the MCP tunnel: connector, edge and their credentials"
    )
    sub = tunnel.add_subparsers(dest="tunnel_command", required=True)

    p = sub.add_parser("connect", help="run a connector: dial the edge, serve private MCP servers")
    p.add_argument(
        "--edge", action="append", required=True, metavar="URL", help="wss://EDGE/connect"
    )
    p.add_argument("--token-file", type=Path, help=f"connector token file (else ${TOKEN_ENV})")
    p.add_argument(
        "--route", action="append", required=True, metavar="NAME=URL", help="a private MCP server"
    )
    for flag, what in (
        ("--allow-method", "only these JSON-RPC methods"),
        ("--deny-method", "never these JSON-RPC methods"),
        ("--allow-tool", "only these tools"),
        ("--deny-tool", "never these tools"),
    ):
        p.add_argument(flag, action="append", default=[], metavar="ROUTE=PATTERN", help=what)
    p.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        help="upstream networks allowed (default: the private ranges)",
    )
    p.add_argument("--allow-loopback", action="store_true", help="allow upstreams on loopback")
    p.add_argument("--connections", type=int, default=2, help="connections per edge (default 2)")
    p.add_argument("--ca-file", type=Path, help="CA bundle verifying the edge (default: system)")
    p.add_argument("--upstream-ca-file", type=Path, help="CA bundle for https:// upstreams")
    p.add_argument("--max-request-bytes", type=int, default=4 << 20)
    p.add_argument("--max-response-bytes", type=int, default=64 << 20)
    p.add_argument("--max-streams", type=int, default=128, help="exchanges per connection")
    p.add_argument("--ping-interval", type=float, default=20.0, help="keepalive seconds")
    p.add_argument("--backoff", type=float, default=0.5, help="first reconnect delay bound (s)")
    p.add_argument("--max-backoff", type=float, default=30.0, help="reconnect delay cap (s)")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="grace period on SIGTERM")
    _common(p)

    p = sub.add_parser("edge", help="run an edge: accept connectors, serve routes to MCP clients")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT")
    p.add_argument("--tls-cert", type=Path, help="certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, help="private key (PEM; default: in --tls-cert)")
    p.add_argument(
        "--connector-keys", type=Path, required=True, help="public key(s) verifying connectors"
    )
    p.add_argument(
        "--callers", type=Path, required=True, help="callers file (NAME SHA256 [ROUTES])"
    )
    p.add_argument("--max-request-bytes", type=int, default=4 << 20)
    p.add_argument("--max-token-ttl", type=float, default=86400, help="longest token lifetime (s)")
    p.add_argument("--ping-interval", type=float, default=20.0, help="keepalive seconds")
    p.add_argument("--drain-seconds", type=float, default=30.0, help="grace period on SIGTERM")
    _common(p)

    p = sub.add_parser("keygen", help="make the Ed25519 key pair that signs connector tokens")
    p.add_argument("--private", type=Path, required=True, help="where to write the private key")
    p.add_argument("--public", type=Path, required=True, help="where to write the public key")

    p = sub.add_parser("token", help="mint a connector token (printed on stdout)")
    p.add_argument("--key", type=Path, required=True, help="the private signing key")
    p.add_argument("--connector", required=True, help="the connector's name")
    p.add_argument("--route", action="append", required=True, help="a route it may serve")
    p.add_argument("--ttl", type=float, default=3600, help="lifetime in seconds (default 3600)")

    p = sub.add_parser("caller", help="make a caller token (stdout) and its callers-file line")
    p.add_argument("name")
    p.add_argument("--route", action="append", help="limit the caller to these routes")

    return tunnel


def main(argv: Sequence[str]) -> int:
    """Entry point of ``agent-sandbox tunnel ARGS``; returns the exit status.

    Raises:
        ConfigError: invalid options (the main command reports it and exits 2).
    """
    parser = argparse.ArgumentParser(prog="agent-sandbox")
    add_tunnel_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tunnel", *argv])
    code: int = anyio.run(run_tunnel, args)
    return code


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audit", type=Path, metavar="FILE", help="append a hash-chained audit log")
    p.add_argument("-v", "--verbose", action="store_true", help="log connections to stderr")


async def run_tunnel(args: argparse.Namespace) -> int:
    """Run the ``tunnel`` sub-command in ``args``; returns the exit status.

    Raises:
        ConfigError: invalid options (the main command prints it and exits 2).
    """
    command = args.tunnel_command
    if command == "keygen":
        return _keygen(args)
    if command == "token":
        return _token(args)
    if command == "caller":
        return _caller(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if command == "connect":
        return await _connect(args)
    return await _edge(args)


def _audit(path: Path | None, secrets: Sequence[str] = ()) -> Any:
    from ..audit import AuditLog, JsonlSink

    return AuditLog(JsonlSink(path), secret_values=secrets) if path else None


def _rules(values: Sequence[str], flag: str, routes: set[str]) -> dict[str, list[str]]:
    rules: dict[str, list[str]] = {}
    for value in values:
        route, sep, pattern = value.partition("=")
        if not sep or not pattern or route not in routes:
            raise ConfigError(f"{flag} takes ROUTE=PATTERN for a configured route, got {value!r}")
        rules.setdefault(route, []).append(pattern)
    return rules


async def _connect(args: argparse.Namespace) -> int:
    from . import AddressPolicy, Connector, Route

    urls: dict[str, str] = {}
    for value in args.route:
        name, sep, url = value.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"--route takes NAME=URL, got {value!r}")
        if name in urls:
            raise ConfigError(f"route {name!r} given twice")
        urls[name] = url
    names = set(urls)
    allow_m = _rules(args.allow_method, "--allow-method", names)
    deny_m = _rules(args.deny_method, "--deny-method", names)
    allow_t = _rules(args.allow_tool, "--allow-tool", names)
    deny_t = _rules(args.deny_tool, "--deny-tool", names)
    routes = [
        Route(
            name=name,
            url=url,
            allow_methods=tuple(allow_m[name]) if name in allow_m else None,
            deny_methods=tuple(deny_m.get(name, ())),
            allow_tools=tuple(allow_t[name]) if name in allow_t else None,
            deny_tools=tuple(deny_t.get(name, ())),
        )
        for name, url in urls.items()
    ]
    token = None
    if args.token_file is None:
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise ConfigError(f"give --token-file or set ${TOKEN_ENV}")
    try:
        addresses = AddressPolicy(args.allow_network, allow_loopback=args.allow_loopback)
    except ValueError as exc:
        raise ConfigError(f"--allow-network: {exc}") from exc
    connector = Connector(
        args.edge,
        routes,
        token_file=args.token_file,
        token=token,
        connections=args.connections,
        addresses=addresses,
        ca_file=args.ca_file,
        upstream_ca_file=args.upstream_ca_file,
        max_request_bytes=args.max_request_bytes,
        max_response_bytes=args.max_response_bytes,
        max_streams=args.max_streams,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_interval,
        backoff=(args.backoff, args.max_backoff),
        drain_seconds=args.drain_seconds,
        audit=_audit(args.audit, [token] if token else []),
    )
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for signum in signals:
                    if connector.stopping:
                        tg.cancel_scope.cancel()  # a second signal: stop now
                        return
                    log.info("signal %s: draining", signum)
                    connector.stop()

            tg.start_soon(watch)
            await connector.run()
            tg.cancel_scope.cancel()
    return 0


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen takes HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def _edge(args: argparse.Namespace) -> int:
    from . import CallerTokens, ConnectorKeys, Edge

    host, port = _split_listen(args.listen)
    if args.tls_cert is None and host not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError("an edge listening beyond loopback needs --tls-cert")
    for path in (args.connector_keys, args.callers, args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"no such file: {path}")
    edge = Edge(
        connector_keys=ConnectorKeys(args.connector_keys, max_ttl_seconds=args.max_token_ttl),
        callers=CallerTokens(args.callers),
        max_request_bytes=args.max_request_bytes,
        drain_seconds=args.drain_seconds,
        audit=_audit(args.audit),
    )
    scheme = "https" if args.tls_cert else "http"

    def ready() -> None:
        print(
            f"agent-sandbox tunnel edge: listening on {scheme}://{args.listen}",
            file=sys.stderr,
            flush=True,
        )

    await edge.serve(
        host,
        port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_interval,
        on_ready=ready,
    )
    return 0


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _keygen(args: argparse.Namespace) -> int:
    from . import generate_signing_key

    private, public = generate_signing_key()
    try:
        _write_secret(args.private, private)
    except FileExistsError as exc:
        raise ConfigError(f"{args.private} exists: not overwriting a key") from exc
    args.public.write_bytes(public)
    print(f"private key: {args.private} (keep it secret)\npublic key: {args.public} (for the edge)")
    return 0


def _token(args: argparse.Namespace) -> int:
    from . import mint_token

    try:
        key = args.key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key: {exc}") from exc
    print(mint_token(key, connector=args.connector, routes=args.route, ttl_seconds=args.ttl))
    return 0


def _caller(args: argparse.Namespace) -> int:
    from . import hash_token, new_caller_token

    token = new_caller_token()
    line = f"{args.name} {hash_token(token)}"
    if args.route:
        line += " " + ",".join(args.route)
    print(token)
    print(f"add to the edge's callers file:\n{line}", file=sys.stderr)
    return 0
