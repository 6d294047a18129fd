# The polling loops watch other processes' effects (audit files, logs): no event to await.
# ruff: noqa: ASYNC110
"""The MCP tunnel end to end, on loopback, as real processes: an MCP client (the ``mcp`` SDK)
calls MCP servers (the ``mcp`` SDK) through ``agent-sandbox tunnel edge`` and
``agent-sandbox tunnel connect``, over TLS with a throwaway CA.

Most checks share one tunnel (module scope); the tests that kill, restart or drain processes
get their own.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("mcp", reason="the tests drive the tunnel with the mcp SDK (mcp extra)")
pytest.importorskip("h2", reason="the MCP tunnel needs the tunnel extra")

from mcp.shared.exceptions import MCPError
from tunnel_support import Tunnel, events, tunnel

from agent_sandbox.audit import verify_chain

pytestmark = pytest.mark.anyio

MiB = 1 << 20


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def text(result: Any) -> str:
    return "".join(block.text for block in result.content if block.type == "text")


def hwm_kib(pid: int) -> int:
    """The peak resident memory of a process so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def connect_error(t: Tunnel, route: str, **options: Any) -> MCPError:
    """The error an MCP client meets connecting to ``route`` (the SDK raises it in a group)."""
    try:
        async with t.client(route, **options) as client:
            await client.list_tools()
    except BaseException as exc:
        error: BaseException = exc
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if isinstance(error, MCPError):
            return error
        raise
    raise AssertionError(f"connecting to {route!r} succeeded")


def records(path: Path, **match: Any) -> list[dict[str, Any]]:
    """Audit records whose fields (or ``arguments`` fields) equal ``match``."""
    found = []
    for event in events(path):
        fields = {**(event.get("arguments") or {}), **(event.get("result") or {}), **event}
        if all(fields.get(k) == v for k, v in match.items()):
            found.append(event)
    return found


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Tunnel]:
    async with tunnel(tmp_path_factory.mktemp("tunnel")) as t:
        json_url = await t.upstream(json_response=True)
        sse_url = await t.upstream(json_response=False)
        redirect_url = await t.upstream(redirect=True)
        await t.start_edge("--max-request-bytes", str(MiB))
        routes = {
            "json": json_url,
            "sse": sse_url,
            "redirect": redirect_url,
            "outside": "http://198.51.100.7:8000/mcp",
            "metadata": "http://169.254.169.254/mcp",
        }
        await t.start_connector(
            routes,
            "--allow-loopback",
            "--deny-tool",
            "sse=delete_*",
            "--deny-method",
            "sse=prompts/*",
            "--max-response-bytes",
            str(24 * MiB),  # a 10 MiB text result is ~20 MiB of JSON (content + structured)
        )
        yield t


# -- carrying MCP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["json", "sse"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_list_and_call_tools(shared: Tunnel, route: str, mode: str) -> None:
    async with shared.client(route, mode=mode) as client:
        listed = await client.list_tools()
        assert {"echo", "add", "big", "slow", "delete_everything"} <= {t.name for t in listed.tools}
        assert text(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        assert text(await client.call_tool("echo", {"text": "héllo ✓"})) == "héllo ✓"


async def test_session_id_passes_through_for_older_servers(shared: Tunnel) -> None:
    async with shared.client("json", mode="legacy") as client:
        await client.call_tool("echo", {"text": "session"})
    calls = records(shared.connector_audit, op="tunnel.exchange", route="json", tool="echo")
    session = calls[-1]["arguments"]["session"]
    assert session is not None  # the upstream's Mcp-Session-Id came back and went out again
    edge_side = records(shared.edge_audit, call_id=calls[-1]["call_id"])
    assert edge_side[0]["arguments"]["session"] == session


async def test_every_exchange_is_audited_on_both_sides(shared: Tunnel) -> None:
    async with shared.client("sse") as client:
        await client.call_tool("echo", {"text": "audited"})
    connector = records(shared.connector_audit, op="tunnel.exchange", tool="echo", route="sse")[-1]
    [edge] = records(shared.edge_audit, call_id=connector["call_id"])
    for record in (connector, edge):
        assert record["op"] == "tunnel.exchange"
        assert record["tool"] == "echo"
        assert record["decision"] == "allow"
        assert record["arguments"]["route"] == "sse"
        assert record["arguments"]["mcp_method"] == "tools/call"
        assert record["arguments"]["caller"] == "agent"
        assert record["result"]["status"] == 200
        assert record["duration_ms"] > 0
    assert connector["result"]["request_bytes"] == edge["result"]["request_bytes"] > 0
    assert connector["result"]["response_bytes"] == edge["result"]["response_bytes"] > 0
    for path in (shared.connector_audit, shared.edge_audit):
        report = verify_chain(path)
        assert report.ok, report


# -- refusals -------------------------------------------------------------------------------------


async def raw_post(
    t: Tunnel, route: str, headers: dict[str, str], body: Any = None
) -> httpx.Response:
    message = body or {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient(verify=t.ssl_context(), timeout=30) as http:
        return await http.post(
            f"{t.edge_url}/{route}/mcp",
            json=message,
            headers={"Accept": "application/json, text/event-stream", **headers},
        )


async def test_caller_without_a_valid_token_is_refused(shared: Tunnel) -> None:
    missing = await raw_post(shared, "json", {})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    error = missing.json()
    assert error["id"] is None  # an unauthenticated caller's body is not even read
    assert error["error"]["data"]["reason"] == "caller_unauthenticated"
    wrong = await raw_post(shared, "json", {"Authorization": "Bearer not-a-caller-token"})
    assert wrong.status_code == 401
    error = await connect_error(shared, "json", token="not-a-caller-token")
    assert error.data["reason"] == "caller_unauthenticated"
    assert "caller bearer token" in error.message
    denied = records(shared.edge_audit, op="tunnel.exchange", reason="caller_unauthenticated")
    assert len(denied) >= 3
    assert all(r["decision"] == "deny" and r["result"]["status"] == 401 for r in denied)
    assert "not-a-caller-token" not in shared.edge_audit.read_text()


async def test_route_not_configured_is_refused(shared: Tunnel) -> None:
    error = await connect_error(shared, "nowhere")
    assert error.message == "no route 'nowhere'"
    assert error.data == {"reason": "route_not_found", "status": 404}
    [record, *_] = records(shared.edge_audit, route="nowhere")
    assert record["decision"] == "deny"
    assert record["result"] == {**record["result"], "status": 404, "reason": "route_not_found"}


@pytest.mark.parametrize(
    ("route", "why"),
    [("outside", "outside the allowed networks"), ("metadata", "link-local")],
)
async def test_upstream_outside_the_allowed_networks_is_refused(
    shared: Tunnel, route: str, why: str
) -> None:
    error = await connect_error(shared, route)
    assert why in error.message
    assert error.data["reason"] == "upstream_refused"
    [record, *_] = records(shared.connector_audit, op="tunnel.exchange", route=route)
    assert record["decision"] == "deny"
    assert record["result"]["reason"] == "upstream_refused"
    assert record["result"]["status"] == 502


async def test_denied_tool_and_method(shared: Tunnel) -> None:
    async with shared.client("sse") as client:
        with pytest.raises(MCPError, match="'delete_everything' is denied") as caught:
            await client.call_tool("delete_everything", {})
        assert caught.value.data["reason"] == "tool_denied"
        with pytest.raises(MCPError, match="'prompts/list' is denied"):
            await client.list_prompts()
        assert text(await client.call_tool("add", {"a": 1, "b": 1})) == "2"  # others still pass
    [record] = records(shared.connector_audit, op="tunnel.exchange", tool="delete_everything")
    assert record["decision"] == "deny"
    assert record["result"]["reason"] == "tool_denied"
    [edge] = records(shared.edge_audit, call_id=record["call_id"])
    assert edge["result"]["status"] == 403
    # The same tool on a route without the rule is served.
    async with shared.client("json") as client:
        assert text(await client.call_tool("delete_everything", {})) == "deleted nothing"


async def test_redirects_are_not_followed(shared: Tunnel) -> None:
    error = await connect_error(shared, "redirect")
    assert "redirected" in error.message
    [record, *_] = records(shared.connector_audit, op="tunnel.exchange", route="redirect")
    assert record["result"]["reason"] == "upstream_redirect"


async def test_size_limits(shared: Tunnel) -> None:
    async with shared.client("json") as client:
        with pytest.raises(MCPError, match="exceeds") as caught:
            await client.call_tool("echo", {"text": "x" * (2 * MiB)})
        assert caught.value.data["reason"] == "request_too_large"
        with pytest.raises(MCPError, match="exceeds") as caught:
            await client.call_tool("big", {"size": 13 * MiB})
        assert caught.value.data["reason"] == "response_too_large"
    async with shared.client("sse") as client:
        # Over SSE the limit is hit mid-stream: the stream is cut and the call fails.
        with pytest.raises(MCPError):
            await client.call_tool("big", {"size": 13 * MiB})
        assert text(await client.call_tool("add", {"a": 2, "b": 2})) == "4"
    cut = records(shared.connector_audit, route="sse", tool="big", reason="response_too_large")
    assert cut


# -- load ------------------------------------------------------------------------------------------


async def test_100_concurrent_calls(shared: Tunnel) -> None:
    results: dict[int, str] = {}
    async with shared.client("sse") as sse, shared.client("json") as plain:

        async def call(i: int) -> None:
            client = sse if i % 2 else plain
            results[i] = text(await client.call_tool("echo", {"text": f"call-{i}"}))

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(call, i)
    assert results == {i: f"call-{i}" for i in range(100)}


@pytest.mark.parametrize("route", ["json", "sse"])
async def test_10_mib_response_streams_with_bounded_memory(shared: Tunnel, route: str) -> None:
    assert shared.edge is not None
    assert shared.connector is not None
    async with shared.client(route, timeout=120) as client:
        warm = await client.call_tool("big", {"size": MiB})
        assert len(text(warm)) == MiB
        before = {p.pid: hwm_kib(p.pid) for p in (shared.edge, shared.connector)}
        result = await client.call_tool("big", {"size": 10 * MiB})
        assert text(result) == "x" * (10 * MiB)
    grown = {pid: hwm_kib(pid) - kib for pid, kib in before.items()}
    # Whole, the response would be 10 MiB in each process (more with copies); streamed, each
    # holds at most a flow-control window of it at a time.
    assert all(kib < 5 * 1024 for kib in grown.values()), grown


# -- connector credentials ---------------------------------------------------------------------------


async def test_connector_tokens_refused_then_rotated_without_restart(tmp_path: Path) -> None:
    from agent_sandbox.tunnel import generate_signing_key, mint_token

    async with tunnel(tmp_path) as t:
        url = await t.upstream(json_response=True)
        await t.start_edge()
        stranger, _ = generate_signing_key()
        forged = mint_token(stranger, connector="intruder", routes=["json"])
        await t.start_connector({"json": url}, "--allow-loopback", token=forged, wait=False)

        async def refused(reason: str) -> dict[str, Any]:
            with anyio.fail_after(20):
                while True:
                    for record in records(t.edge_audit, op="tunnel.connect", decision="deny"):
                        if reason in json.dumps(record):
                            return record
                    await anyio.sleep(0.05)

        record = await refused("connector_unauthenticated")
        assert record["result"]["status"] == 401
        assert "known key" in t.log("connector")
        dials = records(t.connector_audit, op="tunnel.dial", decision="deny")
        assert dials
        assert dials[0]["result"]["status"] == 401

        t.token_file.write_text(t.mint(["json"], ttl=60, now=time.time() - 3600))
        with anyio.fail_after(20):
            while "expired" not in t.log("connector"):
                await anyio.sleep(0.05)

        t.token_file.write_text(t.mint(["other"]))  # valid, but not for this route
        record = await refused("route_not_granted")
        assert record["arguments"]["connector"] == "test-connector"
        assert record["result"]["status"] == 403

        seen = len(events(t.connector_audit))
        t.token_file.write_text(t.mint(["json"]))  # rotated: the same process connects
        await t.wait_connected(2, since=seen)
        accepted = records(t.edge_audit, op="tunnel.connect", decision="allow")
        assert accepted[-1]["arguments"]["connector"] == "test-connector"
        async with t.client("json") as client:
            assert text(await client.call_tool("add", {"a": 1, "b": 2})) == "3"
        assert forged not in t.edge_audit.read_text()
        assert forged not in t.connector_audit.read_text()


# -- failures and shutdown ---------------------------------------------------------------------------


async def test_edge_killed_mid_stream_then_reconnect(tmp_path: Path) -> None:
    async with tunnel(tmp_path) as t:
        url = await t.upstream(json_response=False)
        edge = await t.start_edge()
        await t.start_connector({"sse": url}, "--allow-loopback")
        async with t.client("sse") as client:
            progressed = anyio.Event()

            async def progress(done: float, total: float | None, message: str | None) -> None:
                progressed.set()

            failure: list[BaseException] = []

            async def call() -> None:
                try:
                    await client.call_tool("slow", {"seconds": 30}, progress_callback=progress)
                except MCPError as exc:
                    failure.append(exc)

            with anyio.fail_after(30):  # never hangs
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await progressed.wait()
                    edge.kill()
            assert failure, "the in-flight call did not fail"

            await edge.wait()
            seen = len(events(t.connector_audit))
            await t.start_edge(audit=tmp_path / "edge-audit-2.jsonl")
            await t.wait_connected(2, since=seen)
            assert text(await client.call_tool("add", {"a": 3, "b": 4})) == "7"

            # The other way round: the connector dies mid-stream; the edge cuts the response.
            failure.clear()
            progressed = anyio.Event()
            assert t.connector is not None
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await progressed.wait()
                    t.connector.kill()
            assert failure, "the in-flight call did not fail"
            assert records(tmp_path / "edge-audit-2.jsonl", tool="slow", reason="tunnel_lost")

        # The connector noticed the exchange the first edge took down with it, and says so.
        assert records(t.connector_audit, tool="slow", reason="tunnel_lost")


async def test_keepalive_detects_a_silent_edge(tmp_path: Path) -> None:
    """A stopped edge keeps its TCP connections open: only the pings can tell it is gone."""
    async with tunnel(tmp_path) as t:
        url = await t.upstream(json_response=True)
        edge = await t.start_edge("--ping-interval", "1")
        await t.start_connector({"json": url}, "--allow-loopback", "--ping-interval", "1")
        edge.send_signal(signal.SIGSTOP)
        try:
            with anyio.fail_after(20):
                while len(records(t.connector_audit, op="tunnel.disconnect")) < 2:
                    await anyio.sleep(0.1)
        finally:
            edge.send_signal(signal.SIGCONT)
        [closed, *_] = records(t.connector_audit, op="tunnel.disconnect")
        assert "ping" in closed["result"]["reason"]
        seen = len(events(t.connector_audit))
        await t.wait_connected(2, since=seen)
        async with t.client("json") as client:
            assert text(await client.call_tool("add", {"a": 1, "b": 1})) == "2"


async def test_drain_on_sigterm_lets_in_flight_calls_finish(tmp_path: Path) -> None:
    async with tunnel(tmp_path) as t:
        url = await t.upstream(json_response=False)
        edge = await t.start_edge()
        connector = await t.start_connector({"sse": url}, "--allow-loopback")
        async with t.client("sse") as client:
            await client.list_tools()  # cached: a result is checked against the listing
            # The connector drains: the running call completes, then it exits.
            async with anyio.create_task_group() as tg:
                progressed = anyio.Event()

                async def progress(done: float, total: float | None, message: str | None) -> None:
                    progressed.set()

                async def call() -> None:
                    result = await client.call_tool(
                        "slow", {"seconds": 1.5}, progress_callback=progress
                    )
                    assert text(result) == "slept 1.5"

                tg.start_soon(call)
                await progressed.wait()
                connector.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                assert await connector.wait() == 0
            with pytest.raises(MCPError, match="no connector right now") as caught:
                await client.call_tool("add", {"a": 1, "b": 1})
            assert caught.value.data["status"] == 503

            # The edge drains too.
            seen = len(events(t.connector_audit))
            await t.start_connector({"sse": url}, "--allow-loopback", wait=False)
            await t.wait_connected(2, since=seen)
            async with anyio.create_task_group() as tg:
                progressed = anyio.Event()
                tg.start_soon(call)
                await progressed.wait()
                edge.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                assert await edge.wait() == 0
