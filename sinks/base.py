"""The sink contract: cheap ``add``, awaited ``flush`` as the commit gate.

``add`` only buffers a serialized record. ``flush`` does the I/O and returns once the broker
confirmed every record added since the last flush; if it raises, the caller must not advance
any offset or state past those records. Results and dead letters are both sinks.

Flushes are serialised: a caller whose records were taken by a flush already under way
waits for that flush to finish, so "my flush returned" always means "my records are
written", even with many concurrent writers (flex events).

Records are produced in bulk: a flush groups its records by partition (the key's, as
Kafka's default partitioner chooses it) and hands each partition's records to the producer
as whole record batches, rather than one ``send`` per record.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from pydantic import BaseModel

from sinks.limits import SIZE_ERRORS, RecordLimits, SizeRefused

#: Bytes per record batch handed to the producer: under the broker's default ``message.max.bytes``.
BATCH_BYTES = 1_000_000
#: What a record adds to a batch beside its key and value (length varints, attributes, deltas,
#: header count): counted so that a batch never outgrows the topic's limit.
RECORD_FRAMING = 32


def exact(value: bytes) -> bytes:
    """``value`` in an allocation of its own size. orjson's output keeps the buffer it was
    written in (about 4 KiB for a 500-byte record, which the allocator cannot hand to the next
    one), so records held by the ten thousand until a window's write (its results, a read-back
    of 50,000) are copied to their size first: 23 MB per 50,000 such records instead of 197 MB."""
    return bytes(memoryview(value))


#: One record to write: topic, partition (None: the key's, as Kafka's default partitioner picks
#: it), key, value (None: a tombstone). What a transaction writes (``sinks/transactions.py``).
Outgoing = tuple[str, int | None, bytes | None, bytes | None]


class Writer(Protocol):
    """Where a pipeline's records go, under either guarantee: :class:`KafkaWriter`
    (``at_least_once``: each record acknowledged by every in-sync replica) or
    ``sinks.transactions.Transactions`` (``exactly_once``: the records in one transaction of the
    producer of the input partition they settle, ``settles``).

    ``put`` returns once the records are written (committed, for a transaction), or raises and
    none of them may be taken as written. ``linger``: the write may wait a moment to share a
    transaction with others (no effect without transactions)."""

    async def put(self, records: Sequence[Outgoing], *, settles: int, linger: bool = False) -> None: ...


class Sink(Protocol):
    """Cheap ``add``; ``flush`` writes everything added so far, or raises; ``pending`` is what
    waits (the outbox re-screens it after a size refusal).

    A sink knows its topic and the largest record it takes (``fits``, ``max_value``); its
    ``draft()`` gathers records for one atomic write elsewhere (a transaction takes a draft's
    ``staged()`` records), so that its users never name a topic."""

    topic: str
    limits: RecordLimits

    def add(self, value: bytes, *, key: bytes | None) -> None: ...

    def max_value(self, key: bytes | None) -> int: ...

    def fits(self, key: bytes | None, value: bytes) -> bool: ...

    def draft(self) -> MemorySink: ...

    @property
    def pending(self) -> list[tuple[bytes | None, bytes]]: ...

    async def write(self, records: list[tuple[bytes | None, bytes]], timeout: float = ...) -> None: ...

    async def flush(self, timeout: float = ...) -> int: ...


class KafkaWriter:
    """The producer of a pipeline's sinks (acks=all), started on first use, in the running loop."""

    def __init__(self, bootstrap: str, *, limits: RecordLimits | None = None, **options: Any) -> None:
        self._bootstrap = bootstrap
        self._options = options
        self.limits = limits or RecordLimits()
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all",
                                            max_batch_size=BATCH_BYTES, **self._options)  # fmt: skip
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # the next write starts another
                    raise
                self._producer = producer
            return self._producer

    async def write(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]], *, partition: int | None = None
    ) -> None:
        """Produce ``records`` (key, value; a ``None`` value is a tombstone) in order per partition,
        to ``partition`` when given, else to each key's; return once the broker has them all."""
        producer = await self._started()
        batch_bytes = self.limits.batch_bytes(topic, BATCH_BYTES)
        await settle(topic, records, await produce(producer, topic, records, partition, batch_bytes=batch_bytes))

    async def put(self, records: Sequence[Outgoing], *, settles: int, linger: bool = False) -> None:
        """:class:`Writer`'s ``put``: each topic-partition's records in order, one run after another."""
        grouped: dict[tuple[str, int | None], list[tuple[bytes | None, bytes | None]]] = {}
        for topic, partition, key, value in records:
            grouped.setdefault((topic, partition), []).append((key, value))
        for (topic, partition), items in grouped.items():
            await self.write(topic, items, partition=partition)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


async def produce(
    producer: AIOKafkaProducer, topic: str, records: Sequence[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
    *, batch_bytes: int = BATCH_BYTES,
) -> list[asyncio.Future[Any]]:  # fmt: skip
    """Hand ``records`` (key, value) to the producer as whole record batches, one run per partition.

    A record goes to ``partition`` when given, else to the partition Kafka's default partitioner
    picks for its key; records without a key stick to one partition per call. A batch holds
    at most ``batch_bytes`` of keys and values (the topic's limit: ``sinks/limits.py``), or one
    record. Returns the futures the broker's acknowledgements resolve (:func:`settle` awaits them).
    """
    grouped: dict[int, Sequence[tuple[bytes | None, bytes | None]]]
    if partition is not None:
        grouped = {partition: records}
    else:
        partitions = sorted(await producer.partitions_for(topic))
        count = len(partitions)
        unkeyed = random.choice(partitions)
        by_key: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        for key, value in records:
            chosen = unkeyed if key is None else partitions[(murmur2(key) & 0x7FFFFFFF) % count]
            by_key.setdefault(chosen, []).append((key, value))
        grouped = dict(by_key)
    futures = []
    for chosen, items in grouped.items():
        batch = producer.create_batch()
        held = 0
        for key, value in items:
            size = len(key or b"") + len(value or b"") + RECORD_FRAMING
            if (held and held + size > batch_bytes) or batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=chosen))  # full: another
                batch = producer.create_batch()
                held = 0
                batch.append(key=key, value=value, timestamp=None)  # a first record always fits
            held += size
        futures.append(await producer.send_batch(batch, topic, partition=chosen))
    return futures


async def settle(
    topic: str, records: Sequence[tuple[bytes | None, bytes | None]], futures: list[asyncio.Future[Any]]
) -> None:
    """Await every future of a write to ``topic`` (none is left with an unread error); raise
    :class:`~sinks.limits.SizeRefused` when the broker refused a batch for its size, else the first error."""
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, SIZE_ERRORS):
            largest = max((len(k or b"") + len(v or b"") for k, v in records), default=0)
            raise SizeRefused(topic, largest) from outcome
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


class _Bounded:
    """A sink's topic and the largest record it takes (``sinks/limits.py``)."""

    topic: str
    limits: RecordLimits

    def max_value(self, key: bytes | None) -> int:
        """The largest value that fits one record of this sink's topic with ``key``."""
        return self.limits.max_value(self.topic, key)

    def fits(self, key: bytes | None, value: bytes) -> bool:
        return self.limits.fits(self.topic, key, value)

    def draft(self) -> MemorySink:
        """An empty sink for the same topic and limits whose records are written elsewhere: by
        :meth:`TopicSink.write`, or in a transaction (:meth:`MemorySink.staged`)."""
        return MemorySink(topic=self.topic, limits=self.limits)


class TopicSink(_Bounded):
    """Records to one Kafka topic through a :class:`KafkaWriter`."""

    def __init__(self, writer: KafkaWriter, topic: str) -> None:
        self.writer = writer
        self.topic = topic
        self.limits = writer.limits
        self._pending: list[tuple[bytes | None, bytes]] = []
        self._flushing = asyncio.Lock()
        #: Writers of :meth:`write` waiting for a flush: their records and their outcome.
        self._queue: list[tuple[list[tuple[bytes | None, bytes]], asyncio.Future[None]]] = []

    async def write(self, records: list[tuple[bytes | None, bytes]], timeout: float = 60.0) -> None:
        """Write ``records``; return once the broker has them, or raise (then none of them is
        kept: the caller writes them again, or not, as it decides).

        Writers that arrive while a flush is under way share the next one (group commit). A
        failed flush fails every writer whose records it held, and keeps none of them; a writer
        cancelled while it waits leaves its records to the flush that takes them, at most once.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((records, done))
        async with self._flushing:
            if not done.done():
                taken, self._queue = self._queue, []
                batch = [record for held, _ in taken for record in held]
                try:
                    await asyncio.wait_for(self.writer.write(self.topic, batch), timeout)
                except BaseException as exc:
                    error = exc if isinstance(exc, Exception) else ConnectionError(f"{self.topic}: write cut short")
                    for _, waiter in taken:
                        if not waiter.done():
                            waiter.set_exception(error)
                            waiter.exception()  # a writer cancelled meanwhile never reads it
                    raise
                for _, waiter in taken:
                    if not waiter.done():
                        waiter.set_result(None)
        await done

    def add(self, value: bytes, *, key: bytes | None) -> None:
        self._pending.append((key, exact(value)))

    @property
    def pending(self) -> list[tuple[bytes | None, bytes]]:
        """What was added and is not written yet (a failed flush keeps its records here)."""
        return self._pending

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self, timeout: float = 60.0) -> int:
        """Send what was added and wait for the broker's acks; return how many."""
        async with self._flushing:
            pending, self._pending = self._pending, []
            if not pending:
                return 0
            try:
                await asyncio.wait_for(self.writer.write(self.topic, pending), timeout)
            except BaseException:
                # Nothing of this flush may be assumed written: keep it for the next flush.
                self._pending = pending + self._pending
                raise
            return len(pending)


class MemorySink(_Bounded):
    """A sink that keeps records in memory: a draft of another sink's records (:meth:`staged`),
    and the test double for :class:`TopicSink`.

    ``records`` holds what a flush has written; ``values`` parses them with ``model`` (so every
    record is checked against its schema) or as plain JSON. ``fail_next`` makes the next flushes
    raise (nothing of theirs is written) to exercise the commit gate.
    """

    def __init__(
        self, model: type[BaseModel] | None = None, *, topic: str = "memory", limits: RecordLimits | None = None
    ) -> None:
        self.model = model
        self.topic = topic
        self.limits = limits or RecordLimits()
        self.records: list[tuple[bytes | None, bytes]] = []
        self.fail_next = 0
        self._pending: list[tuple[bytes | None, bytes]] = []

    def add(self, value: bytes, *, key: bytes | None) -> None:
        self._pending.append((key, exact(value)))

    async def write(self, records: list[tuple[bytes | None, bytes]], timeout: float = 60.0) -> None:
        """As :meth:`TopicSink.write`: ``records`` written, or an error and none of them."""
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("memory sink: injected write failure")
        self.records.extend(records)

    @property
    def pending(self) -> list[tuple[bytes | None, bytes]]:
        """What was added since the last flush (a draft's records: ``Outbox.unit``)."""
        return self._pending

    def staged(self) -> list[Outgoing]:
        """What was added since the last flush, as records of this sink's topic (a draft's, for
        the transaction that writes it)."""
        return [(self.topic, None, key, value) for key, value in self._pending]

    async def flush(self, timeout: float = 60.0) -> int:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("memory sink: injected flush failure")
        pending, self._pending = self._pending, []
        self.records.extend(pending)
        return len(pending)

    @property
    def values(self) -> list[Any]:
        if self.model is None:
            return [orjson.loads(value) for _, value in self.records]
        return [self.model.model_validate_json(value) for _, value in self.records]
