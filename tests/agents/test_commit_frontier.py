"""The group never commits an input offset past an event whose fate is not durable.

Events finish out of order: a malformed event is dead-lettered at once while the good event
before it waits in an open window; a flex event is served while a batch event before it
waits. The committed offset must stay before the waiting event until its window is sealed
and recorded, or a crash, a stop or a rebalance (each drops open windows) loses it.

The *sentinel*: a commit cycle covers every partition at once, so once a malformed event
produced to partition 1 after offset 1 of partition 0 was finished shows up as committed,
a commit cycle has run that would have carried partition 0 past offset 0 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import (
    TopicReader,
    WorkerProcess,
    committed_offsets,
    committed_values,
    end_offsets,
    free_port,
    metric,
    pipeline,
    produce,
    produce_placed,
    wait_committed_offsets,
    wait_every_id,
    wait_log,
    wait_until,
)  # fmt: skip

pytestmark = pytest.mark.kafka

#: Long enough that the window holding offset 0 is still open when the checks run.
LONG_WINDOW = {"max_requests": 100, "max_wait": "8s"}
LOADED = "loaded state of partitions"
WEEK = 7 * 86400.0


@dataclass
class Held:
    """A topic whose partition 0 has offset 0 waiting in an open window and offset 1 finished."""

    topic: str
    config: Path
    group: str
    worker: WorkerProcess
    results: TopicReader
    dlq: TopicReader
    #: Every id that must get a fate: the two of partition 0 and the sentinel.
    ids: set[str]

    async def result_ids(self) -> set[str]:
        return {v["id"] for _, v in await self.results.poll()}

    async def dead_sources(self) -> set[tuple[int, int]]:
        return {(v["source"]["partition"], v["source"]["offset"]) for _, v in await self.dlq.poll()}


@contextlib.asynccontextmanager
async def held_window(
    bootstrap: str, make_topic: Any, configure: Any, start_worker: Any, *, values: list[Any], held_id: str,
    ids: set[str], finished: Callable[[Held], Awaitable[bool]], what: str, metrics_port: int = 0, **overrides: Any,
) -> AsyncIterator[Held]:  # fmt: skip
    """Produce ``values`` (offset 0 waits in a window, offset 1 finishes) to partition 0, run a
    worker until offset 1 is finished and a commit cycle has run after it, and check that the
    group has not committed partition 0 past offset 0."""
    topic = await make_topic("frontier", partitions=2)
    config, group = configure(pipeline("fr", topic, window=LONG_WINDOW, **overrides), metrics_port=metrics_port)
    await produce(bootstrap, topic, values, partition=0)
    worker = start_worker(config, "first")
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        held = Held(topic, config, group, worker, results, dlq, {*ids, f"{topic}/1/0"})

        async def offset_1_finished() -> bool:
            assert worker.proc.poll() is None, worker.log()
            return await finished(held)

        await wait_until(offset_1_finished, timeout=60, what=what)
        await produce(bootstrap, topic, [b"not json"], partition=1)  # the sentinel
        await wait_committed_offsets(bootstrap, group, topic, {1: 1})
        assert held_id not in await held.result_ids(), (
            f"{held_id!r} already has a result: its window sealed before the check ran, "
            f"so window.max_wait ({LONG_WINDOW['max_wait']}) is too short for this test"
        )
        committed = await committed_offsets(bootstrap, group, topic)
        assert committed.get(0, 0) <= 0, (
            f"partition 0 committed at {committed[0]} while offset 0 ({held_id!r}) still waits in an open window "
            f"(committed offsets: {committed})"
        )
        yield held


def _batch_held(bootstrap: str, make_topic: Any, configure: Any, start_worker: Any, metrics_port: int = 0) -> Any:
    async def malformed_dead_lettered(held: Held) -> bool:
        return (0, 1) in await held.dead_sources()

    return held_window(
        bootstrap, make_topic, configure, start_worker,
        values=[{"id": "good-0", "text": "x"}, b"not json"], held_id="good-0",
        ids={"good-0"}, finished=malformed_dead_lettered, what="the dead letter of partition 0 offset 1",
        metrics_port=metrics_port,
    )  # fmt: skip


async def wait_fates(results: TopicReader, dlq: TopicReader, ids: set[str], *, timeout: float) -> None:
    """Wait until every id has a result or dead letter; on a timeout, name the ids without one."""
    try:
        await wait_every_id([results, dlq], ids, timeout=timeout)
    except AssertionError as exc:
        missing = ids - {v["id"] for v in results.values + dlq.values}
        raise AssertionError(f"{exc}: {len(missing)} ids never got a fate, e.g. {sorted(missing)[:10]}") from None


async def _every_fate(bootstrap: str, held: Held, *, results: set[str]) -> None:
    await wait_fates(held.results, held.dlq, held.ids, timeout=90)
    assert results <= {v["id"] for v in held.results.values}, "these ids end as results, not dead letters"
    await wait_committed_offsets(bootstrap, held.group, held.topic, {0: 2, 1: 1})


async def test_sigkill_with_an_open_window_behind_a_dead_letter_loses_nothing(
    bootstrap, emulator, make_topic, configure, start_worker
):
    port = free_port()
    async with _batch_held(bootstrap, make_topic, configure, start_worker, metrics_port=port) as held:
        # the commit that showed the sentinel was made right after this gauge was set
        assert metric(port, "batchstream_unfinished_events", pipeline="fr") == 1, "offset 0 holds back commits"
        held.worker.kill()
        start_worker(held.config, "second")
        await _every_fate(bootstrap, held, results={"good-0"})


async def test_sigterm_with_an_open_window_behind_a_dead_letter_loses_nothing(
    bootstrap, emulator, make_topic, configure, start_worker
):
    async with _batch_held(bootstrap, make_topic, configure, start_worker) as held:
        assert held.worker.terminate() == 0, held.worker.log()
        start_worker(held.config, "second")
        await _every_fate(bootstrap, held, results={"good-0"})


async def test_rebalance_with_an_open_window_behind_a_dead_letter_loses_nothing(
    bootstrap, emulator, make_topic, configure, start_worker
):
    async with _batch_held(bootstrap, make_topic, configure, start_worker) as held:
        first = held.worker
        loaded_before = first.log().count(LOADED)
        second = start_worker(held.config, "second")
        await wait_log(second, LOADED)
        await wait_log(first, LOADED, count=loaded_before + 1)  # the first worker's share after the rebalance
        await _every_fate(bootstrap, held, results={"good-0"})
        assert first.proc.poll() is None and second.proc.poll() is None


async def test_auto_sigkill_with_a_batch_event_behind_a_served_flex_event_loses_nothing(
    bootstrap, emulator, make_topic, configure, start_worker
):
    now = time.time()
    batch_0 = {"id": "batch-0", "text": "x", "deadline": now + WEEK}  # far: batch, waits in a window
    flex_1 = {"id": "flex-1", "text": "y", "deadline": now + 60}  # near: served flex at once
    flex = {"concurrency": 4, "attempts": 2, "budget": "30s", "backoff_initial": "50ms", "backoff_max": "200ms",
            "fallback": "dead_letter"}  # fmt: skip

    async def flex_served(held: Held) -> bool:
        return "flex-1" in await held.result_ids()

    async with held_window(
        bootstrap, make_topic, configure, start_worker,
        values=[batch_0, flex_1],
        held_id="batch-0", ids={"batch-0", "flex-1"}, finished=flex_served, what="the flex result of offset 1",
        mode="auto", flex=flex,
    ) as held:  # fmt: skip
        assert {r["mode"] for r in held.results.values} == {"flex"}
        held.worker.kill()
        start_worker(held.config, "second")
        await _every_fate(bootstrap, held, results={"batch-0", "flex-1"})
    modes = {r["id"]: r["mode"] for r in held.results.values}
    assert modes["batch-0"] == "batch"


# -- random-kill soak --------------------------------------------------------------------------

SOAK_LONG = os.environ.get("BATCHSTREAM_SOAK") == "long"
SOAK_SEEDS = range(5) if SOAK_LONG else range(1)
SOAK_EVENTS = int(os.environ.get("BATCHSTREAM_SOAK_EVENTS", 5000 if SOAK_LONG else 400))
SOAK_KILLS = int(os.environ.get("BATCHSTREAM_SOAK_KILLS", 10 if SOAK_LONG else 3))
#: The short form (CI) runs auto, which routes events to both lanes; batch and flex alone have
#: SIGKILL tests of their own (test_batch_durability.py, test_flex.py) and join the long form.
SOAK_MODES = ["batch", "flex", "auto"] if SOAK_LONG else ["auto"]


async def durable_flex_responses(bootstrap: str, topic: str, partitions: int) -> set[str]:
    """The provider response ids of the flex results committed on ``topic`` so far (read up to the
    last stable offset, as a ``read_committed`` consumer sees them)."""
    values = [orjson.loads(v) for v in await committed_values(bootstrap, topic, partitions) if v is not None]
    return {v["response"]["id"] for v in values if isinstance(v, dict) and v.get("service_tier") == "flex"}


def soak_inputs(rng: random.Random, n: int, mode: str) -> tuple[list[bytes | dict[str, Any]], list[bytes]]:
    """``n`` events and their keys: template events, ~3% malformed, ~25% request events of two
    models sharing one key (so one partition has two windows sealing independently); in
    ``auto`` mode ~20% carry a near deadline (flex) and most of the rest a far one."""
    now = time.time()
    values: list[bytes | dict[str, Any]] = []
    keys: list[bytes] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.015:
            values.append(b"not json %d" % i)
            keys.append(b"k%d" % (i % 30))
            continue
        if roll < 0.03:
            values.append(b"[%d, 2, 3]" % i)
            keys.append(b"k%d" % (i % 30))
            continue
        event: dict[str, Any]
        if roll < 0.28:
            model = "gpt-5-nano" if i % 2 else "gpt-5-mini"
            event = {"id": f"s{i}", "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]}}
            keys.append(b"two-models")
        else:
            event = {"id": f"s{i}", "text": f"event {i}"}
            keys.append(b"k%d" % (i % 30))
        if mode == "auto":
            deadline = rng.random()
            if deadline < 0.2:
                event["deadline"] = now + 600  # well under the batch path's bound: flex
            elif deadline < 0.8:
                event["deadline"] = now + WEEK
        values.append(event)
    return values, keys


@pytest.mark.soak
@pytest.mark.timeout(1800 if SOAK_LONG else 300)
@pytest.mark.parametrize("seed", SOAK_SEEDS)
@pytest.mark.parametrize("mode", SOAK_MODES)
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_random_kills_lose_nothing(
    bootstrap, emulator, make_topic, configure, start_worker, guarantee, mode, seed
):  # fmt: skip
    """Every event ends with a fate; under ``exactly_once`` with one only, as a read_committed consumer
    sees it, and no flex call repeated except those a kill cut off before their record was written."""
    rng = random.Random(f"{mode}-{seed}")
    faults = emulator.emulator.faults
    faults.seed = seed
    faults.batch_seconds = 1.0
    faults.item_error_rate = 0.02
    if mode != "batch":
        faults.flex_429_rate = 0.2
    topic = await make_topic("soak", partitions=3)
    flex = {"concurrency": 8, "attempts": 3, "budget": "30s", "backoff_initial": "50ms", "backoff_max": "200ms",
            "fallback": "batch"}  # fmt: skip
    # A memory budget of about one window: while batches run, one window keeps its requests and
    # the others let theirs go and read them back by offset; kills land on both paths.
    config, group = configure(pipeline("soak", topic, mode=mode, flex=flex, max_held_requests=60,
                                       window={"max_requests": 50, "max_wait": "1s"}),
                              processing_guarantee=guarantee)  # fmt: skip
    values, keys = soak_inputs(rng, SOAK_EVENTS, mode)
    waves = SOAK_KILLS + 1
    size = -(-len(values) // waves)
    ids: set[str] = set()
    malformed: set[str] = set()  # not JSON, or not an object: their dead letters are the only ones decided locally
    kills: list[float] = []
    kill_marks: list[tuple[set[str], Counter[str]]] = []
    started = time.monotonic()
    for n in range(waves):
        chunk, chunk_keys = values[n * size : (n + 1) * size], keys[n * size : (n + 1) * size]
        placed = await produce_placed(bootstrap, topic, chunk, keys=chunk_keys)
        for value, (partition, offset) in zip(chunk, placed, strict=True):
            ids.add(value["id"] if isinstance(value, dict) else f"{topic}/{partition}/{offset}")
            if not isinstance(value, dict):
                malformed.add(f"{topic}/{partition}/{offset}")
        worker = start_worker(config, f"w{n}")
        if n == SOAK_KILLS:
            break
        await wait_log(worker, LOADED)
        delay = rng.uniform(0.5, 4.0)
        kills.append(delay)
        await asyncio.sleep(delay)  # the kill's timing, not a synchronisation
        worker.kill()
        if guarantee == "exactly_once":  # what was durable at the kill, and the calls made so far
            kill_marks.append((await durable_flex_responses(bootstrap, f"{topic}.results", 3),
                               Counter(emulator.emulator.flex_served_ids)))  # fmt: skip

    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await wait_fates(results, dlq, ids, timeout=240 if SOAK_LONG else 120)
        ends = await end_offsets(bootstrap, topic, 3)
        await wait_committed_offsets(bootstrap, group, topic, ends, timeout=60)
        fates = Counter(v["id"] for v in results.values + dlq.values)
    assert set(fates) == ids, f"ids with a fate that were never produced: {sorted(set(fates) - ids)[:10]}"
    # Every well-formed event is served: results for all of them but those the provider failed
    # on every attempt (a rare roll), dead letters for exactly the malformed ones.
    local = {v["id"] for v in dlq.values if v["reason"] in ("invalid_json", "wrong_shape")}
    assert local == malformed, (
        f"malformed events without their dead letter, or served ones with one: {local ^ malformed}"
    )
    served = {v["id"] for v in results.values}
    provider_failed = {v["id"] for v in dlq.values} - local
    assert served == ids - malformed - provider_failed, "a well-formed event neither served nor failed by the provider"
    assert len(provider_failed) <= 0.05 * len(ids), Counter(v["reason"] for v in dlq.values)
    duplicates = sum(n - 1 for n in fates.values())
    reasons = Counter(v["reason"] for v in dlq.values)
    flex_results = sum(1 for v in results.values if v["service_tier"] == "flex")
    flex_calls = emulator.emulator.stats["flex_served"]
    print(
        f"soak {guarantee} {mode}/{seed}: {len(ids)} ids, {len(results.values)} results, {len(dlq.values)} dead "
        f"letters {dict(reasons)}, {duplicates} duplicates, {flex_calls} flex calls served for {flex_results} flex "
        f"results, kills at {[round(k, 2) for k in kills]} s, {time.monotonic() - started:.1f}s"
    )
    if guarantee == "exactly_once":
        assert duplicates == 0, [i for i, n in fates.items() if n > 1][:10]
        # A call the provider answered but whose record a kill cut off is made again; one whose
        # record was written (committed before the kill) is never made again.
        served = emulator.emulator.flex_served_ids
        for n, (durable, served_then) in enumerate(kill_marks):
            again = {rid: served[rid] - served_then[rid] for rid in durable if served[rid] != served_then[rid]}
            assert not again, f"flex calls made again after kill {n} although their results were committed: {again}"
        assert flex_calls >= flex_results
