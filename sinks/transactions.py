"""Exactly-once writes: one transactional producer per owned input partition.

Under ``processing_guarantee: exactly_once`` every record that settles an event of input
partition P (its result or dead letter, the state record that says so) is written in a
Kafka transaction of P's producer, whose transactional id names the pipeline's group, input
topic and P. Whoever is assigned P starts that producer before reading P's state: starting
it fences any earlier producer of P (a crashed or stalled previous owner, a zombie) and
aborts its open transaction, so from then on nothing the previous owner writes for P can be
committed, and what it did commit is in the state the new owner reads.

Writes that arrive while a transaction is being committed share the next one (group
commit): a window's emission, many flex events and the state records that go with them cost
one transaction together, not one each. Each caller's records are in one transaction either
way, which is all atomicity asks.

A producer that is fenced stays fenced: it is never started again within the assignment
(that could fence the partition's new owner in turn). Its writes fail from then on, and the
pipeline asks its consumer to rejoin the group, so that a worker that still owns P gets it
assigned afresh, with a new producer (``agents/commits.py``: ``Commits.rejoin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from sinks.base import BATCH_BYTES, Outgoing, produce, settle
from sinks.limits import RecordLimits, SizeRefused

log = logging.getLogger(__name__)

#: How long a write that may wait (an event's served mark) waits for others to share its transaction.
LINGER = 0.1

#: How long releasing a partition waits for its transaction under way.
CLOSE_GRACE = 30.0

#: Errors that leave a transactional producer unusable (another producer took its id).
FENCED_ERRORS: tuple[str, ...] = ("ProducerFenced", "InvalidProducerEpoch", "InvalidProducerIdMapping",
                                  "TransactionalIdAuthorizationFailed")  # fmt: skip


class Fenced(KafkaError):  # type: ignore[misc]
    """A partition's producer was fenced: another worker owns the partition now (or the
    transaction outlived the broker's timeout). Nothing more is written for it here."""


def _raise_first(outcomes: list[Any]) -> None:
    """Every produce future is awaited (none left with an unread error); the first error is raised."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def is_fenced(exc: BaseException) -> bool:
    return isinstance(exc, Fenced) or type(exc).__name__ in FENCED_ERRORS


class PartitionTransactions:
    """The transactional producer of one owned input partition, with group commit."""

    def __init__(
        self, transactional_id: str, bootstrap: str, on_fenced: Callable[[], None], *,
        limits: RecordLimits | None = None, **options: Any,
    ) -> None:  # fmt: skip
        self.transactional_id = transactional_id
        self._limits = limits or RecordLimits()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id=transactional_id, enable_idempotence=True, acks="all",
            max_batch_size=BATCH_BYTES, **options,
        )  # fmt: skip
        self._on_fenced = on_fenced
        self._queue: list[tuple[list[Outgoing], asyncio.Future[None]]] = []
        self._runner: asyncio.Task[None] | None = None
        #: Set when a queued write may not linger.
        self._urgent = asyncio.Event()
        self._fenced = False
        self._closed = False
        #: Transactions committed (for tests and metrics).
        self.commits = 0

    async def start(self) -> None:
        """Start the producer: registers the transactional id, fencing every earlier producer of it."""
        await self._producer.start()

    async def write(self, records: list[Outgoing], *, linger: bool = False) -> None:
        """Write ``records`` in one transaction (perhaps shared with other writers); return once committed.

        ``linger``: the transaction may wait up to :data:`LINGER` for other writes to share it
        (unless a write that may not linger joins it)."""
        if self._fenced or self._closed:
            raise Fenced(f"{self.transactional_id}: fenced or released; nothing more is written for it here")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((records, done))
        if not linger:
            self._urgent.set()
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"txn:{self.transactional_id}")
        await done

    async def _run(self) -> None:
        try:
            while self._queue and not self._closed:
                if not self._urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), LINGER)
                self._urgent.clear()
                taken, self._queue = self._queue, []
                try:
                    await self._commit([record for records, _ in taken for record in records])
                except Exception as exc:  # noqa: BLE001 - handed to every writer of this transaction
                    for _, done in taken:
                        if not done.done():
                            done.set_exception(exc)
                            done.exception()  # a writer cancelled meanwhile never reads it
                else:
                    self.commits += 1
                    for _, done in taken:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._runner = None
            for _, done in self._queue if self._closed else ():
                if not done.done():
                    done.set_exception(Fenced(f"{self.transactional_id}: released"))
                    done.exception()

    async def _commit(self, records: list[Outgoing]) -> None:
        if self._fenced:
            raise Fenced(f"{self.transactional_id}: fenced")
        producer = self._producer
        try:
            await producer.begin_transaction()
            grouped: dict[tuple[str, int | None], list[tuple[bytes | None, bytes]]] = {}
            for topic, partition, key, value in records:
                grouped.setdefault((topic, partition), []).append((key, value))  # type: ignore[arg-type]
            sent = [
                (topic, items, await produce(producer, topic, items, partition,
                                             batch_bytes=self._limits.batch_bytes(topic, BATCH_BYTES)))
                for (topic, partition), items in grouped.items()
            ]  # fmt: skip
            outcomes = await asyncio.gather(*(settle(*write) for write in sent), return_exceptions=True)
            _raise_first(sorted(outcomes, key=lambda o: not isinstance(o, SizeRefused)))
            await producer.commit_transaction()
        except Exception as exc:
            if is_fenced(exc) or producer._txn_manager.is_fatal_error():
                self._fence(exc)
                raise Fenced(f"{self.transactional_id}: {type(exc).__name__}") from exc
            await self._abort()
            raise

    async def _abort(self) -> None:
        try:
            await self._producer.abort_transaction()
        except Exception as exc:  # noqa: BLE001 - the next transaction tries again, or we are fenced
            if is_fenced(exc) or self._producer._txn_manager.is_fatal_error():
                self._fence(exc)
            else:
                log.info("%s: abort failed: %s", self.transactional_id, exc)

    def _fence(self, exc: BaseException) -> None:
        if not self._fenced:
            self._fenced = True
            log.warning("%s: fenced (%s): another worker owns the partition now, or a transaction outlived "
                        "the broker's transaction timeout; nothing more is written for it here",
                        self.transactional_id, type(exc).__name__)  # fmt: skip
            if not self._closed:
                self._on_fenced()

    async def close(self) -> None:
        """Let the transaction under way end (up to :data:`CLOSE_GRACE`), then stop the producer.

        A transaction still open then is aborted by the partition's next owner (or the broker)."""
        self._closed = True
        runner = self._runner
        if runner is not None:
            try:
                await asyncio.wait_for(asyncio.shield(runner), CLOSE_GRACE)
            except TimeoutError:
                log.warning("%s: a transaction did not end within %.0fs; stopping its producer",
                            self.transactional_id, CLOSE_GRACE)  # fmt: skip
            except Exception:  # noqa: BLE001 - its writers got the error
                pass
        await self._producer.stop()
        log.info("%s: released after %d transactions", self.transactional_id, self.commits)


class Transactions:
    """The transactional producers of one pipeline, one per owned input partition."""

    def __init__(
        self, prefix: str, bootstrap: str, *, on_fenced: Callable[[int], None], limits: RecordLimits | None = None,
        **options: Any,
    ) -> None:  # fmt: skip
        #: ``<group>.<pipeline>.<input topic>``: the partition number completes the transactional id.
        self.prefix = prefix
        self.limits = limits
        self.bootstrap = bootstrap
        self.options = options
        self.on_fenced = on_fenced
        self.partitions: dict[int, PartitionTransactions] = {}

    def transactional_id(self, partition: int) -> str:
        return f"{self.prefix}.{partition}"

    async def open(self, partitions: Iterable[int]) -> None:
        """Start the producers of newly assigned partitions (fencing their previous owners)."""
        fresh = [p for p in partitions if p not in self.partitions]
        created = {p: self._make(p) for p in fresh}
        results = await asyncio.gather(*(t.start() for t in created.values()), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await asyncio.gather(*(t.close() for t in created.values()), return_exceptions=True)
            raise failed[0]
        self.partitions.update(created)

    def _make(self, partition: int) -> PartitionTransactions:
        return PartitionTransactions(self.transactional_id(partition), self.bootstrap,
                                     lambda: self.on_fenced(partition), limits=self.limits, **self.options)  # fmt: skip

    def of(self, partition: int) -> PartitionTransactions:
        txn = self.partitions.get(partition)
        if txn is None:
            raise Fenced(f"{self.transactional_id(partition)}: partition not owned here")
        return txn

    async def write(self, partition: int, records: list[Outgoing], *, linger: bool = False) -> None:
        await self.of(partition).write(records, linger=linger)

    async def put(self, records: Sequence[Outgoing], *, settles: int, linger: bool = False) -> None:
        """``sinks.base.Writer``'s ``put``: one transaction of the producer of input partition ``settles``."""
        await self.write(settles, list(records), linger=linger)

    async def close(self, partitions: Iterable[int] | None = None) -> None:
        chosen = list(self.partitions) if partitions is None else [p for p in partitions if p in self.partitions]
        closing = [self.partitions.pop(p) for p in chosen]
        await asyncio.gather(*(t.close() for t in closing), return_exceptions=True)
