"""Every record gets one fate, whatever it holds and however the worker is configured: template
breakers, oversized values and results, JSON nested too deep, topic limits lowered at run time,
two pipelines on one input topic (real broker, real worker processes)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete

from providers import load_settings
from streams.models import task_version
from tests.support import (
    TopicReader,
    create_topic,
    end_offsets,
    pipeline,
    produce,
    produce_placed,
    set_topic_config,
    wait_committed,
    wait_committed_offsets,
    wait_every_id,
    wait_log,
    wait_until,
)  # fmt: skip

pytestmark = pytest.mark.kafka

GUARANTEES = ["at_least_once", "exactly_once"]


def fates_by_offset(records: list[dict[str, Any]]) -> Counter[tuple[int, int]]:
    return Counter((r["source"]["partition"], r["source"]["offset"]) for r in records)


async def submitted_then_killed(
    emu: Any, start_worker: Any, config: Any, bootstrap: str, group: str, topic: str, *, batches: int, events: int
) -> None:
    """Run a worker until ``batches`` batches are created and all ``events`` are committed
    (sealed windows), then SIGKILL it: its windows are in flight at the provider."""
    worker = start_worker(config, "before")

    async def submitted() -> bool:
        return emu.stats.get("batches_created", 0) >= batches

    await wait_until(submitted, timeout=90, what=f"{batches} batches submitted")
    await wait_committed(bootstrap, group, topic, events)
    worker.kill()


def deep_event(levels: int) -> bytes:
    return (
        b'{"id": "deep", "body": {"messages": [{"role": "user", "content": "x"}], "x": '
        + b"[" * levels
        + b"]" * levels
        + b"}}"
    )


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_template_breakers_oversized_values_and_results_each_end_once(
    bootstrap, emulator, make_topic, configure, start_worker, guarantee
):
    topic = await make_topic("fate", partitions=2)
    # results of long texts do not fit the output topic's records; short ones do
    await create_topic(bootstrap, f"{topic}.results", 2, **{"max.message.bytes": "1500"})
    values: list[bytes] = []
    for i in range(400):
        values.append(orjson.dumps({"id": f"g{i}", "amount": i, "subject": "s" * (300 if i % 40 == 0 else 5)}))
    breakers = [orjson.dumps({"id": f"null{i}", "amount": None, "subject": "x"}) for i in range(5)]
    huge = b"\xff" + bytes(range(256)) * 3500  # about 900 KB, not UTF-8: its base64 is over 1 MB
    deep = deep_event(400)
    for at, value in zip((17, 99, 150, 260, 333, 201, 380), [*breakers, huge, deep], strict=True):
        values.insert(at, value)
    config, group = configure(
        pipeline("fate", topic, template={"user": "Amount {amount:>8} for {subject}"}, max_event_bytes=2_000_000,
                 window={"max_requests": 50, "max_wait": "500ms"}),
        processing_guarantee=guarantee,
    )  # fmt: skip
    await produce(bootstrap, topic, values, keys=[b"k%d" % (i % 9) for i in range(len(values))])
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:

        async def all_fates() -> bool:
            assert worker.proc.poll() is None, worker.log()
            return len(await results.poll()) + len(await dlq.poll()) >= len(values)

        await wait_until(all_fates, timeout=120, what="a fate for every event")
        await wait_committed(bootstrap, group, topic, len(values))
        # Every offset is committed, so every fate is written: read to the topics' end, where a
        # second fate of an offset would be.
        await results.to_end()
        await dlq.to_end()
    fates = fates_by_offset(results.values + dlq.values)
    assert sum(fates.values()) == len(values) and set(fates.values()) == {1}, "one fate per offset"
    assert worker.proc.poll() is None, "the worker kept running"
    assert "Traceback" not in worker.log()
    dead = {d["id"]: d for d in dlq.values}
    for i in range(5):
        assert dead[f"null{i}"]["reason"] == "template_error"
        assert "NoneType" in dead[f"null{i}"]["message"]
    assert dead["deep"]["reason"] == "invalid_request"
    assert dead["deep"]["original_ref"]["sha256"] == hashlib.sha256(deep).hexdigest()
    (letter,) = [d for d in dlq.values if d["reason"] == "undecodable"]
    assert letter["original_base64"] is None and letter["event"] is None
    assert letter["original_ref"]["size"] == len(huge)
    assert letter["original_ref"]["sha256"] == hashlib.sha256(huge).hexdigest()
    assert base64.b64decode(letter["original_head_base64"]) == huge[:1024]
    too_large = {d["id"] for d in dlq.values if d["reason"] == "result_too_large"}
    assert too_large == {f"g{i}" for i in range(0, 400, 40)}, "long texts' results do not fit the output topic"
    assert {r["id"] for r in results.values} == {f"g{i}" for i in range(400)} - too_large


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_an_output_topic_limit_lowered_at_run_time_dead_letters_what_no_longer_fits(
    bootstrap, emulator, make_topic, configure, start_worker, guarantee
):
    topic = await make_topic("shrink", partitions=2)
    config, group = configure(pipeline("shrink", topic, template={"user": "{text}"}), processing_guarantee=guarantee)
    first = [{"id": f"a{i}", "text": f"first {i}"} for i in range(40)]
    await produce(bootstrap, topic, first)
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await results.until(40, timeout=90)
        # every result is larger than this; a reference-only dead letter is not
        await set_topic_config(bootstrap, f"{topic}.results", **{"max.message.bytes": "600"})
        second = [{"id": f"b{i}", "text": f"second {i} " + "y" * 150} for i in range(40)]
        await produce(bootstrap, topic, second)

        async def all_fates() -> bool:
            assert worker.proc.poll() is None, worker.log()
            return len(await results.poll()) + len(await dlq.poll()) >= 80

        await wait_until(all_fates, timeout=120, what="a fate for every event")
        await wait_committed(bootstrap, group, topic, 80)
    assert {r["id"] for r in results.values} == {v["id"] for v in first}
    assert sorted(d["id"] for d in dlq.values) == sorted(v["id"] for v in second), "each once, none lost"
    assert {d["reason"] for d in dlq.values} == {"result_too_large"}
    assert "max.message.bytes" in dlq.values[0]["message"]


@pytest.mark.parametrize(
    ("guarantee", "stop"), [("at_least_once", "sigterm"), ("at_least_once", "sigkill"), ("exactly_once", "sigkill")]
)
async def test_two_pipelines_on_one_topic_each_serve_every_event_across_a_restart(
    bootstrap, emulator, make_topic, configure, start_worker, guarantee, stop
):
    topic = await make_topic("fanout", partitions=2)
    fast = pipeline("fast", topic, window={"max_requests": 500, "max_wait": "500ms"})
    slow = pipeline("slow", topic, window={"max_requests": 500, "max_wait": "8s"}, output_topic=f"{topic}.slow",
                    dead_letter_topic=f"{topic}.slowdlq", state_topic=f"{topic}.slowstate")  # fmt: skip
    config, group = configure(fast, slow, processing_guarantee=guarantee)
    values = [{"id": f"f{i}", "text": f"event {i}"} for i in range(100)]
    await produce(bootstrap, topic, values, keys=[b"k%d" % i for i in range(100)])
    worker = start_worker(config, "first")
    ids = {v["id"] for v in values}
    async with (
        TopicReader(bootstrap, f"{topic}.results") as fast_out,
        TopicReader(bootstrap, f"{topic}.slow") as slow_out,
    ):
        await fast_out.until(100, timeout=90)
        assert len(await slow_out.poll()) == 0, "the slow pipeline's windows are still open"
        if stop == "sigterm":
            assert worker.terminate() == 0, worker.log()
        else:
            worker.kill()
        second = start_worker(config, "second")

        async def slow_done() -> bool:
            assert second.proc.poll() is None, second.log()
            await fast_out.poll()
            await slow_out.poll()
            return {r["id"] for r in slow_out.values} >= ids

        await wait_until(slow_done, timeout=120, what="the slow pipeline's results after the restart")
        await wait_committed(bootstrap, group, topic, 100)
        await fast_out.poll()
    assert {r["id"] for r in slow_out.values} == ids and {r["id"] for r in fast_out.values} == ids
    if guarantee == "exactly_once":
        for out in (fast_out, slow_out):
            counts = Counter(r["id"] for r in out.values)
            assert max(counts.values()) == 1, "no duplicate under exactly_once"


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_windows_in_flight_finish_as_sealed_when_model_and_template_change(
    bootstrap, emulator, make_topic, configure, start_worker, guarantee
):
    emu = emulator.emulator
    emu.faults.batch_seconds = 600  # in flight until lowered below
    topic = await make_topic("change", partitions=2)
    window = {"max_requests": 10, "max_wait": "300ms"}
    before = pipeline("p", topic, window=window, template={"user": "Before: {text}"})
    config, group = configure(before, processing_guarantee=guarantee)
    sealed_with = task_version(load_settings(config, env={"OPENAI_API_KEY": "k"}).pipelines[0])
    values = [{"id": f"c{i}", "text": f"ticket {i}"} for i in range(40)]
    await produce(bootstrap, topic, values, keys=[b"k%d" % (i % 2) for i in range(40)])
    await submitted_then_killed(emu, start_worker, config, bootstrap, group, topic, batches=4, events=40)
    after = pipeline("p", topic, window=window, model="gpt-5-nano", template={"user": "After: {text} ({id})"})
    configure(after, processing_guarantee=guarantee)
    now_version = task_version(load_settings(config, env={"OPENAI_API_KEY": "k"}).pipelines[0])
    assert now_version != sealed_with
    emu.faults.batch_seconds = 0.2
    more = [{"id": f"n{i}", "text": f"new {i}"} for i in range(10)]
    await produce(bootstrap, topic, more)
    restarted = start_worker(config, "after")
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await wait_every_id([results, dlq], {v["id"] for v in values + more}, timeout=120)
        await wait_committed(bootstrap, group, topic, 50)
    assert dlq.values == [], "the paid results of windows in flight are emitted, never template_error"
    by_id = {r["id"]: r for r in results.values}
    assert {by_id[v["id"]]["task_version"] for v in values} == {sealed_with}
    assert {by_id[v["id"]]["response"]["model"] for v in values} == {"gpt-5-mini"}
    assert {by_id[v["id"]]["task_version"] for v in more} == {now_version}
    assert {by_id[v["id"]]["response"]["model"] for v in more} == {"gpt-5-nano"}
    assert restarted.proc.poll() is None


@pytest.mark.parametrize("attempts", [3, 1])
async def test_a_batch_the_provider_no_longer_knows_goes_another_round_within_the_retry_budget(
    bootstrap, emulator, make_topic, configure, start_worker, attempts
):
    emu = emulator.emulator
    emu.faults.batch_seconds = 600
    topic = await make_topic("vanish", partitions=2)
    config, group = configure(
        pipeline(
            "p",
            topic,
            window={"max_requests": 10, "max_wait": "300ms"},
            retry={"attempts": attempts, "backoff_initial": "100ms", "backoff_max": "200ms"},
        )
    )
    values = [{"id": f"v{i}", "text": f"event {i}"} for i in range(20)]
    await produce(bootstrap, topic, values, keys=[b"k%d" % (i % 2) for i in range(20)])
    worker = start_worker(config)

    async def submitted() -> bool:
        return emu.stats.get("batches_created", 0) >= 2

    await wait_until(submitted, timeout=90, what="both windows submitted")
    emu.batches.clear()  # the provider forgot them (deleted, or a gateway that lost its state)
    emu.faults.batch_seconds = 0.2
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await wait_every_id([results, dlq], {v["id"] for v in values}, timeout=90)
        await wait_committed(bootstrap, group, topic, 20)
    assert worker.proc.poll() is None
    if attempts > 1:
        assert {r["id"] for r in results.values} == {v["id"] for v in values} and dlq.values == []
        assert emu.stats["batches_created"] >= 4, "each window went another round"
    else:
        assert results.values == []
        assert {d["reason"] for d in dlq.values} == {"retries_exhausted"}, "the retry budget bounds it"
    assert "its requests go another round" in worker.log()


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_result_file_over_max_result_bytes_ends_its_window_as_dead_letters(
    bootstrap, emulator, make_topic, configure, start_worker, guarantee
):
    """A batch whose result file is larger than the provider's ``max_result_bytes``: its events
    end as ``batch_results_too_large`` dead letters naming the setting, committed, and a window
    whose results fit is served."""
    topic = await make_topic("cap", partitions=2)
    config, group = configure(pipeline("p", topic, window={"max_requests": 10, "max_wait": "300ms"}),
                              provider={"max_result_bytes": 4096}, processing_guarantee=guarantee)  # fmt: skip
    small = [{"id": f"s{i}", "text": "hi"} for i in range(2)]  # partition 0: a small result file
    large = [{"id": f"l{i}", "text": "x" * 300} for i in range(10)]  # partition 1: a file over 4 KiB
    await produce_placed(bootstrap, topic, small, partition=0)
    await produce_placed(bootstrap, topic, large, partition=1)
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await wait_every_id([results, dlq], {v["id"] for v in small + large}, timeout=90)
        await wait_committed_offsets(bootstrap, group, topic, {0: 2, 1: 10})
    assert sorted(r["id"] for r in results.values) == ["s0", "s1"]
    assert sorted(d["id"] for d in dlq.values) == sorted(v["id"] for v in large)
    assert {d["reason"] for d in dlq.values} == {"batch_results_too_large"}
    assert all("max_result_bytes (4096)" in d["message"] and d["event"]["text"] for d in dlq.values)
    assert worker.proc.poll() is None


# -- the mixed soak: what production sends, two pipelines on one topic, SIGKILLs ---------------

SOAK_LONG = os.environ.get("BATCHSTREAM_SOAK") == "long"
MIXED_EVENTS = int(os.environ.get("BATCHSTREAM_SOAK_EVENTS", 3000 if SOAK_LONG else 400))
MIXED_KILLS = int(os.environ.get("BATCHSTREAM_SOAK_KILLS", 8 if SOAK_LONG else 3))


def mixed_inputs(rng: random.Random, n: int) -> list[bytes]:
    """Valid events, and among them template breakers, oversized non-UTF-8 values, JSON nested
    too deep to write back, long texts whose results outgrow the output topic, and malformed JSON."""
    values = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.03:
            values.append(orjson.dumps({"id": f"m{i}", "amount": None, "subject": "breaks the format spec"}))
        elif roll < 0.04:
            values.append(b"\xfe" + rng.randbytes(rng.randrange(800_000, 950_000)))
        elif roll < 0.06:
            values.append(deep_event(rng.randrange(300, 900)).replace(b'"deep"', b'"m%d"' % i))
        elif roll < 0.10:
            values.append(b'{"id": "m%d", "amount": ' % i)
        else:
            subject = "s" * (300 if roll < 0.2 else 5)
            values.append(orjson.dumps({"id": f"m{i}", "amount": i, "subject": subject}))
    return values


@pytest.mark.soak
@pytest.mark.timeout(1800 if SOAK_LONG else 400)
@pytest.mark.parametrize("guarantee", GUARANTEES if SOAK_LONG else ["exactly_once"])  # the short form: the stricter
async def test_a_mixed_stream_with_two_pipelines_and_sigkills_ends_every_event_once_per_pipeline(
    bootstrap, emulator, make_topic, configure, start_worker, guarantee
):
    rng = random.Random(f"mixed-{guarantee}")
    emulator.emulator.faults.batch_seconds = 1.0
    topic = await make_topic("mixed", partitions=3)
    for output in (f"{topic}.results", f"{topic}.slow"):  # long texts' results do not fit them
        await create_topic(bootstrap, output, 3, **{"max.message.bytes": "1500"})
    template = {"user": "Amount {amount:>8} for {subject}"}
    fast = pipeline("fast", topic, template=template, max_event_bytes=2_000_000,
                    window={"max_requests": 40, "max_wait": "500ms"})  # fmt: skip
    slow = pipeline("slow", topic, template=template, max_event_bytes=2_000_000,
                    window={"max_requests": 200, "max_wait": "3s"}, output_topic=f"{topic}.slow",
                    dead_letter_topic=f"{topic}.slowdlq", state_topic=f"{topic}.slowstate")  # fmt: skip
    config, group = configure(fast, slow, processing_guarantee=guarantee)
    values = mixed_inputs(rng, MIXED_EVENTS)
    waves = MIXED_KILLS + 1
    size = -(-len(values) // waves)
    coordinates: set[tuple[int, int]] = set()
    for n in range(waves):
        placed = await produce_placed(
            bootstrap,
            topic,
            values[n * size : (n + 1) * size],
            keys=[b"k%d" % rng.randrange(20) for _ in values[n * size : (n + 1) * size]],
        )
        coordinates.update(placed)
        worker = start_worker(config, f"w{n}")
        if n == MIXED_KILLS:
            break
        await wait_log(worker, "loaded state of partitions", count=2)
        await asyncio.sleep(rng.uniform(0.5, 4.0))  # the kill's timing, not a synchronisation
        worker.kill()
    outputs = {"fast": (f"{topic}.results", f"{topic}.dlq"), "slow": (f"{topic}.slow", f"{topic}.slowdlq")}
    for name, (out, dead) in outputs.items():
        async with TopicReader(bootstrap, out) as results, TopicReader(bootstrap, dead) as dlq:

            async def complete() -> bool:
                await results.poll()
                await dlq.poll()
                return set(fates_by_offset(results.values + dlq.values)) >= coordinates

            await wait_until(complete, timeout=300 if SOAK_LONG else 180, what=f"every event's fate in {name}")
            fates = fates_by_offset(results.values + dlq.values)
        assert set(fates) == coordinates, name
        reasons = Counter(d["reason"] for d in dlq.values)
        assert {"template_error", "undecodable", "invalid_request", "invalid_json", "result_too_large"} <= set(reasons)
        assert all(d["message"] for d in dlq.values)
        if guarantee == "exactly_once":
            assert max(fates.values()) == 1, f"{name}: duplicates under exactly_once"
    ends = await end_offsets(bootstrap, topic, 3)
    await wait_committed_offsets(bootstrap, group, topic, ends, timeout=60)
    assert worker.proc.poll() is None


async def test_a_read_back_starts_at_the_oldest_event_still_in_the_topic(
    bootstrap, emulator, make_topic, configure, start_worker
):
    emu = emulator.emulator
    emu.faults.batch_seconds = 600
    topic = await make_topic("trim", partitions=1)
    config, group = configure(pipeline("p", topic, window={"max_requests": 20, "max_wait": "300ms"}))
    values = [{"id": f"t{i}", "text": f"event {i}"} for i in range(20)]
    await produce(bootstrap, topic, values)
    await submitted_then_killed(emu, start_worker, config, bootstrap, group, topic, batches=1, events=20)
    # retention cut into the window while no worker ran: offsets 0-7 are gone
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=8)})
    finally:
        await admin.close()
    emu.faults.batch_seconds = 0.2
    start_worker(config, "after")
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await wait_every_id([results, dlq], {v["id"] for v in values[8:]}, timeout=90)

        async def eight_gone() -> bool:
            return len(await dlq.poll()) >= 8

        await wait_until(eight_gone, timeout=30, what="the trimmed events' dead letters")
    assert sorted(r["source"]["offset"] for r in results.values) == list(range(8, 20)), "the events still there"
    assert sorted(d["source"]["offset"] for d in dlq.values) == list(range(8))
    assert {d["reason"] for d in dlq.values} == {"input_gone"}


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_finished_windows_leave_the_state_topic_and_a_stop_removes_the_work_folder(
    bootstrap, emulator, make_topic, configure, start_worker, unique, guarantee
):
    topic = await make_topic("tidy", partitions=2)
    name = f"tidy{unique}"
    config, group = configure(pipeline(name, topic, window={"max_requests": 10, "max_wait": "300ms"}),
                              processing_guarantee=guarantee)  # fmt: skip
    values = [{"id": f"d{i}", "text": f"event {i}"} for i in range(60)]
    await produce(bootstrap, topic, [*values, b"{oops"], keys=[b"k%d" % (i % 2) for i in range(61)])
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results:
        await results.until(60, timeout=90)
    await wait_committed(bootstrap, group, topic, 61)
    async with TopicReader(bootstrap, f"{topic}.state") as state:

        async def only_tombstones() -> bool:
            await state.poll()
            latest: dict[bytes | None, Any] = {}
            for key, value in state.records:
                latest[key] = value
            return bool(latest) and all(value is None for value in latest.values())

        await wait_until(only_tombstones, timeout=60, what="every finished window tombstoned while the worker runs")
    folders = list(Path(tempfile.gettempdir()).glob(f"batchstream-{name}-*"))
    assert len(folders) == 1, "the worker's work folder while it runs"
    assert worker.terminate() == 0, worker.log()
    assert not folders[0].exists(), "a stop removes the work folder"
