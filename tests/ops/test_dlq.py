"""``batchstream dlq`` on the real broker, as an operator runs it: inspect the dead letters of a
run, fix the cause, dry-run a replay, replay, and see the results appear; a second replay
publishes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support import (
    TopicReader,
    end_offsets,
    pipeline,
    produce,
    run_cli,
    set_topic_config,
    wait_every_id,
    wait_until,
)

pytestmark = pytest.mark.kafka

POISONED = {3, 8, 15}


def dlq(config: Path, *args: str) -> str:
    proc = run_cli("dlq", *args, "-c", str(config), "--pipeline", "p")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def row(output: str, first: str) -> list[str]:
    match = re.search(rf"│ {re.escape(first)}\s+│(.*)│\s*$", output, re.MULTILINE)
    assert match, f"no row {first!r} in:\n{output}"
    return [cell.strip() for cell in match.group(1).split("│")]


async def records_from(bootstrap: str, topic: str, starts: dict[int, int]) -> list[tuple[bytes | None, bytes, dict]]:
    """(key, value, headers) of the records of ``topic`` after ``starts`` (per partition)."""
    ends = await end_offsets(bootstrap, topic, len(starts))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out = []
    try:
        for partition, start in starts.items():
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            while await consumer.position(tp) < ends[partition]:
                for message in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    out.append((message.key, message.value, dict(message.headers)))
    finally:
        await consumer.stop()
    return out


async def test_dead_letters_are_inspected_and_replayed_after_the_cause_is_fixed(
    bootstrap, emulator, make_topic, configure, start_worker
):
    emu = emulator.emulator
    emu.faults.reject_lines_containing = "POISON"  # a cause only the provider judges: fixed below
    topic = await make_topic("in", partitions=2)
    config, _ = configure(pipeline("p", topic, template={"user": "{text}"}, validate_requests=False))
    values = [{"id": f"e{i}", "text": "POISON" if i in POISONED else f"ticket {i}"} for i in range(20)]
    keys = [f"k{i}".encode() for i in range(20)]
    await produce(bootstrap, topic, [*values, b"{not json"], keys=[*keys, b"bad"])
    originals = {orjson.dumps(v): k for v, k in zip(values, keys, strict=True)}
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dead:

        async def all_fates() -> bool:
            return len(await results.poll()) + len(await dead.poll()) >= 21

        await wait_until(all_fates, timeout=120, what="every fate")
        shown = dlq(config, "inspect")
        assert row(shown, "provider_rejected")[0] == "3" and row(shown, "invalid_json")[0] == "1", shown
        assert "invalid_request" in row(shown, "provider_rejected")[3], "a sample message"

        emu.faults.reject_lines_containing = None  # the cause, fixed
        before = await end_offsets(bootstrap, topic, 2)
        planned = dlq(config, "replay", "--reason", "provider_rejected", "--dry-run")
        assert row(planned, "provider_rejected")[:2] == ["3", "3"] and "nothing published" in planned, planned
        assert await end_offsets(bootstrap, topic, 2) == before, "a dry run publishes nothing"

        done = dlq(config, "replay", "--reason", "provider_rejected")
        assert "replayed 3 events to " + topic in " ".join(done.split()), done
        replayed = await records_from(bootstrap, topic, before)
        assert sorted(orjson.loads(v)["id"] for _, v, _ in replayed) == ["e15", "e3", "e8"], "exactly the replayed"
        assert all(originals[v] == k for k, v, _ in replayed), "the original bytes and key"
        assert all(h["batchstream-replays"] == b"1" for _, _, h in replayed)
        await wait_every_id([results], {"e3", "e8", "e15"}, timeout=120)

        again = dlq(config, "replay", "--reason", "provider_rejected")
        assert row(again, "provider_rejected")[:3] == ["3", "0", "3"], again
        capped = dlq(config, "replay", "--reason", "invalid_json", "--max-replays", "0")
        assert "replayed 0 events" in capped and row(capped, "invalid_json") == ["1", "0", "0", "1"], capped

        # an event whose window read it back after retention removed it: its dead letter carries no event
        gone = {"id": f"{topic}/0/10000", "pipeline": "p", "reason": "input_gone", "message": "no longer in the topic",
                "attempts": 0, "event": None, "original_base64": "",
                "source": {"topic": topic, "partition": 0, "offset": 10_000}}  # fmt: skip
        await produce(bootstrap, f"{topic}.dlq", [gone])
        skipped = dlq(config, "replay", "--reason", "input_gone")
        assert "skipped 1 dead letters without their event (input_gone" in " ".join(skipped.split()), skipped
        assert "replayed 0 events" in skipped, "nothing to replay: the event is gone"
    assert len(await records_from(bootstrap, topic, before)) == 3, "a second replay publishes nothing"
    assert worker.terminate() == 0, worker.log()


async def test_a_replay_counts_only_what_the_broker_acknowledged(
    bootstrap, emulator, make_topic, configure, run_pipeline
):
    big = orjson.dumps({"id": "big", "text": "x" * 3000})  # over max_event_bytes: dead-lettered with its bytes
    fates = await run_pipeline([big, b"{oops"], max_event_bytes=2000, template={"user": "{text}"})
    assert {d["reason"] for d in fates.dead} == {"oversized", "invalid_json"}
    config = next(Path(fates.worker.log_path).parent.glob("c.yaml"))
    target = await make_topic("small", partitions=1)
    await set_topic_config(bootstrap, target, **{"max.message.bytes": "1000"})  # the oversized event cannot fit
    proc = run_cli("dlq", "replay", "-c", str(config), "--pipeline", "p", "--to", target)
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "replayed 1 events to" in out and "1 events were refused by the broker and not replayed" in out
    assert len(await records_from(bootstrap, target, {0: 0})) == 1, "only the acknowledged one is there"
