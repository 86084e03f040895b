"""The commit frontier: how far the consumer group may commit one input partition. Pure.

batchstream finishes events out of order by design: a malformed event is dead-lettered at
once while the good event before it waits in an open window; flex events finish whenever
the provider answers; windows of one partition (one per endpoint and model) seal
independently. The rule that keeps that safe:

    the committed offset of a partition never passes an event whose fate is not durable.

An event's fate is *durable* once its result or dead letter is confirmed written, or once
it belongs to a window whose ``sealed`` record is confirmed written (the state topic then
owns it), or once it is recognised as a replay of such a window. A :class:`Frontier` is
told when each event arrives and when its fate became durable, in any order, and answers
the one position that may be committed: the offset of the oldest event still open, or one
past the newest event when none is open.

A frontier lives for one assignment of its partition: on revocation it is closed and a
new one starts with the next assignment, so a late answer for an event of the previous
assignment (a flex call that was still running) can never move the new one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from streams.models import Request

__all__ = ["Frontier", "Pending"]


class Frontier:
    """Open and finished offsets of one input partition in one assignment."""

    __slots__ = ("_order", "_unfinished", "closed", "newest")

    def __init__(self) -> None:
        #: Offsets received and not yet passed, oldest first (Kafka delivers a partition in
        #: offset order; offsets may have gaps: compaction, transaction markers).
        self._order: deque[int] = deque()
        #: The offsets of ``_order`` whose fate is not durable yet.
        self._unfinished: set[int] = set()
        #: The newest offset received, or None before the first.
        self.newest: int | None = None
        self.closed = False

    def received(self, offset: int) -> bool:
        """An event was delivered; until :meth:`finished` the frontier cannot pass it.

        False (and nothing recorded) when the frontier is closed or the offset is not newer
        than the last one received: a second delivery within one assignment, to be ignored.
        """
        if self.closed or (self.newest is not None and offset <= self.newest):
            return False
        self.newest = offset
        self._order.append(offset)
        self._unfinished.add(offset)
        return True

    def finished(self, offset: int) -> None:
        """The event's fate is durable. Unknown or repeated offsets, and a closed frontier, are ignored."""
        if offset not in self._unfinished:
            return
        self._unfinished.discard(offset)
        order, unfinished = self._order, self._unfinished
        while order and order[0] not in unfinished:
            order.popleft()

    @property
    def position(self) -> int | None:
        """The offset the group may commit (the next to read after a restart); None before any event."""
        if self.closed:
            return None
        if self._order:
            return self._order[0]
        return None if self.newest is None else self.newest + 1

    @property
    def pending(self) -> int:
        """Events received whose fate is not durable yet."""
        return len(self._unfinished)

    def close(self) -> None:
        """The partition was revoked: nothing from here on may be committed through this frontier."""
        self.closed = True
        self._order.clear()
        self._unfinished.clear()


@dataclass(slots=True)
class Pending:
    """A request on its way to a window or a flex call, with the frontier to tell when its fate is durable."""

    request: Request
    #: The frontier of the assignment the event was delivered in (closed once it is revoked).
    frontier: Frontier
    #: Size of the request's JSONL line, computed once when the event is decoded.
    nbytes: int
