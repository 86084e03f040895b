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
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import BaseModel, ConfigDict, model_validator

from streams.models import Request

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

    def covers(self, request: Request) -> bool:
        """Whether the request is one of this window's events (any round)."""
        offset = request.source.offset
        if not (
            self.endpoint == request.endpoint and self.model == request.model
            and self.first_offset <= offset <= self.last_offset
        ):  # fmt: skip
            return False
        return self.members is None or any(first <= offset <= last for first, last in self.members)

    def round_filter(self) -> Callable[[Request], bool]:
        """A predicate: whether a request belongs to the current round of this window."""
        pending = None if self.offsets is None else frozenset(self.offsets)
        return lambda request: self.covers(request) and (pending is None or request.source.offset in pending)

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
    """The window records of one input partition, as last written.

    Only events at or below the *horizon* (the highest offset of a window loaded from the
    state topic) can be replays: the consumer never re-delivers within one assignment, and
    a new assignment loads the state again. So a window finished in this assignment above
    the horizon is forgotten at once, and memory stays bounded by the windows in flight.
    """

    def __init__(self, partition: int, records: Iterable[WindowRecord] = ()) -> None:
        self.partition = partition
        self.records: dict[str, WindowRecord] = {r.window_id: r for r in records}
        self.horizon = -1

    def loaded(self) -> None:
        """Everything from the state topic is in: fix the replay horizon."""
        self.horizon = max((r.last_offset for r in self.records.values()), default=-1)

    def put(self, record: WindowRecord) -> None:
        if record.status == "done" and record.first_offset > self.horizon:
            self.records.pop(record.window_id, None)
        else:
            self.records[record.window_id] = record

    def covers(self, request: Request) -> bool:
        if request.source.offset > self.horizon:
            return False
        return any(r.covers(request) for r in self.records.values())

    def unfinished(self) -> list[WindowRecord]:
        return [r for r in self.records.values() if r.status != "done"]

    def forget_done_before(self, committed: int) -> list[WindowRecord]:
        """Drop done records wholly below the committed offset; return them for tombstoning."""
        gone = [r for r in self.records.values() if r.status == "done" and r.last_offset < committed]
        for record in gone:
            del self.records[record.window_id]
        return gone


class StateBackend(Protocol):
    """Where window records are kept: the state topic (:class:`StateStore`), or memory in tests."""

    group_id: str

    async def put(self, record: WindowRecord) -> None: ...

    async def load(self, partitions: Iterable[int]) -> dict[int, PartitionState]: ...


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

    def owns(self, partition: int) -> bool:
        return partition in self._owned

    @property
    def partitions(self) -> set[int]:
        return set(self._owned)

    def covers(self, request: Request) -> bool:
        """Whether the request is an event of a recorded window (a replay to skip)."""
        state = self._owned.get(request.source.partition)
        return state is not None and state.covers(request)

    async def save(self, record: WindowRecord) -> WindowRecord:
        await self.backend.put(record)
        state = self._owned.get(record.partition)
        if state is not None:
            state.put(record)
        return record


class StateStore:
    """Writes window records through the faust producer; reads them back with aiokafka."""

    def __init__(
        self, topic: faust.TopicT, *, input_topic: str, bootstrap: str, group_id: str, **kafka: object
    ) -> None:
        self.topic = topic
        self.input_topic = input_topic
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.kafka = kafka

    async def put(self, record: WindowRecord) -> None:
        """Write a record and wait until the broker has it (acks=all)."""
        fut = await self.topic.send(key=record.window_id.encode(), value=record.dumps(), partition=record.partition)
        await fut

    async def tombstone(self, records: Iterable[WindowRecord]) -> None:
        futures = [await self.topic.send(key=r.window_id.encode(), value=None, partition=r.partition) for r in records]
        for fut in futures:
            await fut

    async def load(self, partitions: Iterable[int]) -> dict[int, PartitionState]:
        """Read the given state partitions to their end; garbage-collect finished windows."""
        partitions = sorted(set(partitions))
        if not partitions:
            return {}
        topic_name = self.topic.get_topic_name()
        tps = [TopicPartition(topic_name, p) for p in partitions]
        latest: dict[bytes, bytes | None] = {}
        started = time.monotonic()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, **self.kafka)
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if end[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for messages in batch.values():
                    for message in messages:
                        if message.key is not None:
                            latest[message.key] = message.value
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        states = {p: PartitionState(p) for p in partitions}
        foreign = 0
        for value in latest.values():
            if value is None:
                continue
            record = WindowRecord.model_validate(orjson.loads(value))
            if (record.input_topic, record.group_id) != (self.input_topic, self.group_id):
                foreign += 1
            elif record.partition in states:
                # Kept as read, not through put(): the horizon is not fixed yet (-1), and put()
                # would drop every done window, which must stay to recognise its replayed events
                # until the committed offset passes it (forget_done_before, below).
                states[record.partition].records[record.window_id] = record
        if foreign:
            log.info("state topic %s: ignored %d windows of other input topics or groups", topic_name, foreign)
        committed = await self.committed_offsets(partitions)
        stale: list[WindowRecord] = []
        for p, state in states.items():
            stale.extend(state.forget_done_before(committed.get(p, -1)))
            state.loaded()
        if stale:
            await self.tombstone(stale)
        log.info(
            "loaded state of partitions %s in %.2fs: %d unfinished windows",
            partitions, time.monotonic() - started, sum(len(s.unfinished()) for s in states.values()),
        )  # fmt: skip
        return states

    async def committed_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The consumer group's committed offsets of the input topic's partitions."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.kafka)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.group_id)
        finally:
            await admin.close()
        wanted = set(partitions)
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self.input_topic and tp.partition in wanted and meta.offset >= 0
        }
