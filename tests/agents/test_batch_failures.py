"""Each provider fault and each kind of bad input ends as the right results and dead letters."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.support import (
    assert_each_window_submitted_once,
    assert_exactly_once,
    events,
    free_port,
    metric,
    wait_until,
)  # fmt: skip

pytestmark = pytest.mark.kafka

SCHEMA = {"type": "json_schema", "json_schema": {"name": "t", "schema": {
    "type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}}}  # fmt: skip


async def test_bad_input_is_dead_lettered_with_original_and_worker_keeps_going(emulator, run_pipeline):
    bad: list[Any] = [b"{oops", b"\xff\xfe\x00", b"[1,2]", {"id": "t1"}, {"id": "big", "text": "x" * 3000}]
    good = events(20)
    results, dead, worker = await run_pipeline(
        bad + good,
        partitions=1,
        max_event_bytes=2000,
        template={"user": "Text: {text}"},
    )
    assert {r["id"] for r in results} == {e["id"] for e in good}
    by_offset = {d["source"]["offset"]: d for d in dead}
    assert by_offset[0]["reason"] == "invalid_json"
    assert base64.b64decode(by_offset[0]["original_base64"]) == b"{oops"
    assert by_offset[1]["reason"] == "undecodable"
    assert base64.b64decode(by_offset[1]["original_base64"]) == b"\xff\xfe\x00"
    assert by_offset[2]["reason"] == "wrong_shape"
    assert by_offset[2]["event"] == [1, 2]
    assert by_offset[3]["reason"] == "template_error" and "'text'" in by_offset[3]["message"]
    assert by_offset[4]["reason"] == "oversized"
    assert len(dead) == 5
    assert "sk-test-secret-key" not in worker.log()


async def test_item_errors_in_both_shapes_are_retried(emulator, run_pipeline):
    emulator.emulator.faults.item_error_rate = 0.3
    emulator.emulator.faults.item_error_shape = "mixed"
    values = events(200)
    results, dead, _ = await run_pipeline(
        values,
        partitions=1,  # custom ids (<partition>-<offset>) and so the emulator's seeded rolls are fixed
        retry={"attempts": 6, "backoff_initial": "50ms", "backoff_max": "100ms"},
    )
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert emulator.emulator.stats["item_errors"] > 40
    # the emulator's rolls are seeded: one event fails all 6 attempts
    assert [(d["id"], d["reason"], d["attempts"]) for d in dead] == [("e184", "retries_exhausted", 6)]


async def test_requests_failing_every_attempt_end_as_retries_exhausted(emulator, run_pipeline):
    emu = emulator.emulator
    emu.faults.item_error_shape = "mixed"
    failing = {3, 17, 18, 40}
    emu.faults.failing_custom_ids = [f"0-{o}" for o in failing]  # custom ids are <partition>-<offset>
    values = events(50)
    results, dead, _ = await run_pipeline(values, partitions=1)
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert sorted(d["source"]["offset"] for d in dead) == sorted(failing)
    assert {(d["reason"], d["attempts"]) for d in dead} == {("retries_exhausted", 3)}
    assert all(d["error"]["code"] == "server_error" or d["error"].get("status_code") == 500 for d in dead)


async def test_non_retriable_item_errors_are_dead_lettered_once(emulator, run_pipeline):
    emulator.emulator.faults.item_error_rate = 1.0
    emulator.emulator.faults.item_error_status = 400
    values = events(30)
    results, dead, _ = await run_pipeline(
        values,
    )
    assert results == []
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert {d["reason"] for d in dead} == {"provider_rejected"}
    assert all(d["attempts"] == 1 and d["event"]["id"] == d["id"] for d in dead)


async def test_poison_requests_only_the_provider_can_judge_cost_only_themselves(emulator, run_pipeline):
    emu = emulator.emulator
    emu.faults.reject_lines_containing = "POISON"
    values = events(60)
    poison = {5, 6, 33}
    for i in poison:
        values[i]["text"] = "POISON"
    results, dead, worker = await run_pipeline(values, partitions=1, window={"max_requests": 30, "max_wait": "300ms"})
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert sorted(d["id"] for d in dead) == sorted(f"e{i}" for i in poison)
    assert {d["reason"] for d in dead} == {"provider_rejected"}
    assert all(d["error"]["code"] == "invalid_request" and "rejected line" in d["message"] for d in dead)
    assert emu.stats["batches_failed"] == 2, "one failed batch per window holding poison"
    assert "failed (" in worker.log() and "reject lines" in worker.log()


async def test_invalid_requests_are_dead_lettered_before_any_batch(emulator, run_pipeline):
    values: list[Any] = [{"id": "bad", "body": {"messages": [{"role": "user"}]}}, *events(10)]
    results, dead, _ = await run_pipeline(values, partitions=1)
    assert_exactly_once(results, dead, {v["id"] for v in values})
    assert [(d["id"], d["reason"]) for d in dead] == [("bad", "invalid_request")]
    assert "'messages.0.content': Field required" in dead[0]["message"]
    assert dead[0]["event"] == values[0], "the original event travels with its dead letter"
    assert emulator.emulator.stats["batches_failed"] == 0


@pytest.mark.parametrize("ending", ["expired", "cancelled"])
async def test_batch_ended_part_way_keeps_completed_part_and_resubmits_the_rest(emulator, run_pipeline, ending):
    emulator.emulator.faults.batch_outcomes = [ending]
    emulator.emulator.faults.expire_after_fraction = 0.4
    values = events(50)
    results, dead, _ = await run_pipeline(values, partitions=1)
    assert dead == []
    assert_exactly_once(results, dead, {e["id"] for e in values})
    first_batch = {r["batch_id"] for r in results[:20]}
    assert len(first_batch) == 1, "the 40% finished before the end come from the ended batch"
    assert len({r["batch_id"] for r in results}) == 2
    assert emulator.emulator.stats[f"batches_{ending}"] == 1
    sizes = sorted(b.as_json()["request_counts"]["total"] for b in emulator.emulator.batches.values())
    assert sizes == [30, 50], "only the 30 unfinished requests were resubmitted"


async def test_completed_without_output_reads_the_error_file(emulator, run_pipeline):
    emulator.emulator.faults.batch_outcomes = ["completed_without_output"]
    values = events(10)
    results, dead, _ = await run_pipeline(values, partitions=1)
    assert dead == []
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert emulator.emulator.stats["batches_created"] == 2


async def test_refused_creates_wait_and_retry(emulator, run_pipeline):
    emulator.emulator.faults.create_429 = 3
    emulator.emulator.faults.token_limit = 2
    values = events(40)
    results, dead, worker = await run_pipeline(values, partitions=1)
    assert dead == []
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert emulator.emulator.stats["create_429"] == 3
    assert emulator.emulator.stats["token_limit_exceeded"] == 2
    assert "refused the batch" in worker.log()


async def test_cut_off_downloads_are_retried(emulator, run_pipeline):
    emulator.emulator.faults.cut_off_downloads = 2
    values = events(30)
    results, dead, _ = await run_pipeline(values, partitions=1)
    assert dead == []
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert emulator.emulator.stats["downloads_cut_off"] == 2


async def test_invalid_json_output_is_dead_lettered(emulator, run_pipeline):
    emulator.emulator.faults.invalid_json_rate = 0.2
    values = events(60)
    results, dead, _ = await run_pipeline(
        values,
        template={"user": "{text}", "response_format": SCHEMA},
    )
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert dead and {d["reason"] for d in dead} == {"invalid_output"}
    assert len(dead) == emulator.emulator.stats["invalid_json_outputs"]
    assert all(r["output"]["label"] in ("a", "b") for r in results)


async def test_create_answering_500_after_creating_is_adopted_not_resubmitted(emulator, run_pipeline):
    emu = emulator.emulator
    emu.faults.create_500 = 2
    values = events(40)
    results, dead, worker = await run_pipeline(values, partitions=1, window={"max_requests": 20, "max_wait": "300ms"})
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert emu.stats["create_500"] == 2
    assert_each_window_submitted_once(emu.stats)
    assert "adopted batch" in worker.log()


async def test_a_minimal_openai_compatible_server(emulator, run_pipeline):
    """No batch listing, no service_tier in responses: nothing is lost, nothing emitted twice."""
    emu = emulator.emulator
    emu.faults.minimal = True
    emu.faults.create_500 = 1  # cannot be adopted without listing: the window is submitted again
    now = time.time()
    values: list[Any] = [{"id": f"u{i}", "text": "u", "deadline": now + 60} for i in range(10)] + events(30)
    results, dead, worker = await run_pipeline(
        values, partitions=1, mode="auto", flex={"fallback": "dead_letter", "backoff_initial": "50ms"}
    )
    assert_exactly_once(results, dead, {v["id"] for v in values})
    assert {(r["mode"], r["service_tier"]) for r in results if r["id"].startswith("u")} == {("flex", None)}
    assert {r["mode"] for r in results if r["id"].startswith("e")} == {"batch"}
    assert "cannot list batches" in worker.log()


async def test_fifty_poison_requests_among_ten_thousand_cost_fifty_dead_letters(emulator, run_pipeline):
    """Poison only the provider can judge, spread among windows of 5,000: no window is lost to it."""
    emu = emulator.emulator
    emu.faults.reject_lines_containing = "POISON"
    values = events(10_000)
    poison = set(range(97, 10_000, 200))
    for i in poison:
        values[i]["text"] = "POISON"
    port = free_port()
    results, dead, _ = await run_pipeline(
        values, partitions=2, window={"max_requests": 5000, "max_wait": "2s"}, settings={"metrics_port": port}
    )
    assert len(poison) == 50
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert len(results) == 9_950
    assert sorted(d["id"] for d in dead) == sorted(f"e{i}" for i in poison)
    assert {d["reason"] for d in dead} == {"provider_rejected"}
    failed = emu.stats["batches_failed"]
    assert failed == metric(port, "batchstream_batches_failed_total", pipeline="p", action="reject_lines")
    windows = metric(port, "batchstream_windows_sealed_total", pipeline="p")
    assert 1 <= failed <= windows, "at most one extra round per window: the named lines are rejected at once"

    async def no_files_left() -> bool:
        return not emu.files

    await wait_until(no_files_left, timeout=30, what="every provider file deleted (delete_files: true)")


async def test_a_batch_whose_status_never_reads_is_served_flex_after_max_batch_latency(emulator, run_pipeline):
    emu = emulator.emulator
    emu.faults.unreadable_next = 1  # the first batch created: every status read answers 500, for ever
    emu.faults.batch_seconds = 0.5
    values = events(120)
    latency, budget = 12.0, 10.0
    results, dead, worker = await run_pipeline(
        values, partitions=1, window={"max_requests": 40, "max_wait": "300ms"}, max_batch_latency=f"{latency:g}s",
        flex={"budget": f"{budget:g}s", "fallback": "standard", "backoff_initial": "50ms"},
    )  # fmt: skip
    assert_exactly_once(results, dead, {e["id"] for e in values})
    stuck = [r for r in results if r["mode"] == "flex"]
    batched = [r for r in results if r["mode"] == "batch"]
    assert len(stuck) == 40 and len(batched) == 80, "one window of 40 went flex; the others were not held up"
    assert max(r["timestamps"]["completed"] for r in batched) < min(r["timestamps"]["completed"] for r in stuck)
    for r in stuck:
        assert r["timestamps"]["completed"] - r["timestamps"]["submitted"] <= latency + budget
    assert emu.stats["status_500"] > 3
    assert "status of batch" in worker.log() and "cannot be read" in worker.log()
