"""Bounded collection of a command's output."""

from __future__ import annotations


class CappedBuffer:
    """Keeps the first ``limit`` bytes written to it and counts the rest.

    Memory stays bounded by ``limit`` however much is written.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        """Add a chunk; whatever goes past the limit is dropped (and counted)."""
        self.total += len(data)
        room = self.limit - self._kept
        if room <= 0 or not data:
            return
        piece = data[:room]
        self._chunks.append(piece)
        self._kept += len(piece)

    @property
    def truncated(self) -> bool:
        """True when bytes were dropped."""
        return self.total > self._kept

    def getvalue(self) -> bytes:
        """The kept bytes."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""
