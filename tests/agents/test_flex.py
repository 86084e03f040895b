"""The flex path, its fallbacks, auto routing by deadline, and batches hedged at max_batch_latency."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from typing import Any

import openai
import orjson
import pytest

from tests.support import (
    TopicReader,
    assert_exactly_once,
    committed_offsets,
    events,
    free_port,
    metric,
    pipeline,
    probe,
    produce,
    wait_committed,
    wait_every_id,
    wait_until,
)  # fmt: skip

pytestmark = pytest.mark.kafka

FAST_FLEX = {"concurrency": 8, "attempts": 4, "budget": "30s", "backoff_initial": "50ms", "backoff_max": "200ms"}


async def test_flex_with_30_percent_429s_ends_every_event_once_within_budget(emulator, run_pipeline):
    emu = emulator.emulator
    emu.faults.flex_429_rate = 0.3
    values = events(200)
    port = free_port()
    results, dead, worker = await run_pipeline(
        values, mode="flex", flex={**FAST_FLEX, "fallback": "dead_letter"}, settings={"metrics_port": port}
    )
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert emu.stats["flex_429"] > 30, "the provider refused some calls"
    assert {(r["mode"], r["service_tier"], r["batch_id"]) for r in results} == {("flex", "flex", None)}
    assert all(d["reason"] == "flex_unavailable" and d["attempts"] == 4 for d in dead)
    assert len(results) >= 190  # 0.3**4 per event
    stats = await _stats(emulator)
    assert 0 < stats["flex_calls_max_per_request"] <= 4, "no event was called more than flex.attempts times"
    assert stats["flex_requests"] == len(results) + stats["flex_429"]
    assert emu.stats.get("batches_created", 0) == 0
    assert "sk-test-secret-key" not in worker.log()
    assert metric(port, "batchstream_results_total", pipeline="p") == len(results)
    assert metric(port, "batchstream_flex_refused_total", pipeline="p") == stats["flex_429"]
    assert metric(port, "batchstream_flex_calls_total", pipeline="p", tier="flex") == stats["flex_requests"]
    assert metric(port, "batchstream_flex_in_flight", pipeline="p") == 0


@pytest.mark.parametrize("fallback", ["standard", "batch", "dead_letter"])
async def test_each_fallback_when_flex_has_no_capacity(emulator, run_pipeline, fallback: str):
    emu = emulator.emulator
    emu.faults.flex_429_rate = 1.0
    values = events(40)
    results, dead, _ = await run_pipeline(values, mode="flex", flex={**FAST_FLEX, "attempts": 2, "fallback": fallback})
    assert_exactly_once(results, dead, {e["id"] for e in values})
    assert emu.stats["flex_requests"] == 2 * len(values), "each event used its two flex calls, no more"
    if fallback == "standard":
        assert dead == []
        assert {(r["mode"], r["service_tier"]) for r in results} == {("standard", "default")}
        assert emu.stats["standard_requests"] == len(values)
    elif fallback == "batch":
        assert dead == []
        assert {r["mode"] for r in results} == {"batch"}
        assert all(r["batch_id"] for r in results)
        assert emu.stats["batches_created"] >= 1
    else:
        assert results == []
        assert {d["reason"] for d in dead} == {"flex_unavailable"}
        assert all(d["attempts"] == 2 and d["error"]["code"] == "resource_unavailable" for d in dead)
        assert all("flex unavailable after 2 calls" in d["message"] for d in dead)


async def test_a_model_without_flex_goes_straight_to_the_fallback(emulator, run_pipeline):
    emu = emulator.emulator
    values = events(20)
    results, dead, _ = await run_pipeline(
        values, mode="flex", model="gpt-4o-mini", flex={**FAST_FLEX, "fallback": "standard"}
    )
    assert dead == []
    assert {r["mode"] for r in results} == {"standard"}
    assert emu.stats["flex_unsupported"] == len(values), "one refused flex call per event, no retries"


async def test_auto_routes_tight_deadlines_flex_and_the_rest_batch(emulator, run_pipeline):
    now = time.time()
    tight = [{"id": f"tight{i}", "text": "t", "deadline": now + 600} for i in range(15)]
    tight_header = [{"id": f"hdr{i}", "text": "h"} for i in range(15)]
    relaxed = [{"id": f"far{i}", "text": "f", "deadline": "2099-01-01T00:00:00Z"} for i in range(15)]
    plain = [{"id": f"none{i}", "text": "n"} for i in range(15)]
    bad = [{"id": "bad-deadline", "text": "b", "deadline": "tomorrow-ish"}]
    values: list[Any] = tight + tight_header + relaxed + plain + bad
    headers = [[("deadline", str(now + 600).encode())] if v["id"].startswith("hdr") else [] for v in values]
    flex = {**FAST_FLEX, "fallback": "standard"}
    results, dead, _ = await run_pipeline(values, headers=headers, mode="auto", flex=flex)
    assert_exactly_once(results, dead, {v["id"] for v in values})
    mode = {r["id"]: r["mode"] for r in results}
    assert {mode[v["id"]] for v in tight + tight_header} == {"flex"}, "10 minutes is less than a batch may take"
    assert {mode[v["id"]] for v in relaxed + plain} == {"batch"}
    assert [(d["id"], d["reason"]) for d in dead] == [("bad-deadline", "wrong_shape")]
    assert "deadline" in dead[0]["message"]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_late_batch_is_hedged_keeping_its_finished_part(emulator, run_pipeline, guarantee):
    emu = emulator.emulator
    emu.faults.batch_seconds = 30.0  # far slower than max_batch_latency
    emu.faults.flex_latency = 0.05
    max_batch_latency, budget = 3.0, 10.0
    values = events(100)
    results, dead, worker = await run_pipeline(
        values, partitions=1, window={"max_requests": 100, "max_wait": "300ms"},
        max_batch_latency=f"{max_batch_latency}s", flex={**FAST_FLEX, "budget": f"{budget}s", "fallback": "standard"},
        settings={"processing_guarantee": guarantee},
    )  # fmt: skip
    assert dead == []
    assert_exactly_once(results, dead, {e["id"] for e in values})
    batch_ids = {r["batch_id"] for r in results}
    assert len(batch_ids) == 1, "one batch, cancelled; nothing resubmitted as a batch"
    client = openai.AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test")
    batch = await client.batches.retrieve(batch_ids.pop())
    await client.close()
    assert batch.status == "cancelled" and batch.request_counts is not None
    finished = batch.request_counts.completed
    from_batch = [r for r in results if r["mode"] == "batch"]
    from_flex = [r for r in results if r["mode"] == "flex"]
    assert 0 < finished < len(values)
    assert len(from_batch) == finished, "the batch's finished part is used"
    assert len(from_flex) == len(values) - finished
    assert emu.stats["flex_requests"] == len(from_flex), "the finished part was not redone"
    for result in results:
        stamps = result["timestamps"]
        # + 1 s: the provider's created_at has a one-second resolution; + 1 s for polling and cancelling
        assert stamps["completed"] - stamps["submitted"] <= max_batch_latency + budget + 2, result
    assert "passed max_batch_latency" in worker.log()


async def _stats(emulator: Any) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.get(emulator.base_url.removesuffix("/v1") + "/_emulator/stats")
        return dict(response.json())


async def test_sigkill_while_flex_calls_are_in_flight_loses_nothing(
    bootstrap, emulator, make_topic, configure, start_worker
):
    emu = emulator.emulator
    emu.faults.flex_latency = 0.3
    emu.faults.flex_429_rate = 0.2
    topic = await make_topic("flexcrash", partitions=2)
    config, group = configure(pipeline("fc", topic, mode="flex", flex={**FAST_FLEX, "fallback": "standard"}))
    values = events(300)
    await produce(bootstrap, topic, values)
    first = start_worker(config, "first")
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:

        async def some_served() -> bool:
            return len(await results.poll()) >= 50

        await wait_until(some_served, timeout=60, what="first flex results")
        first.kill()
        committed_at_kill = await committed_offsets(bootstrap, group, topic)
        start_worker(config, "second")

        await wait_every_id([results, dlq], {v["id"] for v in values})
        await wait_committed(bootstrap, group, topic, len(values))
    assert dlq.values == []
    emitted = Counter(r["id"] for r in results.values)
    assert set(emitted) == {v["id"] for v in values}
    again = [r["source"] for r in results.values if emitted[r["id"]] > 1]
    assert all(s["offset"] >= committed_at_kill.get(s["partition"], 0) for s in again), (
        "an event at or past the committed offset may be served again; none before it"
    )


@pytest.mark.parametrize("fallback", ["dead_letter", "standard"])
async def test_a_refused_key_holds_flex_events_until_it_is_fixed_never_dead_letters_them(
    bootstrap, emulator, make_topic, configure, start_worker, fallback: str
):
    emu = emulator.emulator
    emu.faults.refused_keys = ["sk-test-secret-key"]  # the worker's key, revoked
    topic = await make_topic("key", partitions=2)
    port = free_port()
    config, group = configure(pipeline("p", topic, mode="flex", flex={**FAST_FLEX, "fallback": fallback}),
                              metrics_port=port)  # fmt: skip
    values = events(30)
    await produce(bootstrap, topic, values)
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:

        async def refused_a_while() -> bool:
            assert worker.proc.poll() is None, worker.log()
            if probe(port, "/healthz")[0] != 200:
                return False  # not serving its endpoints yet
            return metric(port, "batchstream_provider_account_refusals_total", pipeline="p") >= 60

        await wait_until(refused_a_while, timeout=60, what="flex calls refused for the key")
        assert await results.poll() == [] and await dlq.poll() == [], "nothing is served or dead-lettered"
        assert (await committed_offsets(bootstrap, group, topic)) in ({}, {0: 0, 1: 0}), "no offset passes them"
        status, body = probe(port, "/readyz")
        assert status == 503, body
        said = orjson.dumps(body).decode()
        assert "refuses the key or the account (HTTP 401)" in said and "sk-" not in said and "Incorrect" not in said
        exposed = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "sk-" not in exposed
        emu.faults.refused_keys = []  # the key is fixed
        await wait_every_id([results], {e["id"] for e in values}, timeout=90)
        await wait_committed(bootstrap, group, topic, len(values))
    assert dlq.values == []
    assert {r["mode"] for r in results.values} == {"flex"}
    assert "refuses the key or the account" in worker.log()
    assert "Incorrect API key provided: [redacted]" in worker.log(), "the provider's text, its key masked"
    assert "sk-" not in worker.log() and "-key." not in worker.log()
