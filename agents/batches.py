"""The batch lane: open windows, sealing, and the windows in flight.

Requests routed to the batch path join an open window (``streams/windows.py``) of their
input partition, endpoint and model. A window is sealed when a bound is reached (on
``add``) or when its ``max_wait`` passes (on ``tick``): its ``sealed`` record is written to
the state topic, and only then are its events finished in their frontier. Each sealed
window then lives as an :class:`~agents.inflight.InFlightWindow` task until ``done``.

``max_open_batches`` bounds the windows in flight: sealing waits for a slot, and so does
consumption (a safety cap: the token quota gates submissions). Memory does not grow with the
windows in flight: beyond ``max_held_requests`` their requests wait in the input topic, not in
memory (``agents/rounds.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable

from agents.inflight import InFlightWindow
from agents.retry import retry_forever
from agents.services import WindowServices
from streams.models import Request, task_of
from streams.offsets import Frontier, Pending
from streams.records import Status, WindowRecord, runs
from streams.windows import Window, Windower, WindowKey, WindowPolicy

log = logging.getLogger(__name__)


class BatchLane:
    """The batch path of one pipeline."""

    def __init__(self, services: WindowServices, policy: WindowPolicy) -> None:
        self.s = services
        self.cfg = services.cfg
        self.policy = policy
        self.windower: Windower[Pending] = Windower(policy)
        #: Windows in flight (sealed, not done); a full lane holds back sealing and intake.
        self.slots = asyncio.Semaphore(self.cfg.max_open_batches)
        # The windower is only touched between awaits (add, tick and revoke call it without
        # awaiting), so no other task can see it half-updated: it needs no lock.
        # The digest keeps window ids (the state topic's keys) distinct across input topics
        # and groups sharing a state topic, so compaction never merges two owners' records.
        self._owner = f"{self.cfg.input_topic}|{services.ledger.group_id}"
        #: What this pipeline's windows are sealed with (kept in each record).
        self._task = task_of(self.cfg)

    async def add(self, pending: Pending) -> None:
        """Put a request in its window; seal the windows it closed."""
        for window in self.put(pending):
            await self.seal(window)

    def put(self, pending: Pending) -> list[Window[Pending]]:
        """Put a request in its window; return the windows it closed, for :meth:`seal` (in order)."""
        request = pending.request
        if pending.frontier.closed:
            # revoked (a flex fallback arriving late): a window must only hold events of
            # the current assignment, or sealing would judge it by the wrong frontier
            return []
        key = WindowKey(request.source.partition, request.endpoint, request.model)
        return self.windower.add(key, pending, request.custom_id, pending.nbytes, time.monotonic())

    async def tick(self) -> None:
        """Seal the windows whose ``max_wait`` has passed."""
        due = self.windower.due(time.monotonic())
        for window in due:
            await self.seal(window)

    def resume(self, records: Iterable[WindowRecord]) -> None:
        """Carry on with windows restored from state (their events are re-read by offset)."""
        for record in records:
            self._track(record, None, slot_held=False)

    async def revoke(self, partitions: Iterable[int]) -> None:
        """Forget the open windows of revoked partitions: their events were never finished."""
        for partition in partitions:
            self.windower.drop_partition(partition)

    def _record_for(self, window: Window[Pending]) -> WindowRecord:
        key = window.key
        offsets = [p.request.source.offset for p in window.items]
        first, last = min(offsets), max(offsets)
        digest = hashlib.sha256(f"{self._owner}|{key.endpoint}|{key.model}".encode()).hexdigest()[:8]
        return WindowRecord(
            window_id=f"{self.cfg.name}.p{key.partition}.{first}-{last}.{digest}",
            pipeline=self.cfg.name,
            input_topic=self.cfg.input_topic,
            group_id=self.s.ledger.group_id,
            partition=key.partition,
            endpoint=key.endpoint,
            model=key.model,
            first_offset=first,
            last_offset=last,
            count=len(offsets),
            members=None if last - first + 1 == len(offsets) else runs(offsets),
            status=Status.SEALED,
            sealed_at=time.time(),
            nbytes=sum(p.nbytes for p in window.items),
            task=self._task,
        )

    async def seal(self, window: Window[Pending]) -> None:
        """Record the window durably, then finish its events and start it.

        The record is written as a shielded step, retried until it is written or the
        partition is revoked: a revocation waits for it, so the partition's next owner
        (perhaps this worker again) loads the record and resumes the window. A window whose
        partition was revoked meanwhile is left to that owner.
        """
        frontier = window.items[0].frontier
        partition = window.key.partition
        await self.slots.acquire()  # full: consumption waits here (bounded memory)
        try:
            record = await self.s.tasks.shield(partition, self._record(window, frontier))
        except BaseException:
            self.slots.release()
            raise
        if record is None or frontier.closed:
            # revoked (perhaps assigned again since): whoever owns the partition now resumes
            # the recorded window from state, or reads its events again from the committed offset
            self.slots.release()
            return
        for pending in window.items:
            frontier.finished(pending.request.source.offset)
        self.s.metrics.windows_sealed.inc()
        self._track(record, [p.request for p in window.items], slot_held=True)

    async def _record(self, window: Window[Pending], frontier: Frontier) -> WindowRecord | None:
        record = self._record_for(window)

        async def save() -> WindowRecord | None:
            if frontier.closed or not self.s.ledger.owns(record.partition):
                return None
            return await self.s.ledger.save(record)

        return await retry_forever(save, what=f"{record.window_id}: recording the sealed window")

    def _track(self, record: WindowRecord, requests: list[Request] | None, *, slot_held: bool) -> None:
        window = InFlightWindow(record, requests, self.s)
        if slot_held:
            task = self.s.tasks.spawn(record.partition, self._drive(window), name=record.window_id)
            # released by the callback: a task cancelled before its first step runs no finally
            task.add_done_callback(lambda _: self.slots.release())
        else:
            self.s.tasks.spawn(record.partition, self._resume(window), name=record.window_id)

    async def _resume(self, window: InFlightWindow) -> None:
        async with self.slots:
            await self._drive(window)

    async def _drive(self, window: InFlightWindow) -> None:
        self.s.metrics.batches_in_flight.inc()
        try:
            await window.run()
        finally:
            self.s.metrics.batches_in_flight.dec()
