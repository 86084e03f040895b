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
from collections.abc import Iterable
from typing import Protocol

from agents.outbox import WRITE_RETRY_INITIAL, WRITE_RETRY_MAX
from agents.partitions import PartitionState
from agents.retry import retry_forever
from sinks.base import Outgoing
from sinks.limits import SizeRefused
from streams.offsets import Frontier
from streams.records import Status as Status
from streams.records import WindowRecord as WindowRecord
from streams.records import runs as runs

log = logging.getLogger(__name__)


class StateBackend(Protocol):
    """Where window records are kept: the state topic (``agents/store.py``), or memory in tests.

    A transactional backend (``exactly_once``) writes a record together with the records that
    settle its events, in one transaction, and keeps served marks; otherwise the ledger
    flushes those records first and marks nothing.
    """

    group_id: str
    transactional: bool

    async def put(self, record: WindowRecord, records: list[Outgoing] = ...) -> None: ...

    async def mark(
        self, partition: int, offsets: list[int], records: list[Outgoing], *, linger: bool = ...
    ) -> None: ...

    async def load(self, partitions: Iterable[int]) -> dict[int, PartitionState]: ...

    async def release(self, partitions: Iterable[int]) -> None: ...

    async def tombstone(self, partition: int, keys: list[bytes]) -> None: ...


class Unit(Protocol):
    """The records of one atomic write (an outbox unit: ``agents/outbox.py``)."""

    async def flush(self) -> None: ...

    def staged(self) -> list[Outgoing]: ...

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
