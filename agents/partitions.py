"""What one owned input partition's state topic says: its window records as last written, its
served marks, and which of its events a replay may repeat (the *horizon*). Pure."""

from __future__ import annotations

from collections.abc import Iterable

from streams.records import Status, WindowRecord


class PartitionState:
    """The window records of one input partition, as last written, and its served marks.

    Only events at or below the *horizon* (the highest offset of a window or mark loaded from
    the state topic) can be replays: the consumer never re-delivers within one assignment, and
    a new assignment loads the state again. So a window finished in this assignment above
    the horizon is forgotten at once, and memory stays bounded by the windows in flight.

    A *served mark* (``exactly_once`` only) says that one event's result or dead letter is
    written, in the same transaction: a replayed flex event or intake dead letter is skipped,
    never served again.
    """

    def __init__(self, partition: int, records: Iterable[WindowRecord] = ()) -> None:
        self.partition = partition
        self.records: dict[str, WindowRecord] = {r.window_id: r for r in records}
        #: Served marks loaded from the state topic: offset -> the mark's key.
        self.served: dict[int, bytes] = {}
        self.horizon = -1
        #: Windows finished in this assignment and forgotten at once: (last offset, key), to be
        #: tombstoned once the committed offset passes them (the state topic does not grow with uptime).
        self.finished: list[tuple[int, bytes]] = []

    def loaded(self) -> None:
        """Everything from the state topic is in: fix the replay horizon."""
        self.horizon = max(max((r.last_offset for r in self.records.values()), default=-1),
                           max(self.served, default=-1))  # fmt: skip

    def put(self, record: WindowRecord) -> None:
        if record.status == Status.DONE and record.first_offset > self.horizon:
            self.records.pop(record.window_id, None)
            self.finished.append((record.last_offset, record.window_id.encode()))
        else:
            self.records[record.window_id] = record

    def covers(self, offset: int) -> bool:
        if offset > self.horizon:
            return False
        return any(r.holds(offset) for r in self.records.values())

    def was_served(self, offset: int) -> bool:
        return offset <= self.horizon and offset in self.served

    def unfinished(self) -> list[WindowRecord]:
        return [r for r in self.records.values() if r.status != Status.DONE]

    def unpinned(self, offsets: Iterable[int]) -> list[int]:
        """The offsets outside every window not done: a mark inside one (a read-back's dead letter)
        stays while the window may read its events back, however far the committed offset is."""
        spans = [(r.first_offset, r.last_offset) for r in self.records.values() if r.status != Status.DONE]
        return [o for o in offsets if not any(first <= o <= last for first, last in spans)]

    def forget_done_before(self, committed: int) -> list[bytes]:
        """Drop done records and served marks wholly below the committed offset; return their keys
        for tombstoning."""
        gone = [r for r in self.records.values() if r.status == Status.DONE and r.last_offset < committed]
        for record in gone:
            del self.records[record.window_id]
        marks = self.unpinned(o for o in self.served if o < committed)
        passed = [key for last, key in self.finished if last < committed]
        self.finished = [(last, key) for last, key in self.finished if last >= committed]
        return [r.window_id.encode() for r in gone] + [self.served.pop(offset) for offset in marks] + passed
