"""``batchstream backfill`` on the real broker: a file run to completion as a named task version,
the same version again adding nothing (a result or dead letter emitted twice counted once), a
range of a topic by offsets, and ranges across partitions (by offsets, by time) copied exactly,
a copy cut short resumed without a record twice."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.topics import TopicReader as RecordReader
from tests.support import TopicReader, create_topic, end_offsets, pipeline, produce, run_cli

pytestmark = pytest.mark.kafka


def backfill(config: Path, *args: str) -> tuple[int, str]:
    proc = run_cli("backfill", "-c", str(config), "--pipeline", "p", *args, timeout=300, columns=120)
    return proc.returncode, proc.stdout + proc.stderr


def row(output: str, label: str) -> str:
    match = re.search(rf"│ {re.escape(label)}\s+│ ([^│]*?)\s+│", output)
    assert match, f"no {label!r} row in:\n{output}"
    return match.group(1)


async def test_a_file_is_backfilled_as_a_task_version_once_and_a_topic_range_by_offsets(
    bootstrap, emulator, make_topic, configure, tmp_path, unique
):
    emulator.emulator.faults.reject_lines_containing = "POISON"
    topic = await make_topic("in", partitions=1)
    config, _ = configure(pipeline("p", topic, template={"user": "{text}"}, validate_requests=False,
                                   window={"max_requests": 10, "max_wait": "300ms"}))  # fmt: skip
    events = [{"id": f"f{i}", "text": "POISON" if i in (4, 9) else f"ticket {i}"} for i in range(30)]
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join([*map(orjson.dumps, events), b"{not json"]) + b"\n")
    output = f"backfill-{unique}"

    code, shown = backfill(config, "--task-version", "v1", "--file", str(source), "--to", output)
    assert code == 0, shown
    assert (row(shown, "events"), row(shown, "results"), row(shown, "missing")) == ("31", "28", "0"), shown
    assert row(shown, "dead letters").startswith("3 "), shown
    summary = {label: row(shown, label) for label in ("events", "results", "dead letters", "missing", "cost")}
    async with TopicReader(bootstrap, output) as results:
        written = await results.until(28, timeout=30)
    assert {r["task_version"] for r in written} == {"v1"} and {r["id"] for r in written} == {
        f"f{i}" for i in range(30) if i not in (4, 9)}  # fmt: skip
    async with TopicReader(bootstrap, f"{output}.dlq") as letters:
        dead = await letters.until(3, timeout=30)
    # at-least-once: a worker may emit a result or a dead letter again, for the same record (the cost
    # of a second emission is not counted again, whatever it says)
    await produce(bootstrap, output, [written[0], {**written[0], "cost": {"paid": 5.0, "realtime": 10.0}}])
    await produce(bootstrap, f"{output}.dlq", [dead[0]])
    before = await end_offsets(bootstrap, output, 1)

    code, shown = backfill(config, "--task-version", "v1", "--file", str(source), "--to", output)
    assert code == 0, shown
    assert {label: row(shown, label) for label in summary} == summary, "each record's fate counted once"
    assert await end_offsets(bootstrap, output, 1) == before, "the same version again adds nothing"

    await produce(bootstrap, topic, [{"id": f"t{i}", "text": f"ticket {i}"} for i in range(20)])
    code, shown = backfill(config, "--task-version", "v2", "--topic", topic, "--offsets", "0:5-14",
                           "--to", output)  # fmt: skip
    assert code == 0 and (row(shown, "events"), row(shown, "results")) == ("10", "10"), shown
    async with TopicReader(bootstrap, output) as results:
        second = [r for r in await results.until(38, timeout=30) if r["task_version"] == "v2"]
    assert sorted(r["id"] for r in second) == sorted(f"t{i}" for i in range(5, 15))


def copies(records: list) -> list[tuple[bytes | None, bytes | None, tuple]]:
    return [(r.key, r.value, r.headers) for r in records]


async def test_topic_ranges_across_partitions_are_copied_exactly_and_a_cut_copy_resumes(
    bootstrap, emulator, make_topic, configure, unique
):
    topic = await make_topic("in", partitions=2)
    config, _ = configure(pipeline("p", topic, template={"user": "{text}"}, validate_requests=False,
                                   window={"max_requests": 10, "max_wait": "300ms"}))  # fmt: skip
    # partition 0: written a second apart, but offset 7 stamped late and offset 8 early (clocks differ)
    now = int(time.time() * 1000) - 60_000
    stamps = {0: [now + i * 1000 for i in range(10)], 1: [now + i * 1000 for i in range(10)]}
    stamps[0][7], stamps[0][8] = now + 20_000, now + 1000
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, times in stamps.items():
            for i, stamp in enumerate(times):
                await producer.send_and_wait(topic, orjson.dumps({"id": f"p{partition}-{i}", "text": f"ticket {i}"}),
                                             key=f"k{i}".encode(), partition=partition, timestamp_ms=stamp,
                                             headers=[("h", f"{partition}/{i}".encode())])  # fmt: skip
    finally:
        await producer.stop()
    async with RecordReader(bootstrap, {}) as reader:
        source = {p: [r for r in await reader.read(topic) if r.partition == p] for p in (0, 1)}
        ends = await reader.end_offsets(topic)  # in the order the name has always hashed them
    # a copy of 0:2-5,1:4-9 cut short: partition 1 of its backfill topic (named as it always was) holds 3 records
    material = {"topic": topic, "spans": {0: (2, 5), 1: (4, 9)}, "ends": ends}
    name = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_NON_STR_KEYS)).hexdigest()[:12]
    filled = f"batchstream.backfill.p.{name}"
    await create_topic(bootstrap, filled, 2)
    cut = source[1][4:7]
    await produce(bootstrap, filled, [r.value for r in cut], keys=[r.key for r in cut], partition=1,
                  headers=[list(r.headers) for r in cut])  # fmt: skip
    output = f"backfill-{unique}"

    code, shown = backfill(config, "--task-version", "v1", "--topic", topic, "--offsets", "0:2-5,1:4-9",
                           "--to", output)  # fmt: skip
    assert code == 0 and filled in shown, shown
    assert (row(shown, "events"), row(shown, "results"), row(shown, "missing")) == ("10", "10", "0"), shown
    async with RecordReader(bootstrap, {}) as reader:
        copied = {p: [r for r in await reader.read(filled) if r.partition == p] for p in (0, 1)}
    assert copies(copied[0]) == copies(source[0][2:6]) and copies(copied[1]) == copies(source[1][4:10])

    # by time: from the first record written at +3s on, those stamped at most +6s (offset 8 too, not 7)
    code, shown = backfill(config, "--task-version", "v2", "--topic", topic, "--since", str(now + 3000),
                           "--until", str(now + 6000), "--to", output)  # fmt: skip
    assert code == 0 and (row(shown, "events"), row(shown, "results")) == ("9", "9"), shown
    [timed] = re.findall(r"batchstream\.backfill\.p\.[0-9a-f]{12}", shown)
    async with RecordReader(bootstrap, {}) as reader:
        copied = {p: [r for r in await reader.read(timed) if r.partition == p] for p in (0, 1)}
    assert copies(copied[0]) == copies([source[0][i] for i in (3, 4, 5, 6, 8)])
    assert copies(copied[1]) == copies(source[1][3:7])
    async with TopicReader(bootstrap, output) as results:
        second = [r for r in await results.until(19, timeout=30) if r["task_version"] == "v2"]
    assert sorted(r["id"] for r in second) == sorted([*(f"p0-{i}" for i in (3, 4, 5, 6, 8)),
                                                      *(f"p1-{i}" for i in range(3, 7))])  # fmt: skip
