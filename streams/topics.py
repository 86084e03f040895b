"""Reading topics: the one topic-range reader of the project.

:class:`TopicReader` reads a topic (or ranges of its partitions) to the end it had when the
read began, the records at given offsets, or a topic as it grows (:meth:`TopicReader.follow`).
No consumer group: nothing is committed, nothing changes. The operator commands read through
it, and so does the worker: a window's events read back by offset (``agents/rounds.py``), a
partition's window records loaded at assignment (``agents/store.py``), completion webhooks.

:data:`BrokerError` is what the broker's clients raise (aiokafka's ``KafkaError``): the only
name for it outside ``streams/`` and ``sinks/``, the two packages that hold Kafka clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.errors import BatchstreamError

__all__ = ["BrokerError", "Record", "TopicMissingError", "TopicReader", "json_object", "start"]

#: What the broker's clients raise: a request refused, timed out, or a broker unreachable.
BrokerError = KafkaError


async def start(client: Any) -> None:
    """``await client.start()`` for a Kafka consumer, producer or admin client; one whose start
    failed is stopped before the error goes on (never left to warn "Unclosed" at exit)."""
    try:
        await client.start()
    except BaseException:
        await (client.stop() if hasattr(client, "stop") else client.close())
        raise


log = logging.getLogger(__name__)

#: Records handed over at a time by :meth:`TopicReader.scan`.
SCAN_BATCH = 2000


class TopicMissingError(BatchstreamError):
    """A topic the command needs does not exist."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def json_object(value: bytes | None) -> dict[str, Any]:
    """A record's value as a JSON object; ``{}`` when it is not one."""
    try:
        loaded = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _record(message: Any) -> Record:
    return Record(message.topic, message.partition, message.offset, message.timestamp, message.key, message.value,
                  tuple(message.headers or ()))  # fmt: skip


class TopicReader:
    """One consumer (no group) for a series of reads; ``async with``.

    ``read_committed`` (the default): records of transactions a worker aborted (``exactly_once``)
    are never seen, counted or replayed; the worker reads back as its own consumer reads the
    input. Where a partition's earliest records were removed by retention, a range read starts
    at the oldest one still there."""

    def __init__(self, bootstrap: str, options: dict[str, Any], *, read_committed: bool = True) -> None:
        self._bootstrap, self._options = bootstrap, options
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                          auto_offset_reset="earliest",
                                          isolation_level="read_committed" if read_committed else "read_uncommitted",
                                          **options)  # fmt: skip
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
        self._partitions: dict[str, list[TopicPartition]] = {}

    async def __aenter__(self) -> TopicReader:
        await start(self._consumer)
        try:
            await start(self._admin)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()
        await self._consumer.stop()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        if topic not in self._partitions:
            [described] = await self._admin.describe_topics([topic])
            if described.get("error_code") or not described.get("partitions"):
                raise TopicMissingError(f"topic {topic!r} does not exist")
            numbers = sorted(p["partition"] for p in described["partitions"])
            self._partitions[topic] = [TopicPartition(topic, p) for p in numbers]
        return self._partitions[topic]

    async def read(self, topic: str, *, since_ms: int | None = None) -> list[Record]:
        """Every record of ``topic`` (from ``since_ms`` when given) up to its end at the call, in
        one list: for inputs known to be small. Large topics are read with :meth:`scan`."""
        return [record async for batch in self.scan(topic, since_ms=since_ms) for record in batch]

    async def read_new(self, topic: str, positions: dict[int, int]) -> list[Record]:
        """The records of ``topic`` after ``positions``, in one list (see :meth:`scan`)."""
        return [record async for batch in self.scan(topic, positions) for record in batch]

    async def scan(
        self, topic: str, positions: dict[int, int] | None = None, *, since_ms: int | None = None
    ) -> AsyncIterator[list[Record]]:
        """The records of ``topic`` up to its end at the call, a fetched batch at a time (memory
        independent of the topic's size): after ``positions`` (partition -> next offset, updated
        to the end once the scan is over; for a view refreshed again and again), or from
        ``since_ms``, or from the beginning."""
        partitions = await self.partitions(topic)
        consumer = self._consumer
        consumer.assign(partitions)
        positions = positions if positions is not None else {}
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            ends = await consumer.end_offsets(partitions)
            positions.update({tp.partition: found[tp].offset if found.get(tp) is not None else ends[tp]
                              for tp in partitions})  # fmt: skip
        ends = await consumer.end_offsets(partitions)
        async for records in self._ranges({tp: (positions.get(tp.partition, 0), ends[tp]) for tp in partitions}):
            yield records
        positions.update({tp.partition: ends[tp] for tp in partitions})

    async def scan_between(
        self, topic: str, bounds: dict[int, tuple[int, int]], *, to_high_watermark: bool = False
    ) -> AsyncIterator[list[Record]]:
        """The records of ``topic`` with ``first <= offset < stop``, for each ``partition -> (first,
        stop)`` of ``bounds`` (other partitions are not read; ``stop`` at most the partition's end at
        the call), a fetched batch at a time like :meth:`scan`.

        The end is what this reader's isolation lets it read to: under ``read_committed``, the
        last stable offset. ``to_high_watermark``: the high watermark instead, so that the read
        waits for a transaction open at the call to end rather than stopping before it (a state
        topic shared with another group's producer)."""
        partitions = [tp for tp in await self.partitions(topic) if tp.partition in bounds]
        if not partitions:
            return
        self._consumer.assign(partitions)
        high = to_high_watermark
        ends = await (self._high_watermarks(partitions) if high else self._consumer.end_offsets(partitions))
        async for records in self._ranges({tp: (bounds[tp.partition][0], min(bounds[tp.partition][1], ends[tp]))
                                           for tp in partitions}):  # fmt: skip
            yield records

    async def _ranges(self, ranges: dict[TopicPartition, tuple[int, int]]) -> AsyncIterator[list[Record]]:
        """The records of each assigned partition's ``[first, stop)`` (from its beginning when
        ``first`` was removed by retention), a fetched batch at a time."""
        consumer = self._consumer
        starts = await consumer.beginning_offsets(list(ranges))
        pending = set()
        for tp, (first, stop) in ranges.items():
            begin = max(first, starts[tp])
            if begin < stop:
                consumer.seek(tp, begin)
                pending.add(tp)
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=SCAN_BATCH)
            for tp, messages in batches.items():
                records = [_record(m) for m in messages if m.offset < ranges[tp][1]]
                if records:
                    yield records
            for tp in list(pending):
                if await consumer.position(tp) >= ranges[tp][1]:
                    pending.discard(tp)

    async def _high_watermarks(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The partitions' high watermarks, from a read_uncommitted consumer (a read_committed one
        is told the last stable offsets)."""
        probe = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False, **self._options)
        await start(probe)
        try:
            return await probe.end_offsets(partitions)  # type: ignore[no-any-return]
        finally:
            await probe.stop()

    async def follow(self, topic: str, *, retry_after: float = 1.0) -> AsyncIterator[list[Record]]:
        """The records written to ``topic`` from now on, a fetched batch at a time, for as long as
        the caller reads. A failed fetch (the broker away) is logged and tried again after
        ``retry_after`` seconds: the records are read once the broker is back."""
        partitions = await self.partitions(topic)
        consumer = self._consumer
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        while True:
            try:
                batches = await consumer.getmany(*partitions, timeout_ms=1000)
            except KafkaError as exc:
                log.warning("reading %s: %s; trying again in %.0fs", topic, exc, retry_after)
                await asyncio.sleep(retry_after)
                continue
            for messages in batches.values():
                if messages:
                    yield [_record(m) for m in messages]

    async def offsets_for_time(self, topic: str, ms: int) -> dict[int, int]:
        """Per partition, the offset of its first record written at or after ``ms`` (its end when none)."""
        partitions = await self.partitions(topic)
        found = await self._consumer.offsets_for_times({tp: ms for tp in partitions})
        ends = await self._consumer.end_offsets(partitions)
        return {tp.partition: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in partitions}

    async def beginning_offsets(self, topic: str) -> dict[int, int]:
        partitions = await self.partitions(topic)
        return {tp.partition: offset for tp, offset in (await self._consumer.beginning_offsets(partitions)).items()}

    async def committed(self, group: str) -> dict[tuple[str, int], int]:
        """The group's committed offsets by (topic, partition); none before the group has a coordinator."""
        try:
            offsets = await self._admin.list_consumer_group_offsets(group)
        except KafkaError:
            return {}
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def end_offsets(self, topic: str) -> dict[int, int]:
        partitions = await self.partitions(topic)
        return {tp.partition: offset for tp, offset in (await self._consumer.end_offsets(partitions)).items()}

    async def at(self, coordinates: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int, int], Record]:
        """The records at these (topic, partition, offset), where they still exist."""
        consumer, found = self._consumer, {}
        wanted = sorted(set(coordinates))
        if not wanted:
            return {}
        tps = sorted({TopicPartition(t, p) for t, p, _ in wanted})
        consumer.assign(tps)
        starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for topic, partition, offset in wanted:
            tp = TopicPartition(topic, partition)
            if not starts[tp] <= offset < ends[tp]:
                continue  # deleted by retention, or never written
            consumer.seek(tp, offset)
            while True:
                batch = (await consumer.getmany(tp, timeout_ms=1000, max_records=1)).get(tp, [])
                if batch:
                    if batch[0].offset == offset:
                        found[(topic, partition, offset)] = _record(batch[0])
                    break
                if await consumer.position(tp) > offset:
                    break  # compacted or aborted away
        return found
