"""``processing_guarantee: exactly_once`` against a worker that is paused, not dead (a zombie).

A worker frozen mid-run (SIGSTOP: a long GC pause, a stalled VM, a partitioned host) loses its
partitions when its session times out, and another worker serves them. When the frozen worker
resumes, its flex calls answer and it tries to write their results: the partition's new owner
has started that partition's transactional producer, so those writes are fenced and never seen
by a read_committed consumer. Under ``at_least_once`` they are written: duplicates (the
control run shows it).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.support import (
    TopicReader,
    end_offsets,
    pipeline,
    produce,
    wait_committed_offsets,
    wait_every_id,
    wait_log,
    wait_until,
)  # fmt: skip

pytestmark = pytest.mark.kafka

LOADED = "loaded state of partitions"
#: What a worker logs when the broker refuses a partition's transactional producer (another
#: producer took its transactional id), whether or not it still owns the partition.
FENCED = ": fenced ("
#: Runs of the paused-worker scenario at most. The frozen worker answers continuously (many
#: short calls at once, each answer lingering up to ``sinks.transactions.LINGER`` to share a
#: transaction), so when it freezes it nearly always holds answers queued for a write or a
#: transaction under way, which it sends on resuming, before it learns of the rebalance.
ATTEMPTS = 4


async def paused_worker_run(
    bootstrap: str, emulator: Any, make_topic: Any, configure: Any, start_worker: Any, guarantee: str, attempt: int
) -> tuple[Counter[str], str]:  # fmt: skip
    """Two workers serve a topic; one is frozen with flex calls in flight until the other has
    served every event, then resumed. Returns the fates a read_committed consumer sees (each
    id's count, read to the topics' end) and the frozen worker's log."""
    emulator.emulator.clear()
    # 32 calls of 0.2 s at once: an answer every few milliseconds, so a write is always queued
    # or under way (and calls are in flight) when the worker freezes.
    emulator.emulator.faults.flex_latency = 0.2
    topic = await make_topic("zombie", partitions=4)
    flex = {"concurrency": 32, "attempts": 3, "budget": "60s", "fallback": "batch"}
    config, group = configure(pipeline("zombie", topic, mode="flex", flex=flex), processing_guarantee=guarantee)
    ids = {f"z{i}" for i in range(3000)}
    await produce(bootstrap, topic, [{"id": i, "text": i} for i in sorted(ids)],
                  keys=[b"k%d" % n for n in range(len(ids))])  # fmt: skip
    frozen = start_worker(config, f"frozen{attempt}")
    await wait_log(frozen, LOADED)
    other = start_worker(config, f"other{attempt}")
    await wait_log(other, LOADED)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:

        async def both_serving() -> bool:
            await results.poll()
            return len({v["source"]["partition"] for v in results.values}) == 4

        await wait_until(both_serving, timeout=120, what="results from every partition")
        released = frozen.log().count("released partitions")
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        try:
            await wait_every_id([results, dlq], ids, timeout=180)  # the other worker took every partition
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)

        async def frozen_caught_up() -> bool:  # its writes were fenced, or its tasks stopped by a revocation
            log = frozen.log()
            return FENCED in log or log.count("released partitions") > released

        await wait_until(frozen_caught_up, timeout=60, what="the resumed worker learning it lost its partitions")
        ends = await end_offsets(bootstrap, topic, 4)
        await wait_committed_offsets(bootstrap, group, topic, ends, timeout=60)
        # Both workers are idle now: whatever the frozen one wrote (or tried to) is on the topics,
        # committed, or aborted.
        await results.to_end()
        await dlq.to_end()
        fates = Counter(v["id"] for v in results.values + dlq.values)
    frozen.kill()
    other.kill()
    assert set(fates) == ids
    return fates, frozen.log()


@pytest.mark.timeout(600)
async def test_a_paused_worker_cannot_write_for_partitions_taken_over(
    bootstrap, emulator, make_topic, configure, start_worker
) -> None:  # fmt: skip
    """No run shows a duplicate, and in one at least the resumed worker's writes reached the
    broker and were refused (the race: in a run where it learns of the rebalance before its
    answers, its tasks are stopped and it writes nothing, which proves nothing of fencing)."""
    for attempt in range(ATTEMPTS):
        fates, log = await paused_worker_run(
            bootstrap, emulator, make_topic, configure, start_worker, "exactly_once", attempt
        )  # fmt: skip
        assert [i for i, n in fates.items() if n > 1] == [], "a read_committed consumer sees each event once"
        if FENCED in log:
            break
    assert FENCED in log, f"in {ATTEMPTS} runs, the resumed worker never had its writes refused"
    print(f"zombie: run {attempt + 1}, frozen worker fenced {log.count(FENCED)} times, no duplicate")


@pytest.mark.timeout(600)
async def test_a_paused_worker_without_transactions_writes_duplicates(
    bootstrap, emulator, make_topic, configure, start_worker
) -> None:  # fmt: skip
    """The control run: the same pause under ``at_least_once`` writes the frozen worker's answers
    (events the other worker served too), so the test above would see duplicates without fencing."""
    for attempt in range(ATTEMPTS):
        fates, log = await paused_worker_run(
            bootstrap, emulator, make_topic, configure, start_worker, "at_least_once", attempt
        )  # fmt: skip
        assert FENCED not in log
        twice = [i for i, n in fates.items() if n > 1]
        if twice:
            break
    assert twice != [], f"in {ATTEMPTS} runs, the resumed worker never wrote for partitions it had lost"
    print(f"zombie without transactions: run {attempt + 1}, {len(twice)} events written twice")


async def test_a_worker_fenced_while_it_still_owns_the_partition_rejoins_and_carries_on(
    bootstrap, emulator, make_topic, configure, start_worker
) -> None:  # fmt: skip
    """A producer fenced while its worker still owns the partition (a transaction that outlived the
    broker's timeout does this) must not leave the partition stalled: the worker rejoins the
    group, and its fresh assignment starts a fresh producer."""
    emulator.emulator.faults.flex_latency = 0.2
    topic = await make_topic("fenced", partitions=2)
    flex = {"concurrency": 4, "attempts": 3, "budget": "60s", "fallback": "batch"}
    config, group = configure(pipeline("fenced", topic, mode="flex", flex=flex), processing_guarantee="exactly_once")
    ids = {f"f{i}" for i in range(200)}
    await produce(bootstrap, topic, [{"id": i, "text": i} for i in sorted(ids)], keys=[b"k%d" % n for n in range(200)])
    worker = start_worker(config, "worker")
    await wait_log(worker, LOADED)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await results.until(10, timeout=60)
        # Partition 0's transactional id taken by another producer, as a new owner's would be.
        thief = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"batchstream.{group}.fenced.{topic}.0")
        await thief.start()
        await thief.stop()
        await wait_log(worker, "was fenced")
        await wait_log(worker, LOADED, count=2)  # rejoined, and assigned afresh
        await wait_every_id([results, dlq], ids, timeout=120)
        ends = await end_offsets(bootstrap, topic, 2)
        await wait_committed_offsets(bootstrap, group, topic, ends, timeout=60)
        await results.poll()
        fates = Counter(v["id"] for v in results.values + dlq.values)
    assert set(fates) == ids
    assert [i for i, n in fates.items() if n > 1] == []


async def test_events_of_an_aborted_upstream_transaction_are_never_served(
    bootstrap, emulator, make_topic, configure, start_worker
) -> None:  # fmt: skip
    """An upstream producer that aborts a transaction leaves its records in the input topic; under
    ``exactly_once`` the worker reads ``read_committed``, so they are neither paid for nor emitted,
    and the committed offset still moves past them. Windows let their requests go after
    submission (``max_held_requests: 0``) and read them back across the aborted range."""
    topic = await make_topic("upstream", partitions=1)
    config, group = configure(pipeline("upstream", topic, mode="batch", max_held_requests=0),
                              processing_guarantee="exactly_once")  # fmt: skip
    upstream = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"upstream-{topic}")
    await upstream.start()
    try:
        for prefix, commit in (("a", True), ("b", False), ("c", True)):
            await upstream.begin_transaction()
            for i in range(30):
                await upstream.send(topic, orjson.dumps({"id": f"{prefix}{i}", "text": "x"}), key=b"k%d" % i)
            if commit:
                await upstream.commit_transaction()
            else:
                await upstream.abort_transaction()
    finally:
        await upstream.stop()
    committed_ids = {f"{prefix}{i}" for prefix in "ac" for i in range(30)}
    # a0-a29 at offsets 0-29, a commit marker, b0-b29 at 31-60, an abort marker, c0-c29 at 62-91, a marker
    start_worker(config, "worker")
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await wait_every_id([results, dlq], committed_ids, timeout=120)
        await wait_committed_offsets(bootstrap, group, topic, {0: 92}, timeout=60)
        await results.poll()
        await dlq.poll()
    assert sorted(v["id"] for v in results.values) == sorted(committed_ids), "each committed event once, no other"
    assert dlq.values == []
    emu = emulator.emulator
    submitted = sum(b.completed + b.failed for b in emu.batches.values())
    assert submitted == len(committed_ids), "the aborted events were never submitted"
