"""The commit watermark of one partition: records settle out of order, the offset committed never passes one
that has not settled.

Kafka's committed offset means "everything before it is done". With several deliveries in
flight, record 7 may settle before record 5; committing 8 then would lose 5 and 6 after a
crash. So each fetched offset is tracked until it settles (delivered, or dead-lettered),
and the committable offset is one past the longest run of settled offsets from the oldest
one fetched. Offsets are those actually fetched, not counted: a topic may have gaps
(compaction, transaction markers).
"""
from __future__ import annotations

from collections import deque


class Watermark:
    """Fetched offsets of one partition, in order; `settle` says how far a commit may now go."""

    def __init__(self) -> None:
        self._fetched: deque[int] = deque()  # not yet passed by the watermark, in fetch order
        self._settled: set[int] = set()  # settled, but behind an unsettled one
        self.committable: int | None = None  # next offset to read after a restart; None until one settles

    def fetched(self, offset: int) -> None:
        if self._fetched and offset <= self._fetched[-1]:
            raise ValueError(f"offset {offset} fetched after {self._fetched[-1]}: a partition is read in order")
        self._fetched.append(offset)

    def settle(self, offset: int) -> int | None:
        """Mark `offset` settled; returns the new committable offset when the watermark moved, else None."""
        if offset not in self._fetched or offset in self._settled:
            raise ValueError(f"offset {offset} was not fetched, or is settled already")
        self._settled.add(offset)
        moved = False
        while self._fetched and self._fetched[0] in self._settled:
            done = self._fetched.popleft()
            self._settled.discard(done)
            self.committable, moved = done + 1, True
        return self.committable if moved else None

    @property
    def unsettled(self) -> int:
        return len(self._fetched) - len(self._settled)
