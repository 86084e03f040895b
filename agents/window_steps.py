"""What every step of a window in flight works with: its record, its requests, its share of the
token quota, and the writes that move it to its next record. The steps themselves are in
``agents/submission.py`` (sealed), ``agents/failed_rounds.py`` (a round that did not run as
submitted) and ``agents/inflight.py`` (the driver: watch, settle, serve flex); what each step
decides comes from ``agents/planner.py``.
"""

from __future__ import annotations

import time

from agents.outbox import Outbox, stamps
from agents.planner import REASONS, Fate, Policy, RoundPlan, Step, next_step
from agents.quota import RoundQuota
from agents.rounds import RoundRequests, reread_round
from agents.services import WindowServices
from providers import Job, LineOutcome
from providers.base import MISSING
from streams.models import Request
from streams.records import WindowRecord


class WindowSteps:
    """One window's state in flight, and the writes every step shares."""

    def __init__(self, record: WindowRecord, requests: list[Request] | None, services: WindowServices) -> None:
        self.record = record
        self.s = services
        self.policy = Policy.of(services.cfg)
        #: Whether a batch may exist that this worker does not know of (restored, or a step failed).
        self._look_first = requests is None
        self._quota = RoundQuota(
            services.quotas.of(record.model), services.estimate, record.window_id, services.provider.facts.usage
        )
        #: The window's requests in memory, read back from the input topic when let go.
        self.memory = RoundRequests(requests, services.held, self._reread)

    @property
    def requests(self) -> list[Request] | None:
        """The current round's requests; None when not in memory (restored, or let go while waiting)."""
        return self.memory.current

    async def _reread(self) -> list[Request]:
        return await reread_round(self.record, self.s.cfg, self.s.reader, self.s.outbox, self.s.ledger,
                                  self.memory.ended)  # fmt: skip

    def _unit(self) -> Outbox:
        """An outbox unit for this window's records: its results carry the ``task_version`` the
        window was sealed with, whatever the pipeline's configuration says by then."""
        unit = self.s.outbox.unit()
        version = (self.record.task or {}).get("task_version")
        if isinstance(version, str):
            unit.task_version = version
        return unit

    async def _save(self, record: WindowRecord, unit: Outbox | None = None) -> None:
        """Write the window's next record with the unit's records (one transaction under ``exactly_once``)."""
        self.record = await self.s.ledger.save(record, unit)
        if next_step(record) is Step.FINISHED:
            self.memory.let_go()
            self.s.metrics.batches_done.inc()
        elif record.offsets is not None:
            self.memory.follow(record.offsets)

    async def _emit_round(self, batch: Job, outcomes: list[LineOutcome] | None, plan: RoundPlan) -> None:
        """Write each request's fate as the plan (made from ``self.requests``, in order) says, and
        with them the plan's next record. ``outcomes``: each request's line, in the same order
        (None: no line for any)."""
        assert self.requests is not None
        record, outbox = self.record, self._unit()
        submitted, completed = batch.created_at, batch.ended_at or time.time()
        lines = outcomes if outcomes is not None else [MISSING] * len(self.requests)
        for request, fate, outcome in zip(self.requests, plan.fates, lines, strict=True):
            if fate is Fate.RESULT:
                assert outcome.body is not None
                outbox.result(request, outcome.body, attempts=record.attempts, batch_id=batch.id,
                              timestamps=stamps(request, submitted=submitted, completed=completed))  # fmt: skip
            elif fate is not Fate.RETRY:
                outbox.dead_letter(request, REASONS[fate], outcome.message, attempts=record.attempts,
                                   batch_id=batch.id, error=outcome.error)  # fmt: skip
        await self._save(plan.record, outbox)
