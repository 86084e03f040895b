"""A window round's events, read back from the input topic by offset (a window resumed after a
restart or a rebalance, or a round whose offsets the window no longer holds in memory)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agents.outbox import Outbox
from agents.state import Ledger
from streams.config import PipelineSettings
from streams.models import Rejection, Request, Source, as_sealed, decode_event
from streams.records import WindowRecord
from streams.topics import TopicReader

log = logging.getLogger(__name__)


class InputReader:
    """Re-reads a window's events from the input topic by offset (after a restart)."""

    def __init__(self, bootstrap: str, topic: str, *, read_committed: bool = False, **kafka: object) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        #: As the worker's consumer reads the topic (``streams/app.py``), so an owed offset is found again.
        self.read_committed = read_committed
        self.kafka = kafka

    async def read(
        self, partition: int, first: int, last: int
    ) -> list[tuple[int, int | None, bytes | None, bytes | None]]:
        """(offset, timestamp_ms, key, value) of every record in [first, last] still in the topic."""
        async with TopicReader(self.bootstrap, self.kafka, read_committed=self.read_committed) as reader:
            return [
                (record.offset, record.timestamp_ms, record.key, record.value)
                async for batch in reader.scan_between(self.topic, {partition: (first, last + 1)})
                for record in batch
            ]


async def reread_round(
    record: WindowRecord, cfg: PipelineSettings, reader: InputReader, outbox: Outbox, ledger: Ledger, ended: set[int]
) -> list[Request]:
    """The current round's requests, read again from the input topic by offset.

    They were accepted when the window was sealed, so they are decoded as the window was
    sealed (its record's ``task``: endpoint, model, template), without local validation (a
    newer version or SDK may judge differently). An owed offset that no longer decodes as its
    window's request (a record from before windows kept their task) ends as a dead letter; so
    does one no longer in the topic (``input_gone``: retention or compaction removed it), whose
    request cannot be rebuilt to match a result. ``ended`` holds the offsets a read-back of this
    window already gave a fate (they get theirs once, however often the window reads back).
    """
    rows = await reader.read(record.partition, record.first_offset, record.last_offset)
    belongs = record.round_filter()
    owed = set(record.owed_now)
    accepted = as_sealed(cfg, record.task)
    requests: list[Request] = []
    ended.update(ledger.served_in(record))  # given their fate (and marked) before a restart
    unit, letters = outbox.unit(), []

    def dead_letter(source: Source, key: bytes | None, value: bytes | None, rejection: Rejection) -> None:
        if source.offset not in ended:  # once per event, however often the window reads back
            unit.rejected(source, key, value, rejection)
            letters.append(source.offset)

    for offset, ts, key, value in rows:
        source = Source(cfg.input_topic, record.partition, offset, ts)
        if not belongs(offset):
            continue
        owed.discard(offset)
        decoded = decode_event(accepted, source, key, value)
        if isinstance(decoded, Request) and (decoded.endpoint, decoded.model) == (record.endpoint, record.model):
            requests.append(decoded)
            continue
        if isinstance(decoded, Request):  # a record written before windows kept their task
            decoded = Rejection("template_error", f"the event now renders to {decoded.endpoint} with model "
                                f"{decoded.model}, not its window's {record.endpoint} with {record.model}: the "
                                "pipeline's configuration changed while its batch ran")  # fmt: skip
        dead_letter(source, key, value, decoded)
    gone = sorted(owed)
    for offset in gone:
        dead_letter(Source(cfg.input_topic, record.partition, offset, None), None, None, Rejection(
            "input_gone", f"offset {offset} of {cfg.input_topic}[{record.partition}] was no longer in the topic when "
            f"window {record.window_id} read its events back (retention or compaction removed it); its request "
            "cannot be matched to a result",
        ))  # fmt: skip
    if letters:
        await ledger.mark(record.partition, letters, unit)
        ended.update(letters)  # only once written: a failed write's dead letters are built again
    if gone:
        log.warning("%s: %d of the round's events are no longer in the input topic: dead-lettered as input_gone "
                    "(the topic's retention must outlast a batch)", record.window_id, len(gone))  # fmt: skip
    return requests


class HeldRequests:
    """How many events of waiting windows a pipeline keeps in memory (``max_held_requests``,
    and their bytes of JSONL lines: ``max_held_bytes``).

    A window waiting on something slow (the provider running its batch, the token quota, a
    backoff) keeps its requests only while they fit this budget; otherwise it lets them go and
    reads them back from the input topic when it needs them again, as a restart does. Reading
    back takes a slot: windows hold one from the read until they wait again or finish, so a burst
    of batches ending together (or a restart resuming many windows) never brings all their
    events into memory at once.
    """

    def __init__(
        self, limit: int, window_size: int, *, limit_bytes: int = 256 * 1000**2, window_bytes: int = 10 * 1000**2
    ) -> None:
        self.limit, self.limit_bytes = limit, limit_bytes
        self.held = self.held_bytes = 0
        #: Windows allowed to hold read-back requests at once: as many full windows as fit the
        #: budget, by count and by bytes, at least one.
        self._slots = max(1, min(limit // max(1, window_size), limit_bytes // max(1, window_bytes)))
        self.slots = asyncio.Semaphore(self._slots)
        #: Result files parsed into memory at once, in bytes: the same budget.
        self.results = ResultBudget(limit_bytes)

    def keep(self, count: int, size: int = 0) -> bool:
        """Count ``count`` more events (``size`` bytes) as held, if they fit."""
        if self.held + count > self.limit or self.held_bytes + size > self.limit_bytes:
            return False
        self.held += count
        self.held_bytes += size
        return True

    def release(self, count: int, size: int = 0) -> None:
        self.held -= count
        self.held_bytes -= size


class ResultBudget:
    """Bytes of result files parsed into memory at once, by every window of a pipeline
    (``max_held_bytes``): a window whose result file is on disk waits for room before reading it.

    A window's first file waits; its later files (an error file after an output file) are added
    without waiting, so two windows never hold part of the budget each while waiting for the
    rest. A file larger than the whole budget counts as the whole budget (it is read alone).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = 0
        self._waiters: list[asyncio.Future[None]] = []

    def grant(self) -> ResultGrant:
        return ResultGrant(self)

    async def take(self, size: int, *, wait: bool) -> int:
        size = min(size, self.limit)
        while wait and self.held + size > self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        self.held += size
        return size

    def give_back(self, size: int) -> None:
        self.held -= size
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class ResultGrant:
    """One window's share of a :class:`ResultBudget`, given back at once by :meth:`release`."""

    def __init__(self, budget: ResultBudget) -> None:
        self._budget, self.size = budget, 0

    async def admit(self, size: int) -> None:
        self.size += await self._budget.take(size, wait=self.size == 0)

    def release(self) -> None:
        self._budget.give_back(self.size)
        self.size = 0


class RoundRequests:
    """One window's requests in memory: the current round's, let go while the window waits on
    something slow (beyond the pipeline's :class:`HeldRequests` budget) and read back when needed."""

    def __init__(
        self, requests: list[Request] | None, budget: HeldRequests, read: Callable[[], Awaitable[list[Request]]]
    ) -> None:
        #: The current round's requests; None when not in memory.
        self.current = requests
        #: Every request of the window met so far, by offset (a later round picks its own from here).
        self._known: dict[int, Request] = {r.source.offset: r for r in requests or ()}
        self._budget = budget
        self._read = read
        #: Events (and their bytes) counted in the budget (0: not counted).
        self._held = self._held_bytes = 0
        #: Whether a read-back slot is held (the requests were read back and are in use).
        self._slot = False
        #: Offsets a read-back gave a fate (dead letters): never given another.
        self.ended: set[int] = set()

    async def ensure(self) -> list[Request]:
        """The current round's requests, read back from the input topic (in a slot) if let go."""
        if self.current is None:
            if not self._slot:
                await self._budget.slots.acquire()
                self._slot = True
            self.current = await self._read()
            self._known.update((r.source.offset, r) for r in self.current)
        return self.current

    async def round_bytes(self, record: WindowRecord) -> int:
        """The current round's size for the token quota: from the record, else from its requests."""
        if record.round_bytes is not None:
            return record.round_bytes
        return sum(len(r.jsonl_line()) for r in await self.ensure())

    def follow(self, offsets: list[int]) -> None:
        """A new round of ``offsets``: its requests from those met so far, or None (read back later)."""
        if self.current is not None and [r.source.offset for r in self.current] != offsets:
            known = [self._known.get(o) for o in offsets]
            self.current = None if None in known else [r for r in known if r is not None]

    def park(self) -> None:
        """About to wait on something slow: keep the requests only while they fit the budget."""
        if self.current is not None and not self._held:
            count, size = len(self._known), sum(len(r.jsonl_line()) for r in self._known.values())
            if self._budget.keep(count, size):
                self._held, self._held_bytes = count, size
            else:
                self.let_go()
        self._free_slot()

    def let_go(self) -> None:
        """Drop the requests from memory (the input topic keeps them)."""
        self.current = None
        self._known = {}
        if self._held:
            self._budget.release(self._held, self._held_bytes)
            self._held = self._held_bytes = 0
        self._free_slot()

    def _free_slot(self) -> None:
        if self._slot:
            self._slot = False
            self._budget.slots.release()
