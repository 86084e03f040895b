"""The window planner alone: every transition of a window's life from a record, a batch's state
and a clock, without Kafka or HTTP."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.outcomes import BISECT_FAILURES_PER_HALVING
from agents.planner import (
    REASONS,
    Ended,
    Fate,
    Policy,
    Recovery,
    Step,
    after_watch,
    next_step,
    past,
    plan_failed,
    plan_round,
    plan_vanished,
)
from providers.base import MISSING, Job, JobState, LineOutcome
from streams.records import Status, WindowRecord

SUBMITTED_AT = 100.0
POLICY = Policy(max_batch_latency=60.0, attempts=3, backoff_initial=2.0, backoff_max=30.0)
BEFORE, LATE = SUBMITTED_AT + 10.0, SUBMITTED_AT + 60.0
OK = LineOutcome("ok", body={"choices": []})
RETRY = LineOutcome("retry", error={"code": "server_error", "message": "try again"})
FAIL = LineOutcome("fail", error={"code": "invalid_request", "message": "no"})


def _record(count: int = 4, **update: Any) -> WindowRecord:
    record = WindowRecord(
        window_id="p-0-0", pipeline="p", partition=0, endpoint="/v1/chat/completions", model="m",
        first_offset=0, last_offset=count - 1, count=count, status=Status.SUBMITTED, sealed_at=90.0,
        batch_id="batch_1", submitted_at=SUBMITTED_AT, first_submitted_at=SUBMITTED_AT,
    )  # fmt: skip
    return record.model_copy(update=update)


def _job(state: JobState) -> Job:
    return Job(id="batch_1", status=state, state=state, created_at=SUBMITTED_AT)


def _lines(record: WindowRecord, *outcomes: LineOutcome) -> list[tuple[int, LineOutcome]]:
    return list(zip(record.owed_now, outcomes, strict=True))


# -- the step a status asks for ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "step"),
    [(Status.SEALED, Step.SUBMIT), (Status.SUBMITTED, Step.WATCH), (Status.HEDGED, Step.SERVE_FLEX),
     (Status.DONE, Step.FINISHED)],
)  # fmt: skip
def test_each_status_names_its_step(status: Status, step: Step) -> None:
    assert next_step(_record(status=status)) is step
    # a record copied with a bare string (no validation) is dispatched the same
    assert next_step(_record(status=status.value)) is step


# -- late --------------------------------------------------------------------------------------
def test_a_window_is_late_from_max_batch_latency_after_its_first_submission() -> None:
    record = _record()
    assert POLICY.hedge_at(record) == SUBMITTED_AT + 60.0
    assert not POLICY.late(record, LATE - 0.001)
    assert POLICY.late(record, LATE)


def test_no_latency_or_no_submission_yet_is_never_late() -> None:
    assert Policy(max_batch_latency=None).hedge_at(_record()) is None
    assert not Policy(max_batch_latency=None).late(_record(), 1e12)
    assert not POLICY.late(_record(status=Status.SEALED, first_submitted_at=None), 1e12)
    assert not past(None, 1e12)
    assert past(5.0, 5.0)
    assert not past(5.0, 4.9)


# -- what a watched batch's status means ---------------------------------------------------------
@pytest.mark.parametrize(
    ("batch", "ended"),
    [(None, Ended.HEDGE_ALL), (_job("failed"), Ended.FAILED), (_job("ended"), Ended.READ_RESULTS),
     (_job("ending"), Ended.UNREAD), (_job("running"), Ended.UNREAD)],
)  # fmt: skip
def test_a_watched_batch_is_read_failed_unread_or_hedged_whole(batch: Job | None, ended: Ended) -> None:
    assert after_watch(batch) is ended


# -- an ended round ----------------------------------------------------------------------------
def test_a_round_all_ok_is_done_without_delay() -> None:
    record = _record()
    plan = plan_round(record, _lines(record, OK, OK, OK, OK), policy=POLICY, now=BEFORE)
    assert plan.fates == (Fate.RESULT,) * 4
    assert plan.record.status is Status.DONE and plan.record.offsets is None
    assert plan.delay == 0.0


def test_retryable_items_go_a_next_round_after_a_backoff() -> None:
    record = _record()
    plan = plan_round(record, _lines(record, OK, RETRY, FAIL, RETRY), policy=POLICY, now=BEFORE, rng=random.Random(1))
    assert plan.fates == (Fate.RESULT, Fate.RETRY, Fate.PROVIDER_REJECTED, Fate.RETRY)
    assert (plan.record.status, plan.record.round, plan.record.attempts) == (Status.SEALED, 2, 2)
    assert plan.record.offsets == [1, 3] and plan.record.batch_id is None and plan.record.sealed_at == BEFORE
    assert 1.0 <= plan.delay <= 2.0  # backoff of attempt 1: uniform in [initial/2, initial]


def test_retries_run_out_at_the_last_attempt() -> None:
    record = _record(attempts=3)
    plan = plan_round(record, _lines(record, OK, RETRY, RETRY, OK), policy=POLICY, now=BEFORE)
    assert plan.fates == (Fate.RESULT, Fate.RETRIES_EXHAUSTED, Fate.RETRIES_EXHAUSTED, Fate.RESULT)
    assert plan.record.status is Status.DONE and plan.delay == 0.0
    assert REASONS[Fate.RETRIES_EXHAUSTED] == "retries_exhausted"
    assert REASONS[Fate.PROVIDER_REJECTED] == "provider_rejected"


def test_a_late_round_hedges_its_retries_and_deferred_groups_whatever_the_attempts() -> None:
    record = _record(attempts=3, deferred=[([7, 8], 3)], count=10, offsets=[0, 1, 2])
    plan = plan_round(record, _lines(record, OK, RETRY, FAIL), policy=POLICY, now=LATE)
    assert plan.fates == (Fate.RESULT, Fate.RETRY, Fate.PROVIDER_REJECTED)
    assert plan.record.status is Status.HEDGED and plan.record.offsets == [1, 7, 8] and plan.record.deferred == []
    assert plan.delay == 0.0


def test_a_late_round_that_owes_nothing_is_done() -> None:
    record = _record()
    plan = plan_round(record, _lines(record, OK, FAIL, OK, OK), policy=POLICY, now=LATE)
    assert plan.record.status is Status.DONE


def test_a_late_round_with_deferred_groups_only_hedges_them() -> None:
    record = _record(count=10, offsets=[0, 1], deferred=[([5, 6], 1)])
    plan = plan_round(record, _lines(record, OK, OK), policy=POLICY, now=LATE)
    assert plan.record.status is Status.HEDGED and plan.record.offsets == [5, 6]


def test_the_next_deferred_group_on_the_same_attempt_goes_without_backoff() -> None:
    record = _record(count=10, offsets=[0, 1], deferred=[([5, 6], 1)])
    plan = plan_round(record, _lines(record, OK, RETRY), policy=POLICY, now=BEFORE)
    assert (plan.record.status, plan.record.offsets, plan.record.attempts) == (Status.SEALED, [5, 6], 1)
    assert plan.record.deferred == [([1], 2)]
    assert plan.delay == 0.0


def test_an_unread_round_after_a_late_cancel_goes_flex_whole() -> None:
    record = _record()
    plan = plan_round(record, _lines(record, *[MISSING] * 4), policy=POLICY, now=LATE)
    assert plan.record.status is Status.HEDGED and plan.record.offsets == [0, 1, 2, 3]


# -- a vanished batch --------------------------------------------------------------------------
def test_a_vanished_batch_goes_another_round_as_a_try() -> None:
    record = _record()
    plan = plan_vanished(record, record.owed_now, policy=POLICY, now=BEFORE)
    assert plan.fates == (Fate.RETRY,) * 4
    assert (plan.record.status, plan.record.round, plan.record.attempts) == (Status.SEALED, 2, 2)
    assert plan.delay > 0


def test_a_vanished_batch_on_its_last_attempt_ends_as_retries_exhausted() -> None:
    record = _record(attempts=3)
    plan = plan_vanished(record, record.owed_now, policy=POLICY, now=BEFORE)
    assert plan.fates == (Fate.RETRIES_EXHAUSTED,) * 4 and plan.record.status is Status.DONE


def test_a_late_vanished_batch_goes_flex() -> None:
    plan = plan_vanished(_record(), [0, 1, 2, 3], policy=POLICY, now=LATE)
    assert plan.record.status is Status.HEDGED and plan.record.offsets == [0, 1, 2, 3]


# -- a batch failed as a whole -----------------------------------------------------------------
TOKEN_LIMIT = [{"code": "token_limit_exceeded", "line": None, "message": "enqueued token limit"}]
UNNAMED = [{"code": "invalid", "line": None, "message": "bad file"}]
LINE_2 = [{"code": "invalid", "line": 2, "message": "bad line"}]


def test_token_limit_goes_the_same_round_again_after_a_backoff() -> None:
    record = _record(round=2, attempts=2, offsets=[0, 1, 2, 3])
    plan = plan_failed(record, TOKEN_LIMIT, [0, 1, 2, 3], policy=POLICY, now=BEFORE, rng=random.Random(3))
    assert plan.recovery is Recovery.BACK_OFF and plan.verdict.action == "token_limit"
    assert (plan.record.status, plan.record.round, plan.record.attempts) == (Status.SEALED, 2, 2)
    assert plan.record.offsets == [0, 1, 2, 3] and plan.rejected == {}
    assert 2.0 <= plan.delay <= 4.0  # backoff of the round (2): uniform in [c/2, c], c = 2 * 2


def test_token_limit_when_late_goes_flex() -> None:
    plan = plan_failed(_record(), TOKEN_LIMIT, [0, 1, 2, 3], policy=POLICY, now=LATE)
    assert plan.recovery is Recovery.HEDGE and plan.record.status is Status.HEDGED and plan.delay == 0.0


def test_a_failure_naming_no_line_bisects_the_round_uncounted() -> None:
    record = _record()
    plan = plan_failed(record, UNNAMED, [0, 1, 2, 3], policy=POLICY, now=BEFORE)
    assert plan.recovery is Recovery.BISECT
    assert (plan.record.status, plan.record.offsets, plan.record.attempts) == (Status.SEALED, [0, 1], 1)
    assert plan.record.deferred == [([2, 3], 1)] and plan.record.failed_batches == 1


def test_a_bisection_when_late_goes_flex() -> None:
    plan = plan_failed(_record(), UNNAMED, [0, 1, 2, 3], policy=POLICY, now=LATE)
    assert plan.recovery is Recovery.HEDGE and plan.record.offsets == [0, 1, 2, 3]


def test_named_lines_are_rejected_and_the_rest_resubmitted_uncounted() -> None:
    record = _record(attempts=2)
    plan = plan_failed(record, LINE_2, [0, 1, 2, 3], policy=POLICY, now=BEFORE)
    assert plan.recovery is Recovery.REJECT and plan.rejected == {1: LINE_2[0]}
    assert (plan.record.status, plan.record.offsets, plan.record.attempts) == (Status.SEALED, [0, 2, 3], 2)
    assert plan.record.failed_batches == 1


def test_named_lines_when_late_send_the_rest_flex() -> None:
    plan = plan_failed(_record(), LINE_2, [0, 1, 2, 3], policy=POLICY, now=LATE)
    assert plan.recovery is Recovery.REJECT and plan.record.status is Status.HEDGED
    assert plan.record.offsets == [0, 2, 3]


def test_line_numbers_are_not_trusted_when_the_round_is_not_all_here() -> None:
    plan = plan_failed(_record(), LINE_2, [0, 1, 2], policy=POLICY, now=BEFORE)
    assert plan.recovery is Recovery.BISECT


def test_one_request_failing_its_batch_alone_is_the_culprit() -> None:
    record = _record(count=4, offsets=[2])
    plan = plan_failed(record, UNNAMED, [2], policy=POLICY, now=BEFORE)
    assert plan.recovery is Recovery.REJECT and plan.rejected == {0: None}
    assert plan.verdict.reason == "provider_rejected" and plan.record.status is Status.DONE


def test_a_spent_bisect_budget_dead_letters_the_round_as_batch_failed() -> None:
    spent = BISECT_FAILURES_PER_HALVING * 4  # the window (10 events) bisects ceil(log2(10 + 1)) == 4 times
    record = _record(failed_batches=spent, deferred=[([9], 1)], count=10, offsets=[0, 1, 2, 3])
    plan = plan_failed(record, UNNAMED, [0, 1, 2, 3], policy=POLICY, now=BEFORE)
    assert plan.recovery is Recovery.REJECT and plan.rejected == dict.fromkeys(range(4))
    assert plan.verdict.reason == "batch_failed"
    assert (plan.record.status, plan.record.offsets) == (Status.SEALED, [9])  # the next deferred group


def test_a_batch_refused_before_the_first_submission_is_never_late() -> None:
    record = _record(status=Status.SEALED, first_submitted_at=None, submitted_at=None, batch_id=None)
    plan = plan_failed(record, TOKEN_LIMIT, [0, 1, 2, 3], policy=POLICY, now=1e12)
    assert plan.recovery is Recovery.BACK_OFF


# -- properties: no plan goes backwards --------------------------------------------------------
_OUTCOMES = st.sampled_from([OK, RETRY, FAIL, MISSING])
_ERRORS = st.sampled_from([TOKEN_LIMIT, UNNAMED, LINE_2, []])


@st.composite
def _rounds(draw: st.DrawFn) -> tuple[WindowRecord, list[tuple[int, LineOutcome]], float]:
    count = draw(st.integers(1, 12))
    offsets = draw(st.one_of(st.none(), st.lists(st.integers(0, count - 1), min_size=1, unique=True).map(sorted)))
    rest = sorted(set(range(count)) - set(offsets or range(count)))
    deferred = [(rest, draw(st.integers(1, 4)))] if rest and draw(st.booleans()) else []
    record = _record(count=count, offsets=offsets, deferred=deferred, attempts=draw(st.integers(1, 4)),
                     round=draw(st.integers(1, 5)), failed_batches=draw(st.integers(0, 20)))  # fmt: skip
    outcomes = [(o, draw(_OUTCOMES)) for o in record.owed_now]
    return record, outcomes, draw(st.floats(SUBMITTED_AT, SUBMITTED_AT + 120.0))


def _never_backwards(before: WindowRecord, after: WindowRecord, now: float, settled: set[int]) -> None:
    owed_before = set(before.owed or before.owed_now)
    owed_after = set() if after.status is Status.DONE else set(after.owed or after.owed_now)
    assert owed_after <= owed_before, "a plan never owes an event it did not owe"
    assert not owed_after & settled, "an event settled now is owed no more"
    assert owed_before == owed_after | settled, "every owed event is settled or still owed"
    assert after.round >= before.round  # (attempts are per group: a deferred group may carry fewer)
    assert after.status in (Status.SEALED, Status.HEDGED, Status.DONE)
    if POLICY.late(before, now):
        assert after.status is not Status.SEALED, "a late window is never submitted again"


@given(_rounds())
@settings(max_examples=300, deadline=None)
def test_a_round_plan_never_goes_backwards(case: tuple[WindowRecord, list[tuple[int, LineOutcome]], float]) -> None:
    record, outcomes, now = case
    plan = plan_round(record, outcomes, policy=POLICY, now=now)
    settled = {o for (o, _), fate in zip(outcomes, plan.fates, strict=True) if fate is not Fate.RETRY}
    _never_backwards(record, plan.record, now, settled)
    assert plan.delay >= 0.0 and (plan.delay == 0.0 or plan.record.status is Status.SEALED)


@given(_rounds(), _ERRORS)
@settings(max_examples=300, deadline=None)
def test_a_failed_batch_plan_never_goes_backwards(
    case: tuple[WindowRecord, list[tuple[int, LineOutcome]], float], errors: list[dict[str, Any]]
) -> None:
    record, outcomes, now = case
    offsets = [o for o, _ in outcomes]
    plan = plan_failed(record, errors, offsets, policy=POLICY, now=now)
    settled = {offsets[i] for i in plan.rejected}
    _never_backwards(record, plan.record, now, settled)
    assert plan.record.failed_batches >= record.failed_batches
    assert (plan.recovery is Recovery.BACK_OFF) == (plan.delay > 0.0)
