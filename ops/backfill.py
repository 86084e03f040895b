"""``batchstream backfill``: a pipeline's task over a bounded input, to completion, as a named
task version.

The input (the lines of a JSONL file, or a range of a topic: by time or by offsets) is first
copied, exactly (bytes, keys, headers, partitions), to a backfill topic named after the
pipeline and a hash of the input, so every run over the same input reads the same records
with the same ids. Then a worker runs the pipeline over that topic in a consumer group of its
own, ``batchstream-backfill.<pipeline>.<version>``, with results going to ``--output`` and
dead letters to ``<output>.dlq``, every result stamped ``task_version: <version>``. The command
follows the output topics with a progress bar and ends when every event of the backfill topic
has its result or dead letter and the group has committed the whole topic; it prints a
summary (counts, cost, duration) and exits 0 only if every event has a result or a dead letter.

Running the same version again adds nothing: its group has already committed the whole input.
A run cut short resumes where its group stopped (at-least-once, as a worker). Copying resumes
too: records are appended in order, so a partition already holding ``k`` records of the range
gets the rest from the ``k``-th on.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ops.topics import Record, TopicMissingError, TopicReader, json_object, start
from streams.config import PipelineSettings, Settings
from streams.errors import ConfigError

#: Offsets of a topic to back-fill: partition -> (first, end) with ``end`` exclusive.
Ranges = dict[int, tuple[int, int]]


def parse_offsets(spec: str) -> Ranges:
    """``0:100-199,1:0-49`` (partition:first-last, inclusive) -> ranges."""
    ranges: Ranges = {}
    try:
        for part in spec.split(","):
            partition, span = part.split(":")
            first, last = span.split("-")
            ranges[int(partition)] = (int(first), int(last) + 1)
    except ValueError:
        raise ConfigError(f"--offsets: {spec!r} is not partition:first-last[,partition:first-last...]") from None
    return ranges


@dataclass
class Source:
    """What to back-fill: file lines, or topic records by partition."""

    name: str
    records: dict[int, list[Record | bytes]] = field(default_factory=dict)


def file_source(path: Path) -> Source:
    data = path.read_bytes()
    lines: list[Record | bytes] = [line for line in data.splitlines() if line.strip()]
    return Source(hashlib.sha256(data).hexdigest()[:12], {0: lines})


async def topic_source(
    reader: TopicReader, topic: str, *, since_ms: int | None, until_ms: int | None, offsets: Ranges | None
) -> Source:
    partitions = [tp.partition for tp in await reader.partitions(topic)]
    ends = await reader.end_offsets(topic)
    if offsets is None:
        records = await reader.read(topic, since_ms=since_ms)
        if until_ms is not None:
            records = [r for r in records if r.timestamp_ms <= until_ms]
    else:
        unknown = sorted(set(offsets) - set(partitions))
        if unknown:
            raise ConfigError(f"--offsets: topic {topic!r} has no partition {unknown[0]}")
        records = [r for r in await reader.read(topic) if r.partition in offsets
                   and offsets[r.partition][0] <= r.offset < offsets[r.partition][1]]  # fmt: skip
    by_partition: dict[int, list[Record | bytes]] = {p: [] for p in partitions}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition[record.partition].append(record)
    spans = {p: (rs[0].offset, rs[-1].offset) if rs else None for p, rs in by_partition.items()}  # type: ignore[union-attr]
    material = orjson.dumps({"topic": topic, "spans": spans, "ends": ends}, option=orjson.OPT_NON_STR_KEYS)
    return Source(hashlib.sha256(material).hexdigest()[:12], by_partition)


async def copy_input(settings: Settings, options: dict[str, Any], topic: str, source: Source) -> int:
    """Create the backfill topic if needed and append what it lacks; its record count."""
    bootstrap, partitions = settings.kafka.bootstrap_servers, max(1, len(source.records))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await start(admin)
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, partitions, settings.kafka.replication_factor)])
    finally:
        await admin.close()
    async with TopicReader(bootstrap, options) as reader:
        have = await reader.end_offsets(topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **options)
    await start(producer)
    try:
        for partition, items in source.records.items():
            for item in items[have.get(partition, 0) :]:
                if isinstance(item, Record):
                    await producer.send(topic, item.value, key=item.key, headers=list(item.headers),
                                        partition=partition)  # fmt: skip
                else:
                    await producer.send(topic, item, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return sum(len(items) for items in source.records.values())


def event_id(record: Record) -> str:
    """The id the worker gives this record's result or dead letter (``streams/models.py``)."""
    try:
        event = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("id"), str | int) and not isinstance(event["id"], bool):
        return str(event["id"])
    return f"{record.topic}/{record.partition}/{record.offset}"


def worker_config(
    raw: dict[str, Any], cfg: PipelineSettings, *, topic: str, output: str, version: str
) -> dict[str, Any]:
    """The configuration the backfill's worker runs: only this pipeline, re-pointed, in a group of its own."""
    [pipeline] = [p for p in raw["pipelines"] if p.get("name") == cfg.name]
    overrides = {"input_topic": topic, "output_topic": output, "dead_letter_topic": f"{output}.dlq",
                 "state_topic": f"{topic}.batchstream-state", "task_version": version}  # fmt: skip
    kafka = {**(raw.get("kafka") or {}), "group_id": group_of(cfg, version)}
    document = {k: v for k, v in raw.items() if k not in ("pipelines", "kafka", "metrics_port", "webhooks")}
    return {**document, "kafka": kafka, "pipelines": [{**pipeline, **overrides}]}


def group_of(cfg: PipelineSettings, version: str) -> str:
    return f"batchstream-backfill.{cfg.name}.{version}"


@dataclass
class Fates:
    results: set[str] = field(default_factory=set)
    dead: dict[str, str] = field(default_factory=dict)
    paid: float = 0.0
    realtime: float = 0.0


async def follow(
    settings: Settings, options: dict[str, Any], cfg: PipelineSettings, *, topic: str, output: str, version: str,
    worker: subprocess.Popen[bytes], on_progress: Any, timeout: float | None,
) -> tuple[set[str], Fates]:  # fmt: skip
    """Follow the output topics until the group has committed the whole backfill topic."""
    bootstrap, group = settings.kafka.bootstrap_servers, group_of(cfg, version)
    fates = Fates()
    positions: dict[str, dict[int, int]] = {output: {}, f"{output}.dlq": {}}
    deadline = None if timeout is None else time.monotonic() + timeout
    async with TopicReader(bootstrap, options) as reader:
        expected = {event_id(r) for r in await reader.read(topic)}
        ends = await reader.end_offsets(topic)
        finished = False
        while True:
            for record in await _new(reader, output, positions[output]):
                body = json_object(record.value)
                if body.get("pipeline") == cfg.name and body.get("task_version") == version and "id" in body:
                    if str(body["id"]) not in fates.results:
                        cost = body.get("cost") or {}
                        fates.paid += float(cost.get("paid") or 0.0)
                        fates.realtime += float(cost.get("realtime") or 0.0)
                    fates.results.add(str(body["id"]))
            for record in await _new(reader, f"{output}.dlq", positions[f"{output}.dlq"]):
                body = json_object(record.value)
                if body.get("pipeline") == cfg.name and (body.get("source") or {}).get("topic") == topic:
                    fates.dead.setdefault(str(body.get("id")), str(body.get("reason")))
            on_progress(len(expected & (fates.results | fates.dead.keys())), len(expected))
            if finished:
                return expected, fates
            # Offsets are committed once a window is recorded, before its results: done when
            # every event has its fate and the group has committed the whole input.
            finished = expected <= (fates.results | fates.dead.keys()) and _committed_all(
                await reader.committed(group), topic, ends)  # fmt: skip
            if finished:
                continue
            if worker.poll() is not None:
                raise ConfigError(f"the backfill's worker exited with code {worker.returncode}")
            if deadline is not None and time.monotonic() > deadline:
                raise ConfigError(f"--timeout: not every event had its fate after {timeout:g}s")
            await asyncio.sleep(1.0)


async def _new(reader: TopicReader, topic: str, positions: dict[int, int]) -> list[Record]:
    try:
        return await reader.read_new(topic, positions)
    except TopicMissingError:
        return []  # not created yet by the worker


def _committed_all(committed: dict[tuple[str, int], int], topic: str, ends: dict[int, int]) -> bool:
    return all(end == 0 or committed.get((topic, p), -1) >= end for p, end in ends.items())


def start_worker(document: dict[str, Any], workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / "backfill.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    log = (workdir / "worker.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "agents.cli", "worker", "-c", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="batchstream-backfill-"))
