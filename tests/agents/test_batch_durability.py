"""Crashes (SIGKILL at several points) and rebalances lose nothing and submit no window twice."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support import (
    TopicReader,
    WorkerProcess,
    assert_each_window_submitted_once,
    assert_exactly_once,
    pipeline,
    produce,
    wait_committed,
    wait_every_id,
    wait_until,
)  # fmt: skip

pytestmark = pytest.mark.kafka


async def test_sigkill_at_each_crash_point_then_restart(bootstrap, emulator, make_topic, configure, start_worker):
    emu = emulator.emulator
    emu.faults.batch_seconds = 2.0
    emu.faults.create_delay = 1.0
    topic = await make_topic("crash", partitions=3)
    config, group = configure(pipeline("crash", topic, window={"max_requests": 50, "max_wait": "1s"}))
    values = [{"id": f"c{i}", "text": f"event {i}"} for i in range(900)]
    await produce(bootstrap, topic, values, keys=[f"k{i % 50}".encode() for i in range(900)])
    ids = {v["id"] for v in values}

    def start(n: int) -> WorkerProcess:
        return start_worker(config, f"worker{n}")

    # 1. windows sealed and being uploaded, no batch created yet
    w = start(1)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:

        async def seen() -> int:
            return len(await results.poll()) + len(await dlq.poll())

        async def uploading() -> bool:
            return emu.stats["files_uploaded"] > 0

        await wait_until(uploading, timeout=60, interval=0.02, what="worker 1 to upload a sealed window")
        w.kill()
        # 2. batch created at the provider, the worker is still waiting for the answer
        w = start(2)
        created = emu.stats["batches_created"]

        async def creating() -> bool:
            return emu.stats["batches_created"] > created

        await wait_until(creating, timeout=60, interval=0.05, what="a batch to be created")
        w.kill()
        # 3. batches recorded and being tracked
        emu.faults.create_delay = 0
        w = start(3)

        reads = emu.stats["status_reads"]

        async def tracking() -> bool:
            return emu.stats["status_reads"] > reads

        await wait_until(tracking, timeout=60, interval=0.05, what="worker 3 polling its batches")
        w.kill()
        # 4. results being emitted
        w = start(4)
        before = await seen()

        async def emitting() -> bool:
            return await seen() > before

        await wait_until(emitting, timeout=90, interval=0.05, what="results being emitted")
        w.kill()
        # 5. run to the end
        w = start(5)

        await wait_every_id([results, dlq], ids, timeout=180)
        await wait_committed(bootstrap, group, topic, len(values))

    emitted = Counter(v["id"] for v in results.values + dlq.values)
    duplicates = sum(n - 1 for n in emitted.values())
    print(f"crash test: {len(ids)} ids, {duplicates} duplicates, {emu.stats['batches_created']} batches")
    assert set(emitted) == ids
    assert dlq.values == []
    assert_each_window_submitted_once(emu.stats)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_two_workers_one_stopped_mid_run(bootstrap, emulator, make_topic, configure, start_worker, guarantee):
    emulator.emulator.faults.batch_seconds = 1.5
    topic = await make_topic("rebalance", partitions=6)
    config, group = configure(pipeline("rb", topic, window={"max_requests": 40, "max_wait": "1s"}),
                              processing_guarantee=guarantee)  # fmt: skip
    values = [{"id": f"r{i}", "text": f"event {i}"} for i in range(1200)]
    await produce(bootstrap, topic, values, keys=[f"k{i}".encode() for i in range(1200)])
    first, second = start_worker(config, "a"), start_worker(config, "b")
    async with TopicReader(bootstrap, f"{topic}.results") as results:

        async def both_own_partitions() -> bool:
            return "loaded state of partitions" in first.log() and "loaded state of partitions" in second.log()

        await wait_until(both_own_partitions, timeout=90, what="both workers to own partitions")

        async def some_results() -> bool:
            return len(await results.poll()) >= 100

        await wait_until(some_results, timeout=90, what="first results")
        assert second.terminate() == 0, second.log()

        await wait_every_id([results], {v["id"] for v in values}, timeout=180)
    await wait_committed(bootstrap, group, topic, len(values))
    assert_exactly_once(results.values, [], {v["id"] for v in values})  # a graceful stop hands over cleanly
    assert_each_window_submitted_once(emulator.emulator.stats)


async def test_worker_stopped_while_creating_batches_hands_them_over_once(
    bootstrap, emulator, make_topic, configure, start_worker
):
    emu = emulator.emulator
    emu.faults.create_lag = 6.0  # each create request is in flight for 6 s before the batch exists
    topic = await make_topic("handover", partitions=4)
    config, group = configure(pipeline("ho", topic, window={"max_requests": 25, "max_wait": "500ms"}))
    values = [{"id": f"h{i}", "text": f"event {i}"} for i in range(200)]
    await produce(bootstrap, topic, values)
    first = start_worker(config, "a")

    async def owns() -> bool:
        return "loaded state of partitions" in first.log()

    await wait_until(owns, timeout=60, what="the first worker to own its partitions")

    async def creating() -> bool:
        return emu.stats["creates_lagging"] > 0

    await wait_until(creating, timeout=60, interval=0.05, what="batch creations in flight")
    assert emu.stats.get("batches_created", 0) == 0
    second = start_worker(config, "b")  # takes partitions over while the first is stopping
    assert first.terminate() == 0, first.log()
    async with TopicReader(bootstrap, f"{topic}.results") as results:
        await wait_every_id([results], {v["id"] for v in values})
    await wait_committed(bootstrap, group, topic, len(values))
    assert_exactly_once(results.values, [], {v["id"] for v in values})
    assert_each_window_submitted_once(emu.stats)
    assert "adopted batch" in second.log(), "the second worker adopted the batches the first had created"


async def test_sigkill_while_a_create_call_is_in_flight_adopts_its_batch(
    bootstrap, emulator, make_topic, configure, start_worker
):
    emu = emulator.emulator
    # The provider creates the batch 15 s after the request arrives: after the next owner
    # (which waits out the session timeout) first looks, before create_timeout has passed.
    emu.faults.create_lag = 15.0
    topic = await make_topic("inflight", partitions=2)
    window = {"max_requests": 50, "max_wait": "500ms"}
    config, group = configure(pipeline("if", topic, window=window), provider={"create_timeout": 30})
    values = [{"id": f"i{i}", "text": f"event {i}"} for i in range(100)]
    await produce(bootstrap, topic, values)
    first = start_worker(config, "first")

    async def creating() -> bool:
        return emu.stats["creates_lagging"] > 0

    await wait_until(creating, timeout=60, interval=0.05, what="a create call in flight")
    first.kill()  # the provider finishes the call after its caller is gone
    assert emu.stats.get("batches_created", 0) == 0
    emu.faults.create_lag = 0
    second = start_worker(config, "second")
    async with TopicReader(bootstrap, f"{topic}.results") as results:
        await wait_every_id([results], {v["id"] for v in values})
    await wait_committed(bootstrap, group, topic, len(values))

    async def lagging_calls_done() -> bool:
        return emu.stats["creates_lagged"] == emu.stats["creates_lagging"]

    await wait_until(lagging_calls_done, timeout=30, what="the dead worker's create calls to finish")
    assert_exactly_once(results.values, [], {v["id"] for v in values})
    assert_each_window_submitted_once(emu.stats)
    assert "adopted batch" in second.log()
