"""The MCP server: one sandbox's :class:`~agent_sandbox.tools.ToolKit` over stdio or streamable HTTP.

Library use::

    async with SandboxMCPServer(provider="docker", spec=SandboxSpec(image="python:3.12")) as srv:
        await srv.serve_stdio()          # or: await srv.serve_http(port=8765, token=...)

Command line: ``agent-sandbox mcp --provider docker --image python:3.12`` (see ``--help``).

The sandbox is created when the server starts and destroyed when it stops — on end of input,
SIGTERM, SIGINT or SIGHUP too. With ``lifetime="session"`` each MCP session gets its own sandbox
instead (HTTP then runs stateful, keyed by ``Mcp-Session-Id``; on stdio the process is the
session). HTTP runs the SDK's streamable HTTP transport (stateless by default) behind a Host
allowlist (DNS-rebinding protection) and bearer-token authentication. The token is required:
serving without one takes an explicit ``insecure_no_auth`` (``--insecure-no-auth``), and only on
loopback, since any local user could otherwise run commands in the sandbox.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import anyio
from pydantic import ValidationError

from ..errors import ConfigError, ProviderNotInstalled, SandboxError

try:
    import mcp_types as types
    from mcp.server import Server
    from mcp.server.context import ServerRequestContext
    from mcp.server.stdio import stdio_server
    from mcp.server.transport_security import TransportSecuritySettings
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ProviderNotInstalled(
        f'the MCP server needs the mcp extra ({exc}): pip install "agent-sandbox[mcp]"'
    ) from exc

from ..audit import AuditingBackend, AuditLog, JsonlSink
from ..backend import BaseBackend
from ..models import SandboxSpec
from ..policy import Policy
from ..sandbox import Sandbox
from ..tools import ToolKit
from ._token import TOKEN_ENV, default_token_file, load_or_create_token

__all__ = ["SandboxMCPServer", "create_server", "main"]

log = logging.getLogger(__name__)

Lifetime = Literal["server", "session"]
ToolKitSource = ToolKit | Callable[[str | None], Awaitable[ToolKit]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
LOOPBACK_NAMES = ("localhost",)


def create_server(toolkit: ToolKitSource, *, name: str = "agent-sandbox") -> Server[Any]:
    """An ``mcp`` SDK low-level :class:`~mcp.server.Server` exposing a toolkit's tools.

    Args:
        toolkit: the :class:`ToolKit` to serve, or an async callable mapping the MCP session id
            (``None`` on stdio and stateless HTTP) to the toolkit of that session.
        name: the server name announced to clients.

    A tool that fails returns an MCP result with ``isError`` true and the message as text, never
    a protocol error, so the model reads it.
    """

    async def resolve(ctx: ServerRequestContext[Any, Any]) -> ToolKit:
        if isinstance(toolkit, ToolKit):
            return toolkit
        return await toolkit(_session_id(ctx))

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        kit = await resolve(ctx)
        tools = [types.Tool.model_validate(tool) for tool in kit.mcp_tools()]
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            kit = await resolve(ctx)
        except SandboxError as exc:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=f"no sandbox: {exc} [{exc.code}]")],
                is_error=True,
            )
        result = await kit.run(params.name, dict(params.arguments or {}))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=result.content)],
            is_error=result.is_error,
        )

    from .. import __version__

    return Server(
        name,
        version=__version__,
        instructions=(
            "Tools that run inside an isolated sandbox: bash (a persistent shell), read, write, "
            "edit, glob, grep."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _session_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The MCP session of a request: the ``Mcp-Session-Id`` header on stateful HTTP, else None."""
    connection = getattr(ctx.session, "_connection", None)
    session_id = getattr(connection, "session_id", None)
    if isinstance(session_id, str):
        return session_id
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is not None:
        value = headers.get("mcp-session-id")
        if isinstance(value, str) and value:
            return value
    return None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """ASGI middleware answering 401 unless ``Authorization: Bearer <token>`` matches."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ConfigError("the bearer token cannot be empty")
        self.app = app
        self._token = token.encode("utf-8")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = b""
            for key, value in scope.get("headers", ()):
                if key.lower() == b"authorization":
                    header = value
                    break
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                body = json.dumps({"error": "unauthorized", "detail": "a bearer token is required"})
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="agent-sandbox"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)


def check_exposure(
    host: str, token: str | None, allowed_hosts: Sequence[str], *, insecure_no_auth: bool = False
) -> None:
    """Refuse HTTP settings that would expose the sandbox: no token unless ``insecure_no_auth``
    (and then only on loopback), or an all-interfaces bind without an explicit Host allowlist.

    Raises:
        ConfigError: naming what to add.
    """
    if not token and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve MCP on {host} without authentication: "
            "give a bearer token (--token-file or --token-env)"
        )
    if not token and not insecure_no_auth:
        raise ConfigError(
            "refusing to serve MCP over HTTP without authentication (every local user could run "
            "commands in the sandbox): give a bearer token, or insecure_no_auth=True "
            "(--insecure-no-auth) to accept that"
        )
    if host in ("0.0.0.0", "::", "") and not allowed_hosts:
        raise ConfigError(
            f"serving on all interfaces ({host or '*'}): name the Host values clients use "
            "with --allowed-host (DNS-rebinding protection)"
        )


def _allowed_hosts(host: str, port: int, extra: Sequence[str]) -> list[str]:
    hosts = list(extra)
    if is_loopback(host) or not extra:
        hosts += ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost"]
    if host not in ("0.0.0.0", "::", ""):
        shown = f"[{host}]" if ":" in host else host
        hosts += [f"{shown}:{port}", shown]
    # A name given without a port also matches it with any port.
    hosts += [f"{h}:*" for h in extra if ":" not in h.replace("[", "").split("]")[-1]]
    return hosts


class SandboxMCPServer:
    """Owns a sandbox (or one per MCP session) and serves its toolkit over MCP.

    Args:
        provider, options: which backend to create the sandbox with (as ``Sandbox.create``);
            ignored when ``backend`` is given.
        backend: an existing backend instance (not closed by the server).
        spec: the sandbox to create (image, env, TTL, network, ...).
        lifetime: ``"server"`` — one sandbox for the server's life; ``"session"`` — one per MCP
            session (on stdio the same thing).
        workdir: confine the file tools to this directory inside the sandbox.
        output_budget: characters of output per tool call (the toolkit's default when ``None``).
        audit: records every tool call and every sandbox operation.
        policy: asked before every tool call; a denial is an ``isError`` result.
        name: the MCP server name.

    Use as an async context manager (or call :meth:`start` and :meth:`aclose`): every sandbox it
    created is destroyed on exit, whatever ends it.
    """

    def __init__(
        self,
        *,
        provider: str | None = None,
        options: Mapping[str, Any] | None = None,
        backend: BaseBackend | None = None,
        spec: SandboxSpec | None = None,
        lifetime: Lifetime = "server",
        workdir: str | None = None,
        output_budget: int | None = None,
        audit: AuditLog | None = None,
        policy: Policy | None = None,
        name: str = "agent-sandbox",
    ) -> None:
        if lifetime not in ("server", "session"):
            raise ConfigError(f"lifetime must be 'server' or 'session', not {lifetime!r}")
        self.provider = provider
        self.options = dict(options or {})
        self.spec = spec or SandboxSpec()
        self.lifetime: Lifetime = lifetime
        self.workdir = workdir
        self.output_budget = output_budget
        self.audit = audit
        self.policy = policy
        self._given_backend = backend
        self._backend: BaseBackend | None = None
        self._owner: str | None = None
        self._owns_backend = backend is None
        self._toolkits: dict[str | None, ToolKit] = {}
        self._lock = anyio.Lock()
        self._stop = anyio.Event()
        self._uvicorn: Any = None
        self.server = create_server(self.toolkit, name=name)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the backend and, with server lifetime, create the sandbox now."""
        if self._backend is None:
            if self._given_backend is not None:
                backend = self._given_backend
            else:
                from ..config import resolve

                resolved = resolve(self.provider, self.options)
                backend = resolved.make_backend()
                self._owner = resolved.owner
            if self.audit is not None:
                backend = AuditingBackend(backend, self.audit)
            self._backend = backend
        if self.lifetime == "server":
            await self.toolkit(None)

    async def toolkit(self, session_id: str | None) -> ToolKit:
        """The toolkit of ``session_id`` (the single one with server lifetime), creating its
        sandbox when needed."""
        key = None if self.lifetime == "server" else session_id
        kit = self._toolkits.get(key)
        if kit is not None:
            return kit
        async with self._lock:
            kit = self._toolkits.get(key)
            if kit is not None:
                return kit
            if self._backend is None:
                await self.start()
            assert self._backend is not None
            sandbox = await Sandbox.create(self.spec, backend=self._backend, owner=self._owner)
            log.info("sandbox %s created (%s)", sandbox.id, sandbox.provider)
            extra: dict[str, Any] = {}
            if self.output_budget is not None:
                extra["output_budget"] = self.output_budget
            kit = ToolKit(
                sandbox, workdir=self.workdir, policy=self.policy, audit=self.audit, **extra
            )
            self._toolkits[key] = kit
            return kit

    @property
    def sandbox_ids(self) -> list[str]:
        """Ids of the sandboxes alive now."""
        return [kit.sandbox.id for kit in self._toolkits.values()]

    async def end_session(self, session_id: str | None) -> None:
        """Destroy the sandbox of one session (no-op when it has none)."""
        kit = self._toolkits.pop(session_id, None)
        if kit is not None:
            await _destroy(kit)

    async def aclose(self) -> None:
        """Destroy every sandbox this server created and release the backend."""
        with anyio.CancelScope(shield=True):
            while self._toolkits:
                _, kit = self._toolkits.popitem()
                await _destroy(kit)
            if self._backend is not None and self._owns_backend:
                with contextlib.suppress(Exception):
                    await self._backend.aclose()
            self._backend = None

    async def __aenter__(self) -> SandboxMCPServer:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def stop(self) -> None:
        """Ask a running :meth:`serve_stdio` / :meth:`serve_http` to return (signal-safe)."""
        self._stop.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    # -- transports ---------------------------------------------------------------------------

    async def serve_stdio(self) -> None:
        """Serve one client over stdin/stdout until it closes the input or :meth:`stop`."""
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                with _claimed_stdin() as stdin:
                    async with stdio_server(stdin=stdin) as (read_stream, write_stream):
                        await self.server.run(
                            read_stream, write_stream, self.server.create_initialization_options()
                        )
                tg.cancel_scope.cancel()

            async def watch() -> None:
                await self._stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(serve)
            tg.start_soon(watch)

    def http_app(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        path: str = "/mcp",
        token: str | None = None,
        allowed_hosts: Sequence[str] = (),
        insecure_no_auth: bool = False,
    ) -> ASGIApp:
        """The ASGI application of the streamable HTTP transport.

        Stateless unless the lifetime is ``"session"``. Requests whose ``Host`` is not allowed
        get 421; requests without ``Authorization: Bearer <token>`` get 401.

        Raises:
            ConfigError: no ``token`` (unless ``insecure_no_auth`` on a loopback ``host``), or
                an all-interfaces ``host`` without ``allowed_hosts``.
        """
        check_exposure(host, token, allowed_hosts, insecure_no_auth=insecure_no_auth)
        hosts = _allowed_hosts(host, port, allowed_hosts)
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=hosts,
            allowed_origins=[f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts],
        )
        app: ASGIApp = self.server.streamable_http_app(
            streamable_http_path=path,
            stateless_http=self.lifetime == "server",
            json_response=True,
            transport_security=security,
            host=host,
        )
        if token:
            app = BearerAuth(app, token)
        return app

    async def serve_http(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        path: str = "/mcp",
        token: str | None = None,
        allowed_hosts: Sequence[str] = (),
        insecure_no_auth: bool = False,
    ) -> None:
        """Serve streamable HTTP with uvicorn until :meth:`stop` (see :meth:`http_app`)."""
        import uvicorn

        app = self.http_app(
            host=host,
            port=port,
            path=path,
            token=token,
            allowed_hosts=allowed_hosts,
            insecure_no_auth=insecure_no_auth,
        )
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        server = _QuietUvicorn(config)
        self._uvicorn = server
        async with anyio.create_task_group() as tg:
            if self.lifetime == "session":
                tg.start_soon(self._reap_sessions)
            try:
                if self._stop.is_set():
                    return
                await server.serve()
            finally:
                self._uvicorn = None
                tg.cancel_scope.cancel()

    async def _reap_sessions(self) -> None:
        """Destroy the sandboxes of HTTP sessions that ended (DELETE, idle timeout)."""
        while True:
            await anyio.sleep(2.0)
            try:
                manager = self.server.session_manager
            except RuntimeError:
                continue
            live = getattr(manager, "_server_instances", None)
            if live is None:  # an SDK without the table: sandboxes end with the server
                return
            for key in [k for k in self._toolkits if k is not None and k not in live]:
                await self.end_session(key)


try:
    import uvicorn as _uvicorn_mod

    class _QuietUvicorn(_uvicorn_mod.Server):
        """uvicorn without its own signal handlers: the caller decides when to stop."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

except ImportError:  # pragma: no cover - uvicorn comes with the mcp extra
    _QuietUvicorn = None  # type: ignore[assignment,misc]


class _StdinLines:
    """Lines of a pipe or terminal read without a worker thread, so a signal can cancel the
    wait (the SDK's default reader blocks a thread in ``readline`` until the client writes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""
        self._eof = False

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line, self._buffer = self._buffer[: newline + 1], self._buffer[newline + 1 :]
                return line.decode("utf-8", errors="replace")
            if self._eof:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line.decode("utf-8", errors="replace")
                raise StopAsyncIteration
            await anyio.wait_readable(self.fd)
            chunk = os.read(self.fd, 65536)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True


@contextlib.contextmanager
def _claimed_stdin() -> Iterator[Any]:
    """Serve the wire from a private duplicate of fd 0 and point fd 0 at the null device, so
    commands started meanwhile cannot read the protocol stream."""
    private = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
    finally:
        os.close(devnull)
    try:
        yield _StdinLines(private)
    finally:
        os.dup2(private, 0)
        os.close(private)


async def _destroy(kit: ToolKit) -> None:
    try:
        await kit.sandbox.destroy()
        log.info("sandbox %s destroyed", kit.sandbox.id)
    except Exception:
        log.exception("destroying sandbox %s failed", kit.sandbox.id)


# -- command line -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Reports a usage mistake in one line (exit status 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``agent-sandbox mcp`` argument parser."""
    p = _Parser(
        prog="agent-sandbox mcp",
        description="Serve a sandbox's agent tools (bash, read, write, edit, glob, grep) over MCP.",
        allow_abbrev=False,
    )
    p.add_argument("--provider", help="sandbox provider (default: the configured one)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provider option (repeatable)",
    )
    p.add_argument("--image", help="image or template of the sandbox")
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="sandbox env variable"
    )
    p.add_argument("--ttl", type=float, help="seconds before the sandbox ends by itself")
    p.add_argument(
        "--network", choices=["none", "open"], help="the sandbox's network (default: provider's)"
    )
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    p.add_argument("--path", default="/mcp", help="HTTP endpoint path (default /mcp)")
    p.add_argument("--lifetime", choices=["server", "session"], default="server")
    # Accepted only to refuse it clearly: argv is visible to every local user.
    p.add_argument("--token", help=argparse.SUPPRESS)
    p.add_argument(
        "--token-file",
        metavar="FILE",
        type=Path,
        help="read the bearer token HTTP clients must send from FILE (mode 0600); a missing FILE "
        f"is created with a new token (default: ${TOKEN_ENV} if set, else "
        f"{_shown_default_token_file()})",
    )
    p.add_argument(
        "--token-env", metavar="NAME", help="read the bearer token from this environment variable"
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve HTTP on loopback WITHOUT a token: every local user can run commands in the "
        "sandbox",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="Host header value to accept (repeatable; loopback names are always accepted "
        "when bound to loopback)",
    )
    p.add_argument("--workdir", help="confine the file tools to this directory in the sandbox")
    p.add_argument("--output-budget", type=int, help="characters of output per tool call")
    p.add_argument("--audit", metavar="FILE", help="append a hash-chained audit log to FILE")
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="JSON or TOML policy: allow_tools, deny_tools, deny_commands, allow_paths, deny_paths",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    return p


def _shown_default_token_file() -> str:
    path = str(default_token_file())
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if path.startswith(home + os.sep) else path


def _say(message: str) -> None:
    print(f"agent-sandbox mcp: {message}", file=sys.stderr, flush=True)


def resolve_token(args: argparse.Namespace) -> str | None:
    """The bearer token the HTTP server requires, from ``--token-env``, ``--token-file``,
    ``$AGENT_SANDBOX_MCP_TOKEN`` or the default token file (created when missing); ``None``
    with ``--insecure-no-auth``.

    Raises:
        ConfigError: a token given on the command line, an unset variable, a bad token file.
    """
    if args.token is not None:
        raise ConfigError(
            "--token is not accepted: a token on the command line is visible to every local "
            "user in the process list; use --token-file FILE or --token-env NAME"
        )
    if args.insecure_no_auth:
        if args.token_file or args.token_env:
            raise ConfigError("--insecure-no-auth contradicts --token-file / --token-env")
        return None
    if args.token_env:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise ConfigError(f"${args.token_env} is not set or empty")
        return token
    if args.token_file is None and os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    path = args.token_file or default_token_file()
    token, created = load_or_create_token(path)
    if created:
        _say(f"generated a bearer token in {path} (readable by you only)")
    _say(f"clients must send 'Authorization: Bearer <token>' with the token in {path}")
    return token


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def server_from_args(args: argparse.Namespace) -> SandboxMCPServer:
    """A :class:`SandboxMCPServer` configured from parsed command-line arguments."""
    spec_fields: dict[str, Any] = {}
    if args.image:
        spec_fields["image"] = args.image
    if args.env:
        spec_fields["env"] = _pairs(args.env, "--env")
    if args.ttl:
        spec_fields["ttl_seconds"] = args.ttl
    if args.network:
        spec_fields["network"] = {"mode": args.network}
    audit = None
    if args.audit:
        secrets = list(spec_fields.get("env", {}))
        audit = AuditLog(JsonlSink(args.audit), secret_values=_secret_values(spec_fields, secrets))
    return SandboxMCPServer(
        provider=args.provider,
        options=_pairs(args.option, "--option"),
        spec=SandboxSpec.model_validate(spec_fields),
        lifetime=args.lifetime,
        workdir=args.workdir,
        output_budget=args.output_budget,
        audit=audit,
        policy=Policy.from_file(args.policy) if args.policy else None,
    )


def _secret_values(spec_fields: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    from ..audit import looks_secret

    env = spec_fields.get("env", {})
    return [env[n] for n in names if looks_secret(n) and env.get(n)]


async def _serve(srv: SandboxMCPServer, args: argparse.Namespace, token: str | None) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for signum in signals:
                    log.info("signal %s: shutting down", signum)
                    srv.stop()
                    return

            tg.start_soon(watch)
            try:
                async with srv:
                    if args.transport == "http":
                        print(
                            f"agent-sandbox mcp: serving {', '.join(srv.sandbox_ids) or 'sandboxes'}"
                            f" on http://{args.host}:{args.port}{args.path}",
                            file=sys.stderr,
                            flush=True,
                        )
                        await srv.serve_http(
                            host=args.host,
                            port=args.port,
                            path=args.path,
                            token=token,
                            allowed_hosts=args.allowed_host,
                            insecure_no_auth=args.insecure_no_auth,
                        )
                    else:
                        await srv.serve_stdio()
            finally:
                tg.cancel_scope.cancel()


def main(argv: Sequence[str]) -> int:
    """Entry point of ``agent-sandbox mcp``; returns the exit status (2 on a usage or config
    error, reported in one line)."""
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # --help, or a usage error already reported in one line
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    token: str | None = None
    try:  # before any sandbox exists
        srv = server_from_args(args)
        if args.transport == "http":
            token = resolve_token(args)
            check_exposure(
                args.host, token, args.allowed_host, insecure_no_auth=args.insecure_no_auth
            )
        elif args.token is not None:
            resolve_token(args)
    except ConfigError as exc:
        _say(str(exc))
        return 2
    except ValidationError as exc:
        _say(_one_line(exc))
        return 2
    except OSError as exc:
        _say(str(exc))
        return 2
    if args.transport == "http" and token is None:
        _say(
            "WARNING: serving WITHOUT authentication (--insecure-no-auth): every local user "
            "can run commands in the sandbox"
        )
    try:
        anyio.run(_serve, srv, args, token)
    except SandboxError as exc:
        _say(f"{exc.code}: {exc}")
        return 2
    except OSError as exc:
        _say(str(exc))
        return 2
    return 0


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return f"invalid {where}: {first['msg']}"
