"""A window's next step, decided from its record, its batch's state and the clock. Pure: no
I/O, no asyncio; the time (and the jitter's random source) is passed in. ``InFlightWindow``
(``agents/inflight.py``) carries each decision out and saves the record it names.

    sealed --submit or adopt--> submitted --watch--> ended at the provider
        completed / expired / cancelled: emit what succeeded, then
            done, or sealed again (round + 1) for what may be retried
        failed (token_limit_exceeded): sealed again, same round, after a backoff
        failed (otherwise): reject the lines it names, bisect, or dead-letter the round
        vanished (the provider no longer knows it): another round, as if nothing had a result
        late (``max_batch_latency``): cancel, emit the finished part, hedged --flex--> done

*Late* is decided here alone (:meth:`Policy.late`, and :func:`past` for the watch that
cancels at :meth:`Policy.hedge_at`): once a window is late nothing of it is submitted again;
what a round still owes, and every deferred group, goes flex.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agents.outcomes import FailedBatch, plan_failed_batch
from agents.retry import backoff
from providers.base import MISSING, Job, LineOutcome
from streams.config import PipelineSettings
from streams.models import ReasonCode
from streams.records import Status, WindowRecord


class Step(StrEnum):
    """What a window does next, by its status."""

    #: ``sealed``: create the round's batch (or adopt the one an earlier create call made).
    SUBMIT = "submit"
    #: ``submitted``: wait for the batch to end; cancel it at :meth:`Policy.hedge_at`.
    WATCH = "watch"
    #: ``hedged``: serve what it still owes through flex, then done.
    SERVE_FLEX = "serve_flex"
    #: ``done``: nothing; the window's driver returns.
    FINISHED = "finished"


_STEPS = {Status.SEALED: Step.SUBMIT, Status.SUBMITTED: Step.WATCH, Status.HEDGED: Step.SERVE_FLEX,
          Status.DONE: Step.FINISHED}  # fmt: skip


def next_step(record: WindowRecord) -> Step:
    """The step a window takes from its record (after a restart too: the record is the whole state)."""
    return _STEPS[Status(record.status)]


def past(deadline: float | None, now: float) -> bool:
    """Whether ``now`` is at or past ``deadline`` (None: there is none)."""
    return deadline is not None and now >= deadline


@dataclass(frozen=True, slots=True)
class Policy:
    """What the planner takes from the pipeline's configuration."""

    #: Seconds from a window's first submission after which it is late (None: never).
    max_batch_latency: float | None = None
    #: Tries a request gets before ``retries_exhausted`` (``retry.attempts``).
    attempts: int = 3
    backoff_initial: float = 1.0
    backoff_max: float = 60.0

    @classmethod
    def of(cls, cfg: PipelineSettings) -> Policy:
        return cls(cfg.max_batch_latency, cfg.retry.attempts, cfg.retry.backoff_initial, cfg.retry.backoff_max)

    def hedge_at(self, record: WindowRecord) -> float | None:
        """When the window turns late: ``max_batch_latency`` after its first submission."""
        if self.max_batch_latency is None or record.first_submitted_at is None:
            return None
        return record.first_submitted_at + self.max_batch_latency

    def late(self, record: WindowRecord, now: float) -> bool:
        """Whether the window is late at ``now``: the one place that says so."""
        return past(self.hedge_at(record), now)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        return backoff(attempt, initial=self.backoff_initial, maximum=self.backoff_max, rng=rng)


class Ended(StrEnum):
    """What a watched batch's last status means for its round."""

    #: It ended (completed, expired, cancelled): read its outcomes, then :func:`plan_round`.
    READ_RESULTS = "read_results"
    #: Cancelled late and still not final after ``cancel_wait``: nothing of it is read (every
    #: request is settled as without a result: it is late, so all of it goes flex).
    UNREAD = "unread"
    #: It failed as a whole (nothing ran): :func:`plan_failed`.
    FAILED = "failed"
    #: Late, and its status could not be read: the whole round goes flex, whatever it says later.
    HEDGE_ALL = "hedge_all"


def after_watch(batch: Job | None) -> Ended:
    """What to do with the batch a watch returned (None: late and unreadable)."""
    if batch is None:
        return Ended.HEDGE_ALL
    if batch.state == "failed":
        return Ended.FAILED
    return Ended.READ_RESULTS if batch.terminal else Ended.UNREAD


class Fate(StrEnum):
    """What one request of an ended round comes to."""

    RESULT = "result"
    #: Into the next round (or flex, when the window is late).
    RETRY = "retry"
    RETRIES_EXHAUSTED = "retries_exhausted"
    PROVIDER_REJECTED = "provider_rejected"


#: The dead letter's reason of each fate that ends as one.
REASONS: dict[Fate, ReasonCode] = {Fate.RETRIES_EXHAUSTED: "retries_exhausted",
                                   Fate.PROVIDER_REJECTED: "provider_rejected"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """An ended round: each request's fate (in the order given), the window's next record, and
    how long to wait before that record's round is submitted (a backoff before a retry)."""

    fates: tuple[Fate, ...]
    record: WindowRecord
    delay: float = 0.0


def plan_round(
    record: WindowRecord,
    outcomes: Sequence[tuple[int, LineOutcome]],
    *,
    policy: Policy,
    now: float,
    rng: random.Random | None = None,
) -> RoundPlan:
    """Settle a round from each request's ``(offset, outcome)``: results, retries (up to
    ``policy.attempts`` tries; late, no limit: they go flex), dead letters; then the next record:
    hedged when late and anything is still owed, else the next deferred group, the retries, or done.
    """
    late = policy.late(record, now)
    fates = tuple(_fate(outcome, late or record.attempts < policy.attempts) for _, outcome in outcomes)
    retry = [offset for (offset, _), fate in zip(outcomes, fates, strict=True) if fate is Fate.RETRY]
    if late and (retry or record.deferred):
        return RoundPlan(fates, record.hedged(retry))
    following = record.after_round(retry, now)
    retried = following.status == Status.SEALED and following.attempts > record.attempts
    return RoundPlan(fates, following, policy.backoff(record.attempts, rng) if retried else 0.0)


def _fate(outcome: LineOutcome, may_retry: bool) -> Fate:
    if outcome.kind == "ok":
        return Fate.RESULT
    if outcome.kind == "retry":
        return Fate.RETRY if may_retry else Fate.RETRIES_EXHAUSTED
    return Fate.PROVIDER_REJECTED


def plan_vanished(
    record: WindowRecord, offsets: Sequence[int], *, policy: Policy, now: float, rng: random.Random | None = None
) -> RoundPlan:
    """The provider no longer knows the round's batch (or its results): a round in which no
    request had a result (a try: bounded by ``policy.attempts``)."""
    return plan_round(record, [(o, MISSING) for o in offsets], policy=policy, now=now, rng=rng)


class Recovery(StrEnum):
    """What follows a batch that failed as a whole (:class:`agents.outcomes.FailedBatch` says why)."""

    #: The provider's token quota was full: the same round, after :attr:`FailedPlan.delay`.
    BACK_OFF = "back_off"
    #: The round as two halves, each a round of its own.
    BISECT = "bisect"
    #: The requests in :attr:`FailedPlan.rejected` end as dead letters; the rest go again (or flex, late).
    REJECT = "reject"
    #: Late, with nothing to reject: the whole round goes flex.
    HEDGE = "hedge"


@dataclass(frozen=True, slots=True)
class FailedPlan:
    """A failed batch's next step and the window's next record."""

    recovery: Recovery
    verdict: FailedBatch
    record: WindowRecord
    #: Request index -> the error naming its line (None: the batch's errors are its reason).
    rejected: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    delay: float = 0.0


def plan_failed(
    record: WindowRecord,
    errors: list[dict[str, Any]],
    offsets: Sequence[int],
    *,
    policy: Policy,
    now: float,
    rng: random.Random | None = None,
) -> FailedPlan:
    """A batch of the round's requests (at ``offsets``, in file order) failed as a whole, or was
    refused at create: resubmit, isolate its bad lines, or bisect; late, nothing goes again."""
    late = policy.late(record, now)
    # Line numbers count the file's lines: trust them only when every request of the round is here.
    expected = len(record.offsets) if record.offsets is not None else record.count
    verdict = plan_failed_batch(errors, len(offsets), failed_before=record.failed_batches,
                                window_size=record.count, lines_trusted=len(offsets) == expected)  # fmt: skip
    if verdict.action in ("token_limit", "bisect") and late:
        return FailedPlan(Recovery.HEDGE, verdict, record.hedged(offsets))
    if verdict.action == "token_limit":
        again = record.next_round(offsets, now, attempts=record.attempts, same_round=True)
        return FailedPlan(Recovery.BACK_OFF, verdict, again, delay=policy.backoff(record.round, rng))
    if verdict.action == "bisect":
        half = len(offsets) // 2
        return FailedPlan(Recovery.BISECT, verdict, record.bisected(offsets[:half], offsets[half:], now))
    named: dict[int, dict[str, Any] | None] = dict(verdict.lines)
    rejected = named if verdict.action == "reject_lines" else dict.fromkeys(range(len(offsets)))
    rest = [offset for i, offset in enumerate(offsets) if i not in rejected]
    following = record.hedged(rest) if late and (rest or record.deferred) else record.resubmitted(rest, now)
    return FailedPlan(Recovery.REJECT, verdict, following, rejected)
