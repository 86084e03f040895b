"""A window round that did not run as submitted: its batch failed as a whole (nothing ran),
was refused at create, or vanished from the provider. Part of :class:`agents.inflight.InFlightWindow`:
what to do next is decided by ``agents.outcomes.plan_failed_batch``; here it is carried out
(resubmit, isolate the bad lines, bisect, or another round), with the window's records saved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from agents.outbox import Outbox
from agents.outcomes import FailedBatch, plan_failed_batch
from agents.quota import RoundQuota
from agents.rounds import RoundRequests
from agents.services import WindowServices
from providers import Job, LineOutcome
from providers.base import BatchVanished
from streams.models import Request
from streams.records import WindowRecord

log = logging.getLogger(__name__)


class FailedRounds:
    """The failed-round steps of a window in flight (mixed into ``InFlightWindow``, which has
    the attributes and steps declared here)."""

    record: WindowRecord
    s: WindowServices
    memory: RoundRequests
    _quota: RoundQuota

    @property
    def requests(self) -> list[Request] | None:
        raise NotImplementedError

    def _unit(self) -> Outbox:
        raise NotImplementedError

    async def _save(self, record: WindowRecord, unit: Outbox | None = None) -> None:
        raise NotImplementedError

    def _backoff(self, attempt: int) -> float:
        raise NotImplementedError

    def _hedge_at(self) -> float | None:
        raise NotImplementedError

    def _settle(self, batch: Job, outcomes: dict[str, LineOutcome], hedged: bool) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    async def _vanished(self, exc: BatchVanished) -> None:
        """The provider no longer knows the round's batch, or its results file: nothing of it can
        be had, so the round goes again as if every request had no result (a try: bounded by
        ``retry.attempts``, then ``retries_exhausted`` dead letters)."""
        log.warning("%s: %s; its requests go another round", self.record.window_id, exc)
        await self.memory.ensure()
        await self._quota.release()
        gone = Job(id=self.record.batch_id or "", status="vanished", state="ended", created_at=time.time())
        hedge_at = self._hedge_at()
        await self.s.tasks.shield(self.record.partition, self._settle(gone, {}, hedge_at is not None and
                                                                      time.time() >= hedge_at))  # fmt: skip

    async def _failed(self, batch: Job, *, late: bool) -> None:
        """A batch that failed as a whole (nothing ran): resubmit, isolate its bad lines, or bisect.

        Past ``max_batch_latency`` nothing is resubmitted: what is not rejected goes flex.
        """
        assert self.requests is not None
        record = self.record
        staged = record.input_file_id
        errors = batch.errors
        # Line numbers count the file's lines: trust them only when every request of the round is here.
        expected = len(record.offsets) if record.offsets is not None else record.count
        plan = plan_failed_batch(errors, len(self.requests), failed_before=record.failed_batches,
                                 window_size=record.count, lines_trusted=len(self.requests) == expected)  # fmt: skip
        self.s.metrics.batch_failed(plan.action)
        log.info("%s: batch %s of %d requests failed (%s): %s", record.window_id, batch.id or "(refused at create)",
                 len(self.requests), plan.summary, plan.action.replace("_", " "))  # fmt: skip
        if plan.action == "token_limit":
            self._quota.refused()
        await self._quota.release()
        if plan.action == "token_limit" and not late:
            delay = self._backoff(record.round)
            self.s.metrics.backpressure.inc()
            offsets = [r.source.offset for r in self.requests]
            self.memory.park()
            await asyncio.sleep(delay)
            await self._save(record.next_round(offsets, time.time(), attempts=record.attempts, same_round=True))
        else:
            await self.s.tasks.shield(record.partition, self._isolate(batch, plan, errors, late=late))
        await self.s.client.cleanup(batch)
        if batch.id and batch.input_file_id is None and self.record.input_file_id != staged:
            await self.s.client.discard_staged(staged)  # the failed round's file, no longer the record's

    async def _isolate(self, batch: Job, plan: FailedBatch, errors: list[dict[str, Any]], *, late: bool) -> None:
        assert self.requests is not None
        requests, record, outbox, now = self.requests, self.record, self._unit(), time.time()
        batch_id, name = batch.id or None, batch.id or "refused at create"
        if plan.action in ("bisect", "token_limit") and late:
            await self._save(record.hedged(r.source.offset for r in requests))
            return
        if plan.action == "bisect":
            half = len(requests) // 2
            first, second = requests[:half], requests[half:]
            await self._save(record.bisected((r.source.offset for r in first), (r.source.offset for r in second), now))
            return
        rejected = plan.lines if plan.action == "reject_lines" else dict.fromkeys(range(len(requests)))
        for index, error in rejected.items():
            if error is None:
                message, detail = f"batch {name} failed: {plan.summary}", {"batch_errors": errors}
            else:
                message = f"batch {name} rejected line {index + 1}: {error.get('code')}: {error.get('message')}"
                detail = error
            reason = plan.reason if error is None else "provider_rejected"
            outbox.dead_letter(requests[index], reason, message, attempts=record.attempts, batch_id=batch_id,
                               error=detail)  # fmt: skip
        rest = [r.source.offset for i, r in enumerate(requests) if i not in rejected]
        if late and (rest or record.deferred):
            await self._save(record.hedged(rest), outbox)
            return
        await self._save(record.resubmitted(rest, now), outbox)
