"""The agent client against a hostile agent: every frame from the sandbox is attacker-controlled.

The transport here is a stand-in for the engine's attach stream that delivers bytes an attacker
wrote (a replaced agent, or code writing into its stream); the client code under test is the real
one. Each case must end in ``ProviderError`` (never a hang, a crash or unbounded memory), and
frames for ids the client never used must not reach any process.
"""

from __future__ import annotations

import struct
from typing import Any

import anyio
import pytest
from agent_sandbox_docker._agent import MAX_PAYLOAD, WINDOW, AgentConnection, frame

from agent_sandbox.errors import ProviderError, SandboxNotFound
from agent_sandbox.models import StartOptions

pytestmark = pytest.mark.anyio
REF = b"p-0123456789abcdef"
HELLO = frame("H", 0, struct.pack(">HI", 1, 1))


class Scripted:
    """Delivers ``replies`` one by one as the agent's stdout, then ends; records what was sent."""

    def __init__(self, *replies: bytes) -> None:
        self.replies = list(replies)
        self.sent = b""
        self.closed = False

    async def frames(self) -> list[tuple[str, bytes]] | None:
        await anyio.lowlevel.checkpoint()
        return [("stdout", self.replies.pop(0))] if self.replies else None

    async def send(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


async def connect(*replies: bytes) -> tuple[AgentConnection, Scripted]:
    stream = Scripted(HELLO, *replies)
    conn = AgentConnection(stream, "sandbox-under-test")  # type: ignore[arg-type]
    await conn.handshake(5)
    return conn, stream


async def run(*replies: bytes) -> Any:
    conn, _ = await connect(*replies)
    with anyio.fail_after(5):
        proc = await conn.start(["true"], StartOptions())
        while await proc.read() is not None:
            pass
        return await proc.wait()


async def test_a_well_behaved_exchange() -> None:
    status = await run(
        frame("P", 1, b"\0\0\0\x07" + REF),
        frame("1", 1, b"out"),
        frame("X", 1, struct.pack(">IB", 3, 0)),
    )
    assert (status.exit_code, status.signal) == (3, None)


@pytest.mark.parametrize(
    ("replies", "message"),
    [
        ([struct.pack(">I", 0xFFFFFFFF) + b"x" * 16], "frame length"),
        ([struct.pack(">I", 4) + b"xxxxxxxx"], "frame length"),
        ([frame("P", 1, b"\0\0\0\x07../../etc")], "bad start reply"),
        ([frame("P", 77, b"\0\0\0\x07" + REF)], "unknown id 77"),
        ([frame("P", 1, b"\0\0\0\x07" + REF), frame("1", 1, b"x" * (WINDOW + 1))], "window"),
        ([frame("P", 1, b"\0\0\0\x07" + REF), frame("X", 1, struct.pack(">IB", 999, 0))], "exit"),
        ([frame("P", 1, b"\0\0\0\x07" + REF), frame("X", 1, struct.pack(">IB", 0, 200))], "signal"),
        ([frame("P", 1, b"\0\0\0\x07" + REF), frame("G", 1, struct.pack(">I", 1 << 30))], "credit"),
        ([frame("P", 1, b"\0\0\0\x07" + REF), frame("?", 1, b"")], "unexpected"),
    ],
)
async def test_hostile_frames_end_in_provider_error(replies: list[bytes], message: str) -> None:
    with pytest.raises(ProviderError, match=message):
        await run(*replies)


async def test_a_frame_cut_short_by_the_end_of_the_stream_is_the_sandbox_ending() -> None:
    with pytest.raises(SandboxNotFound):
        await run(frame("P", 1, b"\0\0\0\x07" + REF)[:-3])


async def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    conn, stream = await connect(struct.pack(">I", MAX_PAYLOAD + 6) + b"x" * 64)
    with pytest.raises(ProviderError, match="frame length"):
        await conn.start(["true"], StartOptions())
    assert stream.closed


async def test_refusal_of_this_client_is_a_clear_error() -> None:
    stream = Scripted(frame("N", 0, b"the sandbox's exec agent speaks protocol 2"))
    conn = AgentConnection(stream, "sandbox-under-test")  # type: ignore[arg-type]
    with pytest.raises(ProviderError, match=r"refused this client: .*protocol 2"):
        await conn.handshake(5)


async def test_file_reads_are_bounded_by_what_was_asked() -> None:
    conn, _ = await connect(frame("D", 1, b"x" * 11), frame("Z", 1))
    with pytest.raises(ProviderError, match="more data than asked"):
        await conn.read_file("/etc/hostname", 10)


async def test_process_list_entries_are_validated() -> None:
    entry = struct.pack(">BBhQHH", 1, 0, -1, 0, 4, 0) + b"evil"
    conn, _ = await connect(frame("L", 1, entry))
    with pytest.raises(ProviderError, match="bad process entry"):
        await conn.processes()
