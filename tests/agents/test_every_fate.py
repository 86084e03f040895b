"""Every record gets one fate, whatever it holds and however the worker is configured: template
breakers, oversized values and results, JSON nested too deep, topic limits lowered at run time,
two pipelines on one input topic (real broker, real worker processes)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.support import (
    TopicReader,
    pipeline,
    produce,
    wait_committed,
    wait_until,
)  # fmt: skip

pytestmark = pytest.mark.kafka

GUARANTEES = ["at_least_once", "exactly_once"]


async def create_topic(bootstrap: str, name: str, partitions: int, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=configs)]
        )
    finally:
        await admin.close()


async def set_topic_config(bootstrap: str, name: str, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=configs)])
    finally:
        await admin.close()


def fates_by_offset(records: list[dict[str, Any]]) -> Counter[tuple[int, int]]:
    return Counter((r["source"]["partition"], r["source"]["offset"]) for r in records)


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
        await asyncio.sleep(0)
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


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
@pytest.mark.parametrize("guarantee", GUARANTEES)
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
