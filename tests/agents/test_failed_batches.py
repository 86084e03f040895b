"""Batches that fail as a whole, batches that cannot be read, and the provider files a window
leaves behind: one window's life against the emulator (see ``tests/agents/lanes.py``)."""

from __future__ import annotations

import logging
import math

from agents.outcomes import BISECT_FAILURES_PER_HALVING


def _ids(records) -> list[str]:
    return sorted(r.id for r in records)


async def test_lines_the_provider_names_are_rejected_and_the_rest_resubmitted_uncounted(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.reject_lines_containing = "POISON"
    lane = make_lane(validate_requests=False)
    poison = {3, 11, 12}
    record, requests = await lane.run(20, poison=poison)
    results, dead = lane.fates()
    assert _ids(dead) == sorted(f"e{o}" for o in poison)
    assert {d.reason for d in dead} == {"provider_rejected"}
    assert all(d.error and (d.error["code"], d.error["line"]) == ("invalid_request", d.source.offset + 1) for d in dead)
    assert all(f"rejected line {d.source.offset + 1}" in d.message for d in dead)
    assert _ids(results) == sorted(r.id for r in requests if r.source.offset not in poison)
    assert {d.attempts for d in dead} == {1}
    assert (record.round, record.attempts) == (2, 1), "a resubmission of requests that never ran is not an attempt"
    assert emu.stats["batches_created"] == 2 and emu.stats["batches_failed"] == 1
    assert [(s, n) for s, _, n in lane.statuses][-4:] == [("sealed", 17), ("sealed", 17), ("submitted", 17),
                                                          ("done", None)]  # fmt: skip


async def test_a_batch_failed_without_line_numbers_is_bisected_down_to_its_poison(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.reject_lines_containing = "POISON"
    emu.faults.line_numbers = False
    lane = make_lane(validate_requests=False)
    record, requests = await lane.run(64, poison={41})
    results, dead = lane.fates()
    assert [(d.id, d.reason) for d in dead] == [("e41", "provider_rejected")]
    assert _ids(results) == sorted(r.id for r in requests if r.id != "e41")
    assert record.attempts == 1 and dead[0].attempts == 1
    # one failed batch per halving (64 -> 1: 7 batches), one good half per halving (6)
    assert emu.stats["batches_failed"] == 7
    assert emu.stats["batches_created"] == 13


async def test_a_provider_failing_every_batch_ends_the_window_within_the_bisect_budget(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.reject_lines_containing = "event"
    emu.faults.line_numbers = False
    lane = make_lane(validate_requests=False)
    _, requests = await lane.run(64)
    results, dead = lane.fates()
    assert results == [] and _ids(dead) == _ids(requests)
    budget = BISECT_FAILURES_PER_HALVING * math.ceil(math.log2(65))
    assert "batch_failed" in {d.reason for d in dead}
    assert budget < emu.stats["batches_created"] < 64, "bounded: far fewer batches than one per request"


async def test_a_batch_whose_status_cannot_be_read_is_hedged_at_max_batch_latency(emulator, make_lane, caplog):
    emu = emulator.emulator
    emu.faults.unreadable_next = 1  # for ever
    emu.faults.batch_seconds = 30  # still running when it is late
    lane = make_lane(
        max_batch_latency="1s",
        flex={"concurrency": 4, "attempts": 2, "budget": "10s", "backoff_initial": "10ms", "fallback": "standard"},
    )
    caplog.set_level(logging.WARNING)
    _, requests = await lane.run(12)
    results, dead = lane.fates()
    assert [s for s, _, _ in lane.statuses] == ["sealed", "sealed", "submitted", "hedged", "done"]
    assert dead == [] and _ids(results) == _ids(requests)
    assert {r.mode for r in results} == {"flex"}
    assert emu.stats["status_500"] >= 1 and emu.stats["batches_cancel_requested"] == 1
    warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert warnings and "status cannot be read; cancelling it" in warnings[-1]
    assert lane.services.metrics.unreadable.oldest_age() == 0.0, "no longer counted once the window moved on"


async def test_an_unreadable_batch_is_reported_while_it_lasts(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.unreadable_next, emu.faults.unreadable_seconds = 1, 1.5
    lane = make_lane()
    watch = lane.services.metrics.unreadable
    seen: list[float] = []
    original = watch.failed

    def failed(window_id, batch_id, error):
        original(window_id, batch_id, error)
        seen.append(watch.oldest_age())

    watch.failed = failed  # type: ignore[method-assign]
    _, requests = await lane.run(6)
    results, _ = lane.fates()
    assert _ids(results) == _ids(requests), "served once the reads recover"
    assert len(seen) >= 2 and seen[-1] > seen[0], "the age of the oldest unreadable batch grows"
    assert watch.oldest_age() == 0.0


async def test_a_window_deletes_its_files_at_the_provider(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.batch_outcomes = ["expired"]  # two rounds: two input files, outputs and errors
    emu.faults.item_error_rate, emu.faults.item_error_status = 0.2, 400
    await make_lane().run(30)
    assert emu.stats["files_uploaded"] == 2
    assert emu.files == {}, "every input, output and error file deleted"


async def test_delete_files_false_keeps_them(emulator, make_lane):
    emu = emulator.emulator
    lane = make_lane(provider={"delete_files": False})
    await lane.run(5)
    assert {f.purpose for f in emu.files.values()} == {"batch", "batch_output"}


async def test_a_restored_window_reads_its_events_back_without_local_validation(emulator, make_lane):
    """A window sealed before validation existed (or under an older SDK) still gives every event a fate."""
    emu = emulator.emulator
    lane = make_lane()
    values = [b'{"id": "e%d", "text": "event %d"}' % (i, i) for i in range(8)]
    values[3] = b'{"id": "e3", "body": {"messages": []}}'  # refused locally now; accepted when it was sealed
    record = await lane.resume(lane.sealed(8), values)
    results, dead = lane.fates()
    assert record.status == "done"
    assert [(d.id, d.reason) for d in dead] == [("e3", "provider_rejected")], "the provider judged it"
    assert _ids(results) == [f"e{i}" for i in range(8) if i != 3]
    assert emu.stats["batches_failed"] == 1


async def test_a_batch_that_fails_after_max_batch_latency_goes_flex_not_round_again(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.reject_lines_containing = "POISON"
    emu.faults.validation_seconds = 1.5  # it fails validation only after max_batch_latency
    lane = make_lane(
        validate_requests=False, max_batch_latency="1s",
        flex={"concurrency": 4, "attempts": 2, "budget": "10s", "backoff_initial": "10ms", "fallback": "standard"},
    )  # fmt: skip
    await lane.run(10, poison={4})
    results, dead = lane.fates()
    assert [s for s, _, _ in lane.statuses] == ["sealed", "sealed", "submitted", "hedged", "done"]
    assert [(d.id, d.reason) for d in dead] == [("e4", "provider_rejected")]
    assert {r.mode for r in results} == {"flex"} and len(results) == 9
    assert emu.stats["batches_created"] == 1, "no new round once late"
