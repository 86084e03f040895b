"""Where window records are kept: the pipeline's state topic.

:class:`StateStore` (``at_least_once``) writes each record through the pipeline's writer
(``sinks/base.py``, the one its results and dead letters go through) and waits for the
broker's acks; :class:`TransactionalStore` (``exactly_once``) writes each record in a
transaction of its input partition's producer (``sinks/transactions.py``), with the results
and dead letters that settle its events, and keeps a *served mark* for every event settled
on its own (a flex event, an intake dead letter), so that a replay skips it. Both read a
partition's records back from the beginning when it is assigned, through the project's topic
reader (``streams/topics.py``; ``read_committed`` under ``exactly_once``: an aborted
transaction's records are never seen).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import orjson

from agents.partitions import PartitionState
from sinks.base import Outgoing, Writer
from sinks.transactions import Transactions
from streams.records import WindowRecord
from streams.topics import TopicReader

log = logging.getLogger(__name__)


class StateStore:
    """Writes window records through the pipeline's writer and reads them back (``at_least_once``)."""

    transactional = False
    #: Loads read to the high watermark, not the last stable offset (:class:`TransactionalStore`).
    to_high_watermark = False

    def __init__(
        self, topic: str, *, writer: Writer | None = None, pipeline: str, input_topic: str, bootstrap: str,
        group_id: str, **kafka: object,
    ) -> None:  # fmt: skip
        self.topic_name = topic
        #: Where records are written: the pipeline's writer, or its transactions (``exactly_once``).
        self.writer = writer
        #: A state topic may be shared: only this pipeline's records (of its input topic and group) are its own.
        self.pipeline = pipeline
        self.input_topic = input_topic
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.kafka = kafka

    async def put(self, record: WindowRecord, records: list[Outgoing] = []) -> None:  # noqa: B006 - never mutated
        """Write a record and wait until the broker has it (acks=all); ``records`` are flushed by the ledger."""
        assert self.writer is not None
        await self.writer.put([(self.topic_name, record.partition, record.window_id.encode(), record.dumps())],
                              settles=record.partition)  # fmt: skip

    async def mark(self, partition: int, offsets: list[int], records: list[Outgoing], *, linger: bool = False) -> None:
        raise NotImplementedError("served marks are kept under exactly_once only")

    async def release(self, partitions: Iterable[int]) -> None:
        """Nothing is held per partition."""

    async def tombstone(self, partition: int, keys: list[bytes]) -> None:
        assert self.writer is not None
        await self.writer.put([(self.topic_name, partition, key, None) for key in keys], settles=partition)

    async def load(self, partitions: Iterable[int]) -> dict[int, PartitionState]:
        """Read the given state partitions to their end; garbage-collect finished windows."""
        partitions = sorted(set(partitions))
        if not partitions:
            return {}
        topic_name = self.topic_name
        latest: dict[bytes, bytes | None] = {}
        started = time.monotonic()
        async with TopicReader(self.bootstrap, self.kafka, read_committed=self.transactional) as reader:
            bounds = {p: (0, 2**63 - 1) for p in partitions}  # to the end at the call
            async for batch in reader.scan_between(topic_name, bounds, to_high_watermark=self.to_high_watermark):
                for message in batch:
                    if message.key is not None:
                        latest[message.key] = message.value
            committed = await self.committed_offsets(reader, partitions)
        states = {p: PartitionState(p) for p in partitions}
        foreign = 0
        for key, value in latest.items():
            if value is None:
                continue
            data = orjson.loads(value)
            owner = (data.get("pipeline"), data.get("input_topic"), data.get("group_id"))
            if owner != (self.pipeline, self.input_topic, self.group_id):
                foreign += 1
            elif data.get("partition") not in states:
                continue
            elif "served" in data:
                states[data["partition"]].served[data["served"]] = key
            else:
                # Kept as read, not through put(): the horizon is not fixed yet (-1), and put()
                # would drop every done window, which must stay to recognise its replayed events
                # until the committed offset passes it (forget_done_before, below).
                record = WindowRecord.model_validate(data)
                states[record.partition].records[record.window_id] = record
        if foreign:
            log.info("state topic %s: ignored %d windows of other input topics or groups, or of other pipelines",
                     topic_name, foreign)  # fmt: skip
        for p, state in states.items():
            stale = state.forget_done_before(committed.get(p, -1))
            state.loaded()
            if stale:
                await self.tombstone(p, stale)
        log.info(
            "loaded state of partitions %s in %.2fs: %d unfinished windows",
            partitions, time.monotonic() - started, sum(len(s.unfinished()) for s in states.values()),
        )  # fmt: skip
        return states

    async def committed_offsets(self, reader: TopicReader, partitions: Iterable[int]) -> dict[int, int]:
        """The consumer group's committed offsets of the input topic's partitions."""
        wanted = set(partitions)
        return {
            partition: offset
            for (topic, partition), offset in (await reader.committed(self.group_id)).items()
            if topic == self.input_topic and partition in wanted
        }


class TransactionalStore(StateStore):
    """The state topic under ``exactly_once``: every write is a transaction of its partition's producer."""

    transactional = True
    #: The high watermarks, not the last stable offsets a read_committed consumer is told: a
    #: transaction of another group's producer left open in a shared state topic holds the
    #: reading back until it ends, rather than hiding this group's later records.
    to_high_watermark = True

    def __init__(self, topic: str, *, pipeline: str, txns: Transactions, input_topic: str, bootstrap: str,
                 group_id: str, **kafka: object) -> None:  # fmt: skip
        super().__init__(topic, writer=txns, pipeline=pipeline, input_topic=input_topic, bootstrap=bootstrap,
                         group_id=group_id, **kafka)  # fmt: skip
        self.txns = txns
        #: Marks written in this assignment, by partition: tombstoned once the committed offset passes them.
        self.marks: dict[int, dict[int, bytes]] = {}

    async def put(self, record: WindowRecord, records: list[Outgoing] = []) -> None:  # noqa: B006 - never mutated
        state = (self.topic_name, record.partition, record.window_id.encode(), record.dumps())
        await self.txns.put([*records, state], settles=record.partition)

    def mark_key(self, partition: int, offset: int) -> bytes:
        return f"served:{self.group_id}:{self.pipeline}:{self.input_topic}:{partition}:{offset}".encode()

    async def mark(self, partition: int, offsets: list[int], records: list[Outgoing], *, linger: bool = False) -> None:
        marks = {offset: self.mark_key(partition, offset) for offset in offsets}
        values = [
            (self.topic_name, partition, key, orjson.dumps({
                "served": offset, "partition": partition, "pipeline": self.pipeline,
                "input_topic": self.input_topic, "group_id": self.group_id,
            }))
            for offset, key in marks.items()
        ]  # fmt: skip
        await self.txns.put([*records, *values], settles=partition, linger=linger)
        if partition in self.txns.partitions:  # not released meanwhile
            self.marks.setdefault(partition, {}).update(marks)

    async def load(self, partitions: Iterable[int]) -> dict[int, PartitionState]:
        """Start the partitions' producers first: that fences their previous owners and aborts
        what those left open, so the state read next is final."""
        partitions = sorted(set(partitions))
        await self.txns.open(partitions)
        return await super().load(partitions)

    async def release(self, partitions: Iterable[int]) -> None:
        partitions = list(partitions)
        for partition in partitions:
            self.marks.pop(partition, None)
        await self.txns.close(partitions)

    async def prune(self, committed: dict[int, int], unpinned: Callable[[int, Iterable[int]], list[int]]) -> None:
        """Tombstone the marks the committed offsets have passed (their events are never replayed),
        except those inside a window not done (``unpinned`` leaves them out: a read-back gives them
        no fate again)."""
        for partition, offset in committed.items():
            marks = self.marks.get(partition)
            if not marks:
                continue
            passed = unpinned(partition, (o for o in marks if o < offset))
            if not passed:
                continue
            keys = [marks[o] for o in passed]
            try:
                await self.tombstone(partition, keys)
            except Exception as exc:  # noqa: BLE001 - tried again after the next commit, or at the next load
                log.info("%s[%d]: tombstoning %d served marks failed: %s", self.topic_name, partition, len(keys), exc)
            else:
                for o in passed:
                    marks.pop(o, None)
