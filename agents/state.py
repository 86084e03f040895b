"""Durable window state, kept in Kafka: a compacted topic co-partitioned with the input.

Each sealed window is one record, keyed by its window id, written to the state partition
with the same number as the input partition its events came from. Whoever owns input
partition P therefore owns state partition P: after a restart or a rebalance the new owner
reads partition P of the state topic from the beginning and carries on with every window
not yet ``done``. A window record is small (an offset range, never the events): the input
topic itself is the durable copy of the events, re-read by offset when needed.

Record life: ``sealed`` (intent: about to be submitted) -> ``submitted`` (batch id known)
-> ``sealed`` again for a retry round of a subset of offsets -> ... -> ``done`` (every
event's result or dead letter flushed). A window past ``max_batch_latency`` goes
``submitted`` -> ``hedged`` (its finished part emitted, ``offsets`` = what flex still owes)
-> ``done``. ``done`` records stay until the group's committed
offset has passed the window, so a replay after a crash recognises the window's events and
skips them; then they are tombstoned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, model_validator

from agents.outbox import WRITE_RETRY_INITIAL, WRITE_RETRY_MAX
from agents.retry import retry_forever
from sinks.limits import SizeRefused
from sinks.transactions import Record
from streams.offsets import Frontier

log = logging.getLogger(__name__)

Status = Literal["sealed", "submitted", "hedged", "done"]


def runs(offsets: list[int]) -> list[tuple[int, int]]:
    """Sorted offsets as inclusive (first, last) runs: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for offset in sorted(offsets):
        if out and offset == out[-1][1] + 1:
            out[-1] = (out[-1][0], offset)
        else:
            out.append((offset, offset))
    return out


class WindowRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    window_id: str
    pipeline: str
    #: Whose window this is: a state topic may be shared (a pipeline re-pointed to another
    #: input topic, two consumer groups running the same pipeline name); others' records are ignored.
    input_topic: str | None = None
    group_id: str | None = None
    partition: int
    endpoint: str
    model: str
    first_offset: int
    last_offset: int
    count: int
    status: Status
    #: Attempt number of the current submission (1 = first).
    round: int = 1
    #: Offsets still pending in a retry round; None means every event of the window.
    offsets: list[int] | None = None
    #: The window's offsets as runs, when they are not the whole range (events of the same
    #: partition that went flex sit between them).
    members: list[tuple[int, int]] | None = None
    batch_id: str | None = None
    sealed_at: float
    submitted_at: float | None = None
    #: When the window was first submitted: ``max_batch_latency`` counts from here.
    first_submitted_at: float | None = None
    #: When the current round's create call started (None: no batch can exist for it).
    create_started_at: float | None = None
    #: The current round's uploaded input file (reused by a retried create, deleted at the end).
    input_file_id: str | None = None
    #: How many times the current round's requests have been tried, this round included. A
    #: resubmission of requests that never ran (their batch failed validation) is not a try.
    attempts: int = 1
    #: Batches of this window that failed as a whole (bounds bisection).
    failed_batches: int = 0
    #: Groups of offsets waiting for a round of their own, in order, each with the attempt
    #: number it will run as: halves of a bisected batch, and retries of failed requests.
    deferred: list[tuple[list[int], int]] = []
    #: Bytes of the window's request lines when it was sealed (sizes a round for the token quota
    #: without its requests in memory); None in records written before it was kept.
    nbytes: int | None = None
    #: What the window's requests were made with (``streams.models.task_of``): a read-back
    #: renders its events with it and its results carry its ``task_version``, whatever the
    #: pipeline's configuration says by then. None in records written before it was kept.
    task: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _attempts_of_older_records(cls, data: Any) -> Any:
        # Records written before ``attempts`` existed counted attempts in ``round``.
        if isinstance(data, dict) and "attempts" not in data and "round" in data:
            return {**data, "attempts": data["round"]}
        return data

    @property
    def owed(self) -> list[int] | None:
        """Every offset the window still owes a fate: the current round's and the deferred ones."""
        if not self.deferred:
            return self.offsets
        current = self.offsets or []
        return sorted([*current, *(o for group, _ in self.deferred for o in group)])

    @property
    def owed_now(self) -> list[int]:
        """The current round's offsets: ``offsets``, or every offset of the window."""
        if self.offsets is not None:
            return self.offsets
        spans = self.members or [(self.first_offset, self.last_offset)]
        return [offset for first, last in spans for offset in range(first, last + 1)]

    @property
    def round_bytes(self) -> int | None:
        """The current round's share of the window's request bytes (None when not recorded)."""
        if self.nbytes is None:
            return None
        if self.offsets is None or self.count == 0:
            return self.nbytes
        return self.nbytes * len(self.offsets) // self.count

    @property
    def tag(self) -> str:
        """What the batch's metadata carries to be found again: window and round."""
        return f"{self.window_id}#r{self.round}"

    def holds(self, offset: int) -> bool:
        """Whether the event at ``offset`` of the window's partition is one of its events (any
        round). By offset alone: the window keeps its exact members, whatever its events would
        render to under the pipeline's configuration now."""
        if not self.first_offset <= offset <= self.last_offset:
            return False
        return self.members is None or any(first <= offset <= last for first, last in self.members)

    def round_filter(self) -> Callable[[int], bool]:
        """A predicate: whether an offset belongs to the current round of this window."""
        pending = None if self.offsets is None else frozenset(self.offsets)
        return lambda offset: self.holds(offset) and (pending is None or offset in pending)

    def dumps(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    # -- transitions: each returns the next record; the ledger saves it --------------------
    def create_started(self, now: float, input_file_id: str | None) -> WindowRecord:
        """A create call for the current round is about to start: a batch may exist from here."""
        return self.model_copy(update={"create_started_at": now, "input_file_id": input_file_id})

    def submitted(self, batch_id: str, now: float) -> WindowRecord:
        return self.model_copy(update={
            "status": "submitted", "batch_id": batch_id, "submitted_at": now,
            "first_submitted_at": self.first_submitted_at or now,
        })  # fmt: skip

    def next_round(
        self, offsets: Iterable[int], now: float, *, attempts: int, same_round: bool = False, **update: object
    ) -> WindowRecord:
        """Sealed again for ``offsets``, to be tried as attempt ``attempts`` (``same_round`` when
        the provider refused the batch before it existed: the same batch tag)."""
        return self.model_copy(update={
            "status": "sealed", "batch_id": None, "round": self.round if same_round else self.round + 1,
            "attempts": attempts, "offsets": sorted(offsets), "sealed_at": now, "create_started_at": None,
            "input_file_id": None, **update,
        })  # fmt: skip

    def after_round(self, retry: Iterable[int], now: float) -> WindowRecord:
        """A round ended with its results written: the next deferred group, the retries, or done."""
        retry = sorted(retry)
        queue = list(self.deferred) + ([(retry, self.attempts + 1)] if retry else [])
        if not queue:
            return self.done()
        (offsets, attempts), rest = queue[0], queue[1:]
        return self.next_round(offsets, now, attempts=attempts, deferred=rest)

    def resubmitted(self, rest: Iterable[int], now: float) -> WindowRecord:
        """The batch failed validation naming some lines: ``rest`` (the round without them) again,
        not counted."""
        rest = sorted(rest)
        failed = self.model_copy(update={"failed_batches": self.failed_batches + 1})
        if not rest:
            return failed.after_round((), now)
        return failed.next_round(rest, now, attempts=self.attempts)

    def bisected(self, first: Iterable[int], second: Iterable[int], now: float) -> WindowRecord:
        """The batch failed with no line named: its halves as rounds of their own, not counted."""
        return self.next_round(first, now, attempts=self.attempts, failed_batches=self.failed_batches + 1,
                               deferred=[(sorted(second), self.attempts), *self.deferred])  # fmt: skip

    def hedged(self, offsets: Iterable[int]) -> WindowRecord:
        """Cancelled at ``max_batch_latency`` with its finished part emitted; ``offsets`` (and every
        deferred group) go flex."""
        owed = sorted({*offsets, *(o for group, _ in self.deferred for o in group)})
        return self.model_copy(update={"status": "hedged", "offsets": owed, "deferred": []})

    def done(self) -> WindowRecord:
        """Every event of the window has its result or dead letter written."""
        return self.model_copy(update={"status": "done", "offsets": None, "deferred": []})


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
        if record.status == "done" and record.first_offset > self.horizon:
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
        return [r for r in self.records.values() if r.status != "done"]

    def unpinned(self, offsets: Iterable[int]) -> list[int]:
        """The offsets outside every window not done: a mark inside one (a read-back's dead letter)
        stays while the window may read its events back, however far the committed offset is."""
        spans = [(r.first_offset, r.last_offset) for r in self.records.values() if r.status != "done"]
        return [o for o in offsets if not any(first <= o <= last for first, last in spans)]

    def forget_done_before(self, committed: int) -> list[bytes]:
        """Drop done records and served marks wholly below the committed offset; return their keys
        for tombstoning."""
        gone = [r for r in self.records.values() if r.status == "done" and r.last_offset < committed]
        for record in gone:
            del self.records[record.window_id]
        marks = self.unpinned(o for o in self.served if o < committed)
        passed = [key for last, key in self.finished if last < committed]
        self.finished = [(last, key) for last, key in self.finished if last >= committed]
        return [r.window_id.encode() for r in gone] + [self.served.pop(offset) for offset in marks] + passed


class StateBackend(Protocol):
    """Where window records are kept: the state topic (``agents/store.py``), or memory in tests.

    A transactional backend (``exactly_once``) writes a record together with the records that
    settle its events, in one transaction, and keeps served marks; otherwise the ledger
    flushes those records first and marks nothing.
    """

    group_id: str
    transactional: bool

    async def put(self, record: WindowRecord, records: list[Record] = ...) -> None: ...

    async def mark(self, partition: int, offsets: list[int], records: list[Record], *, linger: bool = ...) -> None: ...

    async def load(self, partitions: Iterable[int]) -> dict[int, PartitionState]: ...

    async def release(self, partitions: Iterable[int]) -> None: ...

    async def tombstone(self, partition: int, keys: list[bytes]) -> None: ...


class Unit(Protocol):
    """The records of one atomic write (an outbox unit: ``agents/outbox.py``)."""

    async def flush(self) -> None: ...

    def staged(self) -> list[Record]: ...

    async def refused(self, exc: SizeRefused) -> None: ...


class Ledger:
    """The window records of the partitions this worker owns: the state topic plus a local copy.

    ``save`` writes a record and waits for the broker's confirmation before it updates the
    local copy, so what the worker believes never runs ahead of what a successor would read.
    """

    def __init__(self, backend: StateBackend) -> None:
        self.backend = backend
        self.group_id = backend.group_id
        self._owned: dict[int, PartitionState] = {}

    async def load(self, partitions: Iterable[int]) -> list[WindowRecord]:
        """Take ownership of the partitions' records; return the windows not yet done."""
        states = await self.backend.load(partitions)
        self._owned.update(states)
        return [record for state in states.values() for record in state.unfinished()]

    def release(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._owned.pop(partition, None)

    async def prune(self, committed: dict[int, int]) -> None:
        """Tombstone the done windows (and loaded served marks) the committed offsets have passed:
        their events are never replayed, so their records are no longer needed. Best effort: what
        fails is tried again after the next commit, or at the next load."""
        for partition, offset in committed.items():
            state = self._owned.get(partition)
            keys = [] if state is None else state.forget_done_before(offset)
            if not keys:
                continue
            try:
                await self.backend.tombstone(partition, keys)
            except Exception as exc:  # noqa: BLE001 - the keys are tombstoned at the next load instead
                log.info("state of partition %d: tombstoning %d finished records failed: %s", partition, len(keys), exc)

    async def close(self, partitions: Iterable[int]) -> None:
        """After a revocation's tasks have stopped: the backend lets the partitions go too."""
        await self.backend.release(partitions)

    def owns(self, partition: int) -> bool:
        return partition in self._owned

    @property
    def partitions(self) -> set[int]:
        return set(self._owned)

    def covers(self, partition: int, offset: int) -> bool:
        """Whether the event is one of a recorded window (a replay to skip, however it decodes now)."""
        state = self._owned.get(partition)
        return state is not None and state.covers(offset)

    def unpinned(self, partition: int, offsets: Iterable[int]) -> list[int]:
        """The offsets outside every window of this partition not done yet."""
        state = self._owned.get(partition)
        return list(offsets) if state is None else state.unpinned(offsets)

    @property
    def transactional(self) -> bool:
        return bool(self.backend.transactional)

    def was_served(self, partition: int, offset: int) -> bool:
        """Whether the event's record was written in a transaction with its served mark (a replay to skip)."""
        state = self._owned.get(partition)
        return state is not None and state.was_served(offset)

    def served_in(self, record: WindowRecord) -> set[int]:
        """The window's offsets that already have their fate (a read-back's dead letters, marked)."""
        state = self._owned.get(record.partition)
        if state is None or not state.served:
            return set()
        return {o for o in state.served if record.first_offset <= o <= record.last_offset}

    async def save(self, record: WindowRecord, unit: Unit | None = None) -> WindowRecord:
        """Write the window's next record, with ``unit``'s records (written first, or in the same transaction)."""
        if self.transactional:
            try:
                await self.backend.put(record, unit.staged() if unit is not None else [])
            except SizeRefused as exc:
                if unit is not None:
                    await unit.refused(exc)  # the retried write stages only what fits
                raise
        else:
            if unit is not None:
                await unit.flush()
            await self.backend.put(record)
        state = self._owned.get(record.partition)
        if state is not None:
            state.put(record)
        return record

    async def mark(self, partition: int, offsets: list[int], unit: Unit, *, linger: bool = False) -> None:
        """Write ``unit``'s records, which give these events their fate; under ``exactly_once`` with a
        served mark for each, in one transaction, so that a replay skips them. ``linger``: the
        transaction may wait a moment for other writes to share it (a flex event: its call took
        far longer)."""
        if self.transactional:
            try:
                await self.backend.mark(partition, offsets, unit.staged(), linger=linger)
            except SizeRefused as exc:
                await unit.refused(exc)  # the retried write stages only what fits
                raise
        else:
            await unit.flush()

    async def mark_until_written(
        self, partition: int, offsets: list[int], unit: Unit, what: str, *, frontier: Frontier, linger: bool = False
    ) -> bool:  # fmt: skip
        """:meth:`mark`, retried until written (True: the caller finishes the events), or until
        the events' frontier is closed (False: revoked; the partition's next owner reads them
        again, and nothing may be written for them here any more)."""

        async def step() -> bool:
            if frontier.closed:
                return False
            await self.mark(partition, offsets, unit, linger=linger)
            return True

        return await retry_forever(step, what=f"{what}: writing its records", initial=WRITE_RETRY_INITIAL,
                                   maximum=WRITE_RETRY_MAX)  # fmt: skip
