"""A window round that did not run as submitted: its batch failed as a whole (nothing ran),
was refused at create, vanished from the provider, or left results too large to read. Part of
:class:`agents.inflight.InFlightWindow`: what to do next is decided by ``agents.planner``
(``plan_failed``, over ``agents.outcomes.plan_failed_batch``, and ``plan_vanished``); here it
is carried out (resubmit, isolate the bad lines, bisect, another round, or flex), with the
window's records saved.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agents.planner import FailedPlan, Recovery, plan_failed, plan_vanished
from agents.window_steps import WindowSteps
from providers import Job
from providers.base import BatchRefused, BatchVanished, ResultsTooLarge, SdkRefused

log = logging.getLogger(__name__)


class FailedRounds(WindowSteps):
    """The failed-round steps of a window in flight."""

    async def _refused(self, exc: BatchRefused | SdkRefused) -> None:
        """The round's requests were refused at create: a failed batch that never existed."""
        errors = exc.errors if isinstance(exc, BatchRefused) else [
            {"code": "sdk_refused", "line": None, "message": str(exc)}]  # fmt: skip
        await self._failed(Job(id="", status="refused", state="failed", created_at=time.time(), errors=errors))

    async def _vanished(self, exc: BatchVanished) -> None:
        """The provider no longer knows the round's batch, or its results file: nothing of it can
        be had, so the round goes again as if every request had no result (a try: bounded by
        ``retry.attempts``, then ``retries_exhausted`` dead letters)."""
        log.warning("%s: %s; its requests go another round", self.record.window_id, exc)
        requests = await self.memory.ensure()
        await self._quota.release()
        gone = Job(id=self.record.batch_id or "", status="vanished", state="ended", created_at=time.time())
        plan = plan_vanished(self.record, [r.source.offset for r in requests], policy=self.policy, now=time.time())
        await self.s.tasks.shield(self.record.partition, self._emit_round(gone, None, plan))

    async def _too_large(self, batch: Job, exc: ResultsTooLarge) -> None:
        """Results too large to download: every request of the round ends as a dead letter naming
        the setting (they ran and were billed; raising the cap and replaying them runs them again)."""
        assert self.requests is not None
        await self._quota.release()
        log.error("%s: %s; the round's %d requests end as batch_results_too_large dead letters",
                  self.record.window_id, exc, len(self.requests))  # fmt: skip
        unit = self._unit()
        for request in self.requests:
            unit.dead_letter(request, "batch_results_too_large", str(exc), attempts=self.record.attempts,
                             batch_id=batch.id)  # fmt: skip
        await self.s.tasks.shield(self.record.partition, self._save(self.record.done(), unit))
        await self.s.client.cleanup(batch)

    async def _failed(self, batch: Job) -> None:
        """A batch that failed as a whole (nothing ran): carry out the planner's recovery."""
        assert self.requests is not None
        record, staged = self.record, self.record.input_file_id
        plan = plan_failed(record, batch.errors, [r.source.offset for r in self.requests], policy=self.policy,
                           now=time.time())  # fmt: skip
        self.s.metrics.batch_failed(plan.verdict.action)
        log.info("%s: batch %s of %d requests failed (%s): %s", record.window_id, batch.id or "(refused at create)",
                 len(self.requests), plan.verdict.summary, plan.verdict.action.replace("_", " "))  # fmt: skip
        if plan.verdict.action == "token_limit":
            self._quota.refused()
        await self._quota.release()
        if plan.recovery is Recovery.BACK_OFF:
            self.s.metrics.backpressure.inc()
            self.memory.park()
            await asyncio.sleep(plan.delay)
            await self._save(plan.record)
        else:
            await self.s.tasks.shield(record.partition, self._isolate(batch, plan))
        await self.s.client.cleanup(batch)
        if batch.id and batch.input_file_id is None and self.record.input_file_id != staged:
            await self.s.client.discard_staged(staged)  # the failed round's file, no longer the record's

    async def _isolate(self, batch: Job, plan: FailedPlan) -> None:
        """Dead-letter the requests the plan rejects, and save its next record with them."""
        assert self.requests is not None
        outbox, name = self._unit(), batch.id or "refused at create"
        for index, error in plan.rejected.items():
            if error is None:
                message, detail = f"batch {name} failed: {plan.verdict.summary}", {"batch_errors": batch.errors}
            else:
                message = f"batch {name} rejected line {index + 1}: {error.get('code')}: {error.get('message')}"
                detail = error
            reason = plan.verdict.reason if error is None else "provider_rejected"
            outbox.dead_letter(self.requests[index], reason, message, attempts=self.record.attempts,
                               batch_id=batch.id or None, error=detail)  # fmt: skip
        await self._save(plan.record, outbox if plan.rejected else None)
