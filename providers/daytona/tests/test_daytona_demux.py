"""The log-stream demultiplexer: any output, cut anywhere, comes back whole and on its stream."""

from __future__ import annotations

from itertools import pairwise

from agent_sandbox_daytona.backend import STDERR_PREFIX, STDOUT_PREFIX, _Demux
from hypothesis import given
from hypothesis import strategies as st

# Daytona's framing is ambiguous for output holding a marker, or ending in marker bytes right
# before the other stream's marker; such output is excluded (and documented as a limit).
chunk = st.binary(min_size=1, max_size=40).filter(
    lambda b: STDOUT_PREFIX not in b and STDERR_PREFIX not in b and b[-1:] not in (b"\x01", b"\x02")
)
pieces = st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), chunk), max_size=12)


@given(pieces=pieces, cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=10))
def test_demux_round_trip(pieces: list[tuple[str, bytes]], cuts: list[int]) -> None:
    wire = b"".join((STDOUT_PREFIX if k == "stdout" else STDERR_PREFIX) + d for k, d in pieces)
    points = sorted({c for c in cuts if c < len(wire)} | {0, len(wire)})
    demux = _Demux()
    got: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for start, end in pairwise(points):
        for kind, data in demux.feed(wire[start:end]):
            got[kind] += data
    for kind, data in demux.feed(b"", final=True):
        got[kind] += data
    for kind in ("stdout", "stderr"):
        assert got[kind] == b"".join(d for k, d in pieces if k == kind)
