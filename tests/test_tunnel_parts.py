"""The MCP tunnel's parts, each on its own: credentials, address checks, exchange rules, the
HTTP/2 multiplexer (two real channels over an in-memory transport) and the command line."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("h2", reason="the MCP tunnel needs the tunnel extra")

from agent_sandbox.cli import main
from agent_sandbox.errors import AuthenticationError, ConfigError
from agent_sandbox.tunnel import (
    AddressPolicy,
    CallerTokens,
    ConnectorKeys,
    Route,
    UpstreamRefused,
    generate_signing_key,
    hash_token,
    mint_token,
    new_caller_token,
)
from agent_sandbox.tunnel._h2 import STREAM_WINDOW, ChannelClosed, H2Channel, H2Stream, StreamReset
from agent_sandbox.tunnel.connector import backoff_delay
from agent_sandbox.tunnel.exchange import Refusal, describe, error_body

# -- connector tokens -------------------------------------------------------------------------


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[bytes, Path]:
    private, public = generate_signing_key()
    path = tmp_path / "keys.pem"
    path.write_bytes(public)
    return private, path


def test_token_round_trip(keypair: tuple[bytes, Path]) -> None:
    private, path = keypair
    token = mint_token(private, connector="dc-1", routes=["tickets", "db"], ttl_seconds=300)
    claims = ConnectorKeys(path).verify(token)
    assert claims.name == "dc-1"
    assert claims.routes == {"tickets", "db"}
    assert claims.expires == pytest.approx(time.time() + 300, abs=5)


def test_tokens_refused(keypair: tuple[bytes, Path]) -> None:
    private, path = keypair
    keys = ConnectorKeys(path, max_ttl_seconds=3600)
    stranger, _ = generate_signing_key()
    cases = {
        "not signed by a known key": mint_token(stranger, connector="x", routes=["a"]),
        "expired": mint_token(
            private, connector="x", routes=["a"], ttl_seconds=60, now=time.time() - 600
        ),
        "longer than the edge allows": mint_token(
            private, connector="x", routes=["a"], ttl_seconds=7200
        ),
        "not yet valid": mint_token(private, connector="x", routes=["a"], now=time.time() + 600),
        "invalid connector token": "not.a.jwt",
    }
    for why, token in cases.items():
        with pytest.raises(AuthenticationError, match=why):
            keys.verify(token)


def test_token_algorithm_confusion_is_refused(keypair: tuple[bytes, Path]) -> None:
    """A token "signed" with HMAC using the public key as secret, or with ``alg: none``."""
    _, path = keypair
    now = int(time.time())
    claims = {"sub": "x", "aud": "agent-sandbox-tunnel", "iat": now, "exp": now + 60}
    claims["routes"] = ["a"]  # type: ignore[assignment]

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def forge(alg: str) -> str:
        head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        body = b64(json.dumps(claims).encode())
        signing_input = f"{head}.{body}".encode()
        mac = hmac.new(path.read_bytes(), signing_input, hashlib.sha256).digest()
        return f"{head}.{body}." + (b64(mac) if alg == "HS256" else "")

    keys = ConnectorKeys(path)
    for alg in ("HS256", "none"):
        with pytest.raises(AuthenticationError):
            keys.verify(forge(alg))


def test_key_rotation_without_restart(tmp_path: Path) -> None:
    old_private, old_public = generate_signing_key()
    new_private, new_public = generate_signing_key()
    path = tmp_path / "keys.pem"
    path.write_bytes(old_public)
    keys = ConnectorKeys(path)
    fresh = mint_token(new_private, connector="x", routes=["a"])
    with pytest.raises(AuthenticationError):
        keys.verify(fresh)
    path.write_bytes(old_public + new_public)  # rollover: both valid for a while
    assert keys.verify(fresh).name == "x"
    assert keys.verify(mint_token(old_private, connector="x", routes=["a"])).name == "x"
    path.write_text("garbage")  # a broken file fails closed
    with pytest.raises(AuthenticationError, match="unusable"):
        keys.verify(fresh)


def test_mint_refuses_bad_input(keypair: tuple[bytes, Path]) -> None:
    private, path = keypair
    with pytest.raises(ConfigError, match="route"):
        mint_token(private, connector="x", routes=["Not A Route"])
    with pytest.raises(ConfigError, match="route"):
        mint_token(private, connector="x", routes=[])
    with pytest.raises(ConfigError, match="private key"):
        mint_token(path.read_bytes(), connector="x", routes=["a"])


# -- callers ----------------------------------------------------------------------------------


def test_callers_file(tmp_path: Path) -> None:
    alice, bob = new_caller_token(), new_caller_token()
    path = tmp_path / "callers"
    path.write_text(
        f"# callers\nalice {hash_token(alice)}\nbob {hash_token(bob)} tickets,wiki  # limited\n"
    )
    callers = CallerTokens(path)
    found = callers.authenticate(alice)
    assert found is not None
    assert found.name == "alice"
    assert found.may_use("db")
    limited = callers.authenticate(bob)
    assert limited is not None
    assert limited.may_use("wiki")
    assert not limited.may_use("db")
    assert callers.authenticate("guess") is None
    assert callers.authenticate(hash_token(alice)) is None  # the stored digest is no token

    path.write_text(f"bob {hash_token(bob)}\n")  # alice revoked, no restart
    assert callers.authenticate(alice) is None
    path.write_text(f"bob {bob}\n")  # a plain token where a digest belongs: nobody gets in
    assert callers.authenticate(bob) is None


# -- upstream addresses -------------------------------------------------------------------------


def test_address_policy_defaults() -> None:
    policy = AddressPolicy()
    ip = ipaddress.ip_address
    for allowed in ("10.1.2.3", "172.16.0.9", "192.168.1.1", "fd00::1", "::ffff:10.0.0.1"):
        assert policy.refusal(ip(allowed)) is None, allowed
    for refused in ("8.8.8.8", "198.51.100.7", "127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert policy.refusal(ip(refused)) is not None, refused
    assert AddressPolicy(allow_loopback=True).refusal(ip("127.0.0.1")) is None


@given(st.ip_addresses())
def test_special_addresses_are_never_allowed(address: ipaddress._BaseAddress) -> None:
    policy = AddressPolicy(["0.0.0.0/0", "::/0"], allow_loopback=True)
    special = address.is_link_local or address.is_multicast or address.is_unspecified
    if special and not address.is_loopback:
        assert policy.refusal(address) is not None  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_names_are_resolved_and_checked() -> None:
    with pytest.raises(UpstreamRefused, match="loopback"):
        await AddressPolicy().resolve("localhost", 80)
    assert "127.0.0.1" in await AddressPolicy(allow_loopback=True).resolve("localhost", 80)
    with pytest.raises(UpstreamRefused, match="link-local"):
        await AddressPolicy(["0.0.0.0/0"]).resolve("169.254.169.254", 80)


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(n, base=0.5, cap=30) for n in range(40) for _ in range(20)]
    assert all(0 <= d <= 30 for d in delays)
    assert max(delays) > 15  # grows to the cap
    late = {backoff_delay(30, base=0.5, cap=30) for _ in range(20)}
    assert len(late) > 1  # jittered, not a fixed step


# -- what an exchange asks ------------------------------------------------------------------------


def rpc(method: str, **params: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 3, "method": method, "params": params}).encode()


def test_describe_from_body_and_headers() -> None:
    info = describe({}, rpc("tools/call", name="search"))
    assert (info.method, info.tool, info.request_id) == ("tools/call", "search", 3)
    headers = {"mcp-method": "tools/call", "mcp-name": "search"}
    assert describe(headers, rpc("tools/call", name="search")).tool == "search"
    assert describe(headers, b"").tool == "search"  # no body: the headers say it
    encoded = {"mcp-method": "tools/call", "mcp-name": "=?base64?w6l0w6k=?="}
    assert describe(encoded, rpc("tools/call", name="été")).tool == "été"
    batch = json.dumps([json.loads(rpc("tools/list")), json.loads(rpc("tools/call", name="x"))])
    assert describe({}, batch.encode()).calls == (("tools/list", None), ("tools/call", "x"))
    assert describe({}, b"not json").method is None


def test_header_that_contradicts_the_body_is_refused() -> None:
    """An older server ignores the headers: a rule decided on them could be walked around."""
    with pytest.raises(Refusal, match="Mcp-Name") as caught:
        describe({"mcp-method": "tools/call", "mcp-name": "search"}, rpc("tools/call", name="rm"))
    assert caught.value.status == 400
    with pytest.raises(Refusal, match="Mcp-Method"):
        describe({"mcp-method": "tools/list"}, rpc("tools/call", name="rm"))


def test_route_rules() -> None:
    route = Route(
        "tickets",
        "http://10.0.0.5:8000/mcp",
        deny_methods=("resources/*",),
        allow_tools=("search", "get_*"),
        deny_tools=("get_secret",),
    )
    route.check(describe({}, rpc("tools/call", name="get_ticket")))
    route.check(describe({}, rpc("tools/list")))
    for body, reason in [
        (rpc("tools/call", name="delete"), "tool_denied"),
        (rpc("tools/call", name="get_secret"), "tool_denied"),
        (rpc("resources/read", uri="file:///etc/passwd"), "method_denied"),
        (rpc("tools/call"), "bad_request"),
    ]:
        with pytest.raises(Refusal) as caught:
            route.check(describe({}, body))
        assert caught.value.reason == reason
    only = Route("db", "https://db.internal/mcp", allow_methods=("initialize", "tools/*"))
    with pytest.raises(Refusal, match="not allowed"):
        only.check(describe({}, rpc("prompts/list")))
    for name, url in [
        ("Bad Name", "http://10.0.0.1/mcp"),
        ("ok", "ftp://x/mcp"),
        ("ok", "http://u:p@x/"),
    ]:
        with pytest.raises(ConfigError):
            Route(name, url)


def test_error_body_is_a_json_rpc_error() -> None:
    body = json.loads(error_body(Refusal(403, "tool_denied", "no"), 9))
    assert body == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {
            "code": -32000,
            "message": "no",
            "data": {"reason": "tool_denied", "status": 403},
        },
    }


# -- the HTTP/2 multiplexer -------------------------------------------------------------------------


@asynccontextmanager
async def channel_pair(
    handler: Callable[[H2Stream], object], **server_options: int
) -> AsyncIterator[tuple[H2Channel, H2Channel, Callable[[], None]]]:
    """A client and a server channel over two bounded in-memory pipes; the third item cuts them."""
    c2s_send, c2s_recv = anyio.create_memory_object_stream[bytes | None](4)
    s2c_send, s2c_recv = anyio.create_memory_object_stream[bytes | None](4)

    def receiver(stream: anyio.abc.ObjectReceiveStream[bytes | None]) -> Callable[[], object]:
        async def receive() -> bytes | None:
            try:
                return await stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return None

        return receive

    client = H2Channel(c2s_send.send, client_side=True)
    server = H2Channel(s2c_send.send, client_side=False, on_request=handler, **server_options)  # type: ignore[arg-type]

    def cut() -> None:
        c2s_send.close()
        s2c_send.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run, receiver(s2c_recv))
        tg.start_soon(server.run, receiver(c2s_recv))
        yield client, server, cut
        cut()


def request(path: str = "/r/mcp") -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "https"), (":authority", "t"), (":path", path)]


async def read_all(stream: H2Stream) -> bytes:
    chunks = []
    while chunk := await stream.read():
        chunks.append(chunk)
    return b"".join(chunks)


async def echo_upper(stream: H2Stream) -> None:
    body = await read_all(stream)
    await stream.send_headers([(":status", "200")])
    await stream.send_data(body.upper(), end_stream=True)


@pytest.mark.anyio
async def test_concurrent_streams() -> None:
    async with channel_pair(echo_upper) as (client, _, _cut):
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            stream = client.open_stream(request())
            await stream.send_data(f"stream {i} ".encode() * 1000, end_stream=True)
            assert dict(await stream.response_headers())[":status"] == "200"
            results[i] = await read_all(stream)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
    assert results == {i: f"STREAM {i} ".encode() * 1000 for i in range(50)}


@pytest.mark.anyio
async def test_flow_control_bounds_what_a_slow_reader_buffers() -> None:
    sent = 0
    total = 8 * STREAM_WINDOW

    async def big(stream: H2Stream) -> None:
        nonlocal sent
        await read_all(stream)
        await stream.send_headers([(":status", "200")])
        piece = b"x" * 65536
        while sent < total:
            await stream.send_data(piece)
            sent += len(piece)
        await stream.end()

    async with channel_pair(big) as (client, _, _cut):
        stream = client.open_stream(request(), end_stream=True)
        await stream.response_headers()
        await anyio.sleep(0.5)  # the reader reads nothing for a while
        buffered = sum(len(data) for data, _ in stream._chunks)
        assert buffered <= STREAM_WINDOW
        assert sent <= 2 * STREAM_WINDOW  # the sender waits for window space
        assert len(await read_all(stream)) == total


@pytest.mark.anyio
async def test_other_streams_move_while_one_is_stalled() -> None:
    async def handler(stream: H2Stream) -> None:
        path = dict(stream.headers or [])[":path"]
        await read_all(stream)
        await stream.send_headers([(":status", "200")])
        if path == "/stalled/mcp":
            await stream.send_data(b"y" * (4 * STREAM_WINDOW), end_stream=True)
        else:
            await stream.send_data(b"ok", end_stream=True)

    async with channel_pair(handler) as (client, _, _cut):
        stalled = client.open_stream(request("/stalled/mcp"), end_stream=True)
        await stalled.response_headers()  # never read past the window
        with anyio.fail_after(5):
            for _ in range(20):
                quick = client.open_stream(request("/quick/mcp"), end_stream=True)
                assert await read_all(quick) == b"ok"
        stalled.reset()


@pytest.mark.anyio
async def test_a_cut_connection_fails_every_open_stream() -> None:
    handler_saw: list[BaseException] = []

    async def endless(stream: H2Stream) -> None:
        await read_all(stream)
        await stream.send_headers([(":status", "200")])
        try:
            while True:
                await stream.send_data(b"z" * 1000)
        except BaseException as exc:
            handler_saw.append(exc)
            raise

    async with channel_pair(endless) as (client, _, cut):
        streams = [client.open_stream(request(), end_stream=True) for _ in range(3)]
        for stream in streams:
            await stream.response_headers()
            await stream.read()
        cut()
        with anyio.fail_after(5):
            for stream in streams:
                with pytest.raises(ChannelClosed):
                    await read_all(stream)
        assert client.closed
        with pytest.raises(ChannelClosed):
            client.open_stream(request())
    assert handler_saw  # the server's handler was stopped too


@pytest.mark.anyio
async def test_a_reset_reaches_the_other_side() -> None:
    saw: list[BaseException] = []
    reset_seen = anyio.Event()

    async def endless(stream: H2Stream) -> None:
        await read_all(stream)
        await stream.send_headers([(":status", "200")])
        try:
            while True:
                await stream.send_data(b"z" * 1000)
        except StreamReset as exc:
            saw.append(exc)
            reset_seen.set()

    async with channel_pair(endless) as (client, _, _cut):
        stream = client.open_stream(request(), end_stream=True)
        await stream.read()
        stream.reset()
        with anyio.fail_after(5):
            await reset_seen.wait()
        assert isinstance(saw[0], StreamReset)


@pytest.mark.anyio
async def test_refusing_new_streams_lets_in_flight_ones_finish() -> None:
    release = anyio.Event()

    async def waits(stream: H2Stream) -> None:
        await read_all(stream)
        await release.wait()
        await stream.send_headers([(":status", "200")])
        await stream.send_data(b"done", end_stream=True)

    async with channel_pair(waits) as (client, server, _cut):
        in_flight = client.open_stream(request(), end_stream=True)
        await anyio.sleep(0.1)
        server.refuse_new_streams()
        with anyio.fail_after(5):
            while client.accepting:  # noqa: ASYNC110 - the channel offers no event for this
                await anyio.sleep(0.01)
        with pytest.raises(ChannelClosed, match="no new streams"):
            client.open_stream(request())
        release.set()
        assert await read_all(in_flight) == b"done"
        with anyio.fail_after(5):
            await server.settled()


# -- the command line -------------------------------------------------------------------------------


def test_cli_makes_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private, public = tmp_path / "signing.pem", tmp_path / "signing.pub.pem"
    assert main(["tunnel", "keygen", "--private", str(private), "--public", str(public)]) == 0
    assert private.stat().st_mode & 0o777 == 0o600
    assert main(["tunnel", "keygen", "--private", str(private), "--public", str(public)]) == 2
    capsys.readouterr()
    argv = ["tunnel", "token", "--key", str(private), "--connector", "dc", "--route", "tickets"]
    assert main(argv) == 0
    token = capsys.readouterr().out.strip()
    assert ConnectorKeys(public).verify(token).routes == {"tickets"}
    assert main(["tunnel", "caller", "bot", "--route", "tickets"]) == 0
    out = capsys.readouterr()
    caller_token = out.out.strip()
    line = out.err.strip().splitlines()[-1]
    (tmp_path / "callers").write_text(line + "\n")
    found = CallerTokens(tmp_path / "callers").authenticate(caller_token)
    assert found is not None
    assert found.name == "bot"
    assert found.routes == {"tickets"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["connect", "--edge", "wss://e/connect", "--route", "a=http://10.0.0.1/mcp"], "token"),
        (
            ["connect", "--edge", "ws://edge.example/connect", "--route", "a=http://10.0.0.1/mcp"],
            "wss://",
        ),
        (["connect", "--edge", "wss://e/connect", "--route", "a"], "NAME=URL"),
        (
            [
                "connect",
                "--edge",
                "wss://e/connect",
                "--route",
                "a=http://10.0.0.1/mcp",
                "--deny-tool",
                "b=x",
            ],
            "ROUTE=PATTERN",
        ),
        (
            ["edge", "--listen", "0.0.0.0:8443", "--connector-keys", "k", "--callers", "c"],
            "--tls-cert",
        ),
    ],
)
def test_cli_refuses_bad_options(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENT_SANDBOX_TUNNEL_TOKEN", raising=False)
    if argv[0] == "connect" and message != "token":
        monkeypatch.setenv("AGENT_SANDBOX_TUNNEL_TOKEN", "t")
    assert main(["tunnel", *argv]) == 2
    assert message in capsys.readouterr().err


def test_tunnel_is_not_imported_with_the_library() -> None:
    code = (
        "import sys, agent_sandbox, agent_sandbox.cli, agent_sandbox.tunnel\n"
        "heavy = [m for m in ('h2', 'websockets', 'uvicorn', 'jwt', 'agent_sandbox.tunnel.edge')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


@pytest.mark.anyio
async def test_a_reset_stops_a_handler_that_waits_on_something_else() -> None:
    """An abandoned event stream must not hold its upstream until the upstream speaks again."""
    stopped = anyio.Event()

    async def idle(stream: H2Stream) -> None:
        await read_all(stream)
        await stream.send_headers([(":status", "200")])
        try:
            await anyio.sleep_forever()  # an upstream with nothing to say
        finally:
            stopped.set()

    async with channel_pair(idle) as (client, _, _cut):
        stream = client.open_stream(request(), end_stream=True)
        await stream.response_headers()
        stream.reset()
        with anyio.fail_after(5):
            await stopped.wait()
