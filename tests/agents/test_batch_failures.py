"""Each provider fault and each kind of bad input ends as the right results and dead letters."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.support import assert_each_window_submitted_once, assert_exactly_once, events

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
        retry={"attempts": 5, "backoff_initial": "50ms", "backoff_max": "100ms"},
    )
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert emulator.emulator.stats["item_errors"] > 20
    # 0.3**5 per event: almost all succeed after retries; any failure is a retries_exhausted letter
    assert len(results) >= 195
    assert all(d["reason"] == "retries_exhausted" and d["attempts"] == 5 for d in dead)


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


async def test_failed_batch_dead_letters_carry_the_batch_error(emulator, run_pipeline):
    emulator.emulator.faults.batch_outcomes = ["failed"]
    values = events(10)
    results, dead, _ = await run_pipeline(values, partitions=1)
    assert results == []
    assert {d["reason"] for d in dead} == {"batch_failed"}
    assert all("injected" in d["message"] and d["error"]["batch_errors"] for d in dead)
    assert_exactly_once(results, dead, {e["id"] for e in values})


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
