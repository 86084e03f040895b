"""The batch lane without Kafka: a window's record transitions for each provider outcome.

Provider calls go through the openai SDK to the in-process emulator; the state topic is a
ledger over memory and the output topics are memory sinks, so each test reads exactly which
records the window wrote, in which order, and what it emitted.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from agents.batches import BatchLane
from streams.letters import DeadLetter
from streams.models import Result
from streams.offsets import Frontier, Pending
from streams.windows import WindowPolicy
from tests.agents.lanes import Lane


def _ids(records: Iterable[Result | DeadLetter]) -> list[str]:
    return sorted(r.id for r in records)


async def test_completed_batch_emits_every_result_then_records_done(emulator, make_lane):
    lane = make_lane()
    record, requests = await lane.run(20)
    results, dead = lane.fates()
    assert lane.statuses == [("sealed", 1, None), ("sealed", 1, None), ("submitted", 1, None), ("done", 1, None)]
    assert lane.backend.writes[1].create_started_at is not None, "the create call is recorded before it starts"
    assert record.status == "done" and record.batch_id is not None
    assert _ids(results) == _ids(requests) and dead == []
    assert {r.batch_id for r in results} == {record.batch_id}
    assert emulator.emulator.stats["batches_created"] == 1


async def test_token_limit_exceeded_resubmits_the_same_round(emulator, make_lane):
    emulator.emulator.faults.token_limit = 1
    lane = make_lane()
    _, requests = await lane.run(10)
    results, dead = lane.fates()
    assert [(s, r) for s, r, _ in lane.statuses] == [
        ("sealed", 1), ("sealed", 1), ("submitted", 1), ("sealed", 1), ("sealed", 1), ("submitted", 1), ("done", 1),
    ]  # fmt: skip
    assert _ids(results) == _ids(requests) and dead == []


@pytest.mark.parametrize("ending", ["expired", "cancelled"])
async def test_an_ended_batch_keeps_its_finished_part_and_resubmits_the_rest(emulator, make_lane, ending: str):
    emu = emulator.emulator
    emu.faults.batch_outcomes = [ending]
    emu.faults.expire_after_fraction = 0.4
    lane = make_lane()
    _, requests = await lane.run(20)
    results, dead = lane.fates()
    writes = lane.backend.writes
    assert [(s, r) for s, r, _ in lane.statuses] == [
        ("sealed", 1), ("sealed", 1), ("submitted", 1), ("sealed", 2), ("sealed", 2), ("submitted", 2), ("done", 2),
    ]  # fmt: skip
    second_round = writes[3].offsets
    assert second_round is not None and 0 < len(second_round) < 20, "only the unfinished part goes again"
    assert _ids(results) == _ids(requests) and dead == []
    first, second = writes[2].batch_id, writes[5].batch_id
    assert sum(r.batch_id == first for r in results) == 20 - len(second_round)
    assert sum(r.batch_id == second for r in results) == len(second_round)


async def test_item_errors_go_round_by_round_until_attempts_run_out(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.item_error_rate = 1.0
    emu.faults.item_error_status = 500
    lane = make_lane()
    _, requests = await lane.run(8)
    results, dead = lane.fates()
    assert lane.statuses == [
        ("sealed", 1, None), ("sealed", 1, None), ("submitted", 1, None),
        ("sealed", 2, 8), ("sealed", 2, 8), ("submitted", 2, 8),
        ("sealed", 3, 8), ("sealed", 3, 8), ("submitted", 3, 8),
        ("done", 3, None),
    ]  # fmt: skip
    assert results == []
    assert _ids(dead) == _ids(requests)
    assert {(d.reason, d.attempts) for d in dead} == {("retries_exhausted", 3)}


async def test_rejected_items_are_dead_letters_at_once(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.item_error_rate = 1.0
    emu.faults.item_error_status = 400
    lane = make_lane()
    _, requests = await lane.run(5)
    results, dead = lane.fates()
    assert [s for s, _, _ in lane.statuses] == ["sealed", "sealed", "submitted", "done"]
    assert {(d.reason, d.attempts) for d in dead} == {("provider_rejected", 1)}
    assert _ids(dead) == _ids(requests) and results == []


async def test_a_late_batch_is_hedged_and_its_rest_served_by_flex(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.batch_seconds = 2.0  # the provider finishes requests steadily over 2 s
    lane = make_lane(
        max_batch_latency="800ms",
        flex={"concurrency": 4, "attempts": 2, "budget": "10s", "backoff_initial": "10ms", "fallback": "standard"},
    )
    _, requests = await lane.run(24)
    results, dead = lane.fates()
    statuses = [s for s, _, _ in lane.statuses]
    assert statuses == ["sealed", "sealed", "submitted", "hedged", "done"]
    owed = lane.backend.writes[3].offsets
    assert owed is not None and 0 < len(owed) < 24, "the finished part is kept, the rest is owed"
    assert _ids(results) == _ids(requests) and dead == []
    assert sum(r.mode == "flex" for r in results) == len(owed) == emu.stats["flex_requests"]
    assert emu.stats["batches_cancel_requested"] == 1


async def _batch_lane(lane: Lane, max_requests: int) -> BatchLane:
    await lane.services.ledger.load([0])
    return BatchLane(lane.services, WindowPolicy(max_requests=max_requests, max_bytes=10**6, max_wait=3600))


async def test_the_lane_seals_at_max_requests_and_finishes_events_only_once_recorded(emulator, make_lane):
    lane = make_lane()
    services = lane.services
    batches = await _batch_lane(lane, 5)
    frontier = Frontier()
    requests = lane.requests(7)
    for request in requests:
        frontier.received(request.source.offset)
        await batches.add(Pending(request, frontier, len(request.jsonl_line())))
    assert frontier.position == 5, "the sealed window's five events are finished, the open window's two are not"
    assert [(r.status, r.first_offset, r.last_offset) for r in lane.backend.writes[:1]] == [("sealed", 0, 4)]
    await services.tasks.close()
    await lane.client.close()


async def test_a_window_sealed_after_its_partition_was_revoked_is_dropped(emulator, make_lane):
    lane = make_lane()
    batches = await _batch_lane(lane, 2)
    frontier = Frontier()
    first, second = lane.requests(2)
    frontier.received(0)
    frontier.received(1)
    await batches.add(Pending(first, frontier, 10))
    frontier.close()  # revoked (and perhaps assigned again) before the window sealed
    await batches.add(Pending(second, frontier, 10))
    assert lane.backend.writes == [], "nothing recorded: the next owner reads both events again"
    await lane.client.close()


async def test_an_event_of_a_revoked_assignment_never_joins_a_window_of_the_next(emulator, make_lane):
    lane = make_lane()
    batches = await _batch_lane(lane, 2)
    old, new = Frontier(), Frontier()
    late, first, second = lane.requests(3)
    old.received(0)
    old.close()  # revoked; its flex call fell back to batch after that
    await batches.add(Pending(late, old, 10))
    for request in (first, second):
        new.received(request.source.offset)
        await batches.add(Pending(request, new, 10))
    assert [(r.status, r.first_offset, r.last_offset) for r in lane.backend.writes[:1]] == [("sealed", 1, 2)]
    assert new.position == 3, "the next assignment's events are finished once their window is recorded"
    await lane.services.tasks.close()
    await lane.client.close()
