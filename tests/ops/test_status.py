"""``batchstream status`` on the real broker, during a run (batches in flight at the provider)
and after it (every fate, cost), as JSON and as the rich view."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support import TopicReader, committed_offsets, end_offsets, pipeline, produce, run_cli, wait_until

pytestmark = pytest.mark.kafka


def status(config: Path, *args: str) -> str:
    proc = run_cli("status", "-c", str(config), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


async def test_status_shows_batches_in_flight_then_every_fate_and_the_cost(
    bootstrap, emulator, make_topic, configure, start_worker
):
    emu = emulator.emulator
    emu.faults.batch_seconds = 600  # in flight until lowered below
    topic = await make_topic("in", partitions=2)
    config, group = configure(pipeline("p", topic, window={"max_requests": 10, "max_wait": "300ms"},
                                       template={"user": "{text}"}))  # fmt: skip
    await produce(bootstrap, topic, [*({"id": f"e{i}", "text": f"ticket {i}"} for i in range(40)), b"{oops"],
                  keys=[f"k{i % 2}".encode() for i in range(41)])  # fmt: skip
    worker = start_worker(config)

    def snapshot() -> dict:
        return orjson.loads(status(config, "--json"))["pipelines"]["p"]

    async def four_in_flight() -> bool:
        return len(snapshot()["in_flight"]) == 4

    await wait_until(four_in_flight, timeout=120, what="four batches in flight")
    during = snapshot()
    assert during["open_windows"] == 4 and during["results"] == 0
    assert {(b["state"], b["requests"], b["late"], b["hedged"]) for b in during["in_flight"]} == {
        ("in_progress", 10, False, False)}  # fmt: skip
    assert all(b["batch_id"] in emu.batches for b in during["in_flight"])
    assert during["dead_letters"] == {"total": 1, "by_reason": {"invalid_json": 1}}
    ends, committed = await end_offsets(bootstrap, topic, 2), await committed_offsets(bootstrap, group, topic)
    lag = {int(p): v for p, v in during["lag"]["partitions"].items()}
    assert {p: v["end"] for p, v in lag.items()} == ends
    assert all(v["lag"] == v["end"] - v["committed"] and v["committed"] <= committed.get(p, 0) for p, v in lag.items())
    assert during["lag"]["total"] == sum(v["lag"] for v in lag.values())
    view = status(config)
    assert "batches in flight" in view and "in_progress" in view and "0/10" in view, view
    # a revoked key: the provider's 401 (its text names the key, partly masked) reaches neither
    # the JSON document nor the view; each batch reads as unreadable, with the kind of failure
    emu.faults.refused_keys = ["sk-test-secret-key"]
    refused = orjson.loads(status(config, "--json"))["pipelines"]["p"]["in_flight"]
    assert {b["state"] for b in refused} == {"unreadable"}, refused
    shown = orjson.dumps(refused).decode() + status(config)
    assert "sk-" not in shown and "secret-key" not in shown, shown
    emu.faults.refused_keys = []

    emu.faults.batch_seconds = 0.2
    async with TopicReader(bootstrap, f"{topic}.results") as results:
        await results.until(40, timeout=120)

    async def settled() -> bool:
        return snapshot()["open_windows"] == 0

    await wait_until(settled, timeout=60, what="every window done")
    after = snapshot()
    assert (after["results"], after["in_flight"], after["lag"]["total"]) == (40, [], 0)
    cost = after["cost"]
    assert cost["paid_usd"] > 0 and cost["realtime_usd"] == pytest.approx(2 * cost["paid_usd"], rel=1e-3)
    assert cost["saved_usd"] == pytest.approx(cost["realtime_usd"] - cost["paid_usd"], abs=1e-6)
    assert "saved $" in status(config, "--pipeline", "p")
    assert worker.terminate() == 0, worker.log()


async def test_status_reads_a_state_topic_holding_exactly_once_served_marks(
    bootstrap, emulator, make_topic, configure, start_worker
):
    topic = await make_topic("eos", partitions=2)
    config, _ = configure(pipeline("p", topic, mode="flex", template={"user": "{text}"}),
                          processing_guarantee="exactly_once")  # fmt: skip
    await produce(bootstrap, topic, [*({"id": f"e{i}", "text": f"ticket {i}"} for i in range(20)), b"{oops"])
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await results.until(20, timeout=120)
        await dlq.until(1, timeout=60)
    # flex events and the intake dead letter each left a served mark in the state topic
    after = orjson.loads(status(config, "--json"))["pipelines"]["p"]
    assert (after["results"], after["dead_letters"]["total"], after["open_windows"]) == (20, 1, 0)
    assert worker.terminate() == 0, worker.log()
