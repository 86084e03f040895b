"""The batch path end to end: real Kafka, the emulator over HTTP, the worker as a subprocess."""

from __future__ import annotations

import pytest

from tests.support import TopicReader, events, pipeline, produce, wait_committed, wait_until

pytestmark = pytest.mark.kafka

N = 10_000


@pytest.mark.parametrize("held", [None, 0], ids=["requests-kept", "requests-read-back"])
async def test_ten_thousand_events_over_four_partitions(bootstrap, make_topic, configure, start_worker, held):
    """With ``max_held_requests: 0`` every window lets its requests go once submitted and reads
    them back from the input topic (key, value, offset) when its batch ends."""
    topic = await make_topic("tickets", partitions=4)
    memory = {} if held is None else {"max_held_requests": held}
    config, group = configure(
        pipeline("tickets", topic, window={"max_requests": 500, "max_bytes": "10MB", "max_wait": "1s"}, **memory)
    )
    events = [{"id": f"t{i}", "subject": f"s{i}", "text": f"ticket {i}"} for i in range(N)]
    await produce(bootstrap, topic, events, keys=[f"k{i}".encode() for i in range(N)])
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results:
        values = await results.until(N, timeout=300)
        ids = [v["id"] for v in values]
        assert set(ids) == {e["id"] for e in events}, "0 missing"
        assert len(ids) == N, "no duplicates without a crash"
        keys = {k for k, _ in results.records}
        assert keys == {f"k{i}".encode() for i in range(N)}

    await wait_committed(bootstrap, group, topic, N)
    assert worker.terminate() == 0, worker.log()


async def test_a_pipeline_re_pointed_to_a_new_topic_ignores_the_old_topics_windows(
    bootstrap, emulator, make_topic, configure, start_worker, run_pipeline, unique
):
    shared = {"state_topic": f"shared-{unique}.state", "window": {"max_requests": 50, "max_wait": "500ms"}}
    emulator.emulator.faults.batch_seconds = (
        600  # the old topic's windows stay in flight (finished ones are tombstoned)
    )
    old = await make_topic("old", partitions=2)
    config, _ = configure(pipeline("p", old, **shared))
    await produce(bootstrap, old, events(120))
    first = start_worker(config, "first")

    async def submitted() -> bool:
        return emulator.emulator.stats.get("batches_created", 0) >= 2

    await wait_until(submitted, timeout=90, what="the old topic's windows submitted")
    first.kill()
    emulator.emulator.faults.batch_seconds = 0.2
    # same pipeline name, group and state topic; a new input topic whose offsets overlap the old windows
    second = await run_pipeline(events(120), **shared)
    assert sorted(r["id"] for r in second.results) == sorted(e["id"] for e in events(120))
    assert "ignored" in second.worker.log() and "windows of other input topics or groups" in second.worker.log()
