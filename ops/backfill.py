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

Memory does not grow with the input: a file is read a chunk at a time, twice (its SHA-256 and
line count, then the lines the backfill topic lacks), and a topic's range is scanned a batch at
a time, twice (the records it chooses, which name it, then those to copy). Following, a record
of the backfill topic is known by its position: a bit per offset records whether it has its
fate (a result or dead letter whose ``source`` is that record); the first fate counts,
re-emitted ones (at-least-once) add nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import yaml

from sinks.publisher import Publisher
from sinks.topics import TopicAdmin, TopicSpec
from streams.config import PipelineSettings, Settings
from streams.errors import ConfigError
from streams.topics import Record, TopicMissingError, TopicReader, json_object

#: Offsets of a topic to back-fill: partition -> (first, end) with ``end`` exclusive.
Ranges = dict[int, tuple[int, int]]
#: Bytes read from a ``--file`` at a time.
CHUNK = 1 << 20


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


def _chunks(path: Path, digest: Any = None) -> Iterator[bytes]:
    """The file's bytes, :data:`CHUNK` at a time (fed to ``digest`` on the way when given)."""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            if digest is not None:
                digest.update(chunk)
            yield chunk


def _eol(line: bytes) -> bytes:
    """``line`` without its line break."""
    return line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith((b"\r", b"\n")) else line


def file_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines of the bytes ``chunks`` make up, split as ``bytes.splitlines`` splits
    them (at ``\\n``, ``\\r\\n`` and ``\\r``), holding one line at a time."""
    tail = b""
    for chunk in chunks:
        lines = (tail + chunk).splitlines(keepends=True)
        # the last line may go on in the next chunk (one ending in "\r" too: a "\r\n" cut in two)
        tail = b"" if lines[-1].endswith(b"\n") else lines.pop()
        yield from (line for line in map(_eol, lines) if line.strip())
    yield from (line for line in tail.splitlines() if line.strip())


@dataclass(frozen=True)
class FileSource:
    """The non-blank lines of a JSONL file, to partition 0; named after the file's SHA-256."""

    path: Path
    name: str
    #: partition of the backfill topic -> records the input gives it.
    counts: dict[int, int]

    async def rest(self, reader: TopicReader, have: dict[int, int]) -> AsyncIterator[tuple[int, Record | bytes]]:
        """(0, line) for each line from the ``have[0]``-th on, the file read again."""
        for index, line in enumerate(file_lines(_chunks(self.path))):
            if index >= have.get(0, 0):
                yield 0, line


@dataclass(frozen=True)
class TopicSource:
    """Records of a topic, each to its own partition; named after the topic, the first and last
    offsets chosen in each partition and the partitions' ends."""

    topic: str
    name: str
    counts: dict[int, int]
    #: partition -> (first, last + 1) offsets of the records chosen there (partitions with some).
    spans: dict[int, tuple[int, int]]
    until_ms: int | None

    def chosen(self, record: Record) -> bool:
        return self.until_ms is None or record.timestamp_ms <= self.until_ms

    async def rest(self, reader: TopicReader, have: dict[int, int]) -> AsyncIterator[tuple[int, Record | bytes]]:
        """(partition, record) for each chosen record from the ``have[partition]``-th of its partition on."""
        seen = dict.fromkeys(self.spans, 0)
        lacking = {p: span for p, span in self.spans.items() if have.get(p, 0) < self.counts[p]}
        async for batch in reader.scan_between(self.topic, lacking):
            for record in filter(self.chosen, batch):
                seen[record.partition] += 1
                if seen[record.partition] > have.get(record.partition, 0):
                    yield record.partition, record


Source = FileSource | TopicSource


def file_source(path: Path) -> FileSource:
    """A first pass over the file: its name (the SHA-256 of its bytes) and its count of lines."""
    digest = hashlib.sha256()
    count = sum(1 for _ in file_lines(_chunks(path, digest)))
    return FileSource(path, digest.hexdigest()[:12], {0: count})


async def topic_source(
    reader: TopicReader, topic: str, *, since_ms: int | None, until_ms: int | None, offsets: Ranges | None
) -> TopicSource:
    """A first pass over the range, streamed: the records it chooses by partition, and its name."""
    partitions = [tp.partition for tp in await reader.partitions(topic)]
    ends = await reader.end_offsets(topic)
    if offsets is None:
        starts = await reader.offsets_for_time(topic, since_ms) if since_ms is not None else dict.fromkeys(ends, 0)
        bounds = {p: (starts[p], end) for p, end in ends.items()}
    else:
        unknown = sorted(set(offsets) - set(partitions))
        if unknown:
            raise ConfigError(f"--offsets: topic {topic!r} has no partition {unknown[0]}")
        bounds = {p: (first, min(stop, ends[p])) for p, (first, stop) in offsets.items()}
    source = TopicSource(topic, "", dict.fromkeys(partitions, 0), {}, until_ms)
    async for batch in reader.scan_between(topic, bounds):
        for record in filter(source.chosen, batch):
            source.counts[record.partition] += 1
            first = source.spans.get(record.partition, (record.offset, 0))[0]
            source.spans[record.partition] = (first, record.offset + 1)
    return replace(source, name=topic_name(topic, partitions, source.spans, ends))


def topic_name(topic: str, partitions: list[int], spans: dict[int, tuple[int, int]], ends: dict[int, int]) -> str:
    """The hash of the topic, each partition's first and last chosen offsets (null: none) and the ends."""
    named = {p: (spans[p][0], spans[p][1] - 1) if p in spans else None for p in partitions}
    material = orjson.dumps({"topic": topic, "spans": named, "ends": ends}, option=orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(material).hexdigest()[:12]


async def copy_input(settings: Settings, options: dict[str, Any], topic: str, source: Source) -> int:
    """Create the backfill topic if needed and append what it lacks, streamed; the input's record count."""
    bootstrap = settings.kafka.bootstrap_servers
    async with TopicAdmin(bootstrap, options) as admin:
        await admin.ensure([TopicSpec(topic, max(1, len(source.counts)), settings.kafka.replication_factor)])
    async with TopicReader(bootstrap, options) as reader:
        have = await reader.end_offsets(topic)
        if any(have.get(p, 0) < count for p, count in source.counts.items()):
            await _append(bootstrap, options, topic, source.rest(reader, have))
    return sum(source.counts.values())


async def _append(
    bootstrap: str, options: dict[str, Any], topic: str, items: AsyncIterator[tuple[int, Record | bytes]]
) -> None:
    async with Publisher(bootstrap, options) as producer:
        sent = []
        async for partition, item in items:
            if isinstance(item, Record):
                sent.append(await producer.send(topic, item.value, key=item.key, headers=item.headers,
                                                partition=partition))  # fmt: skip
            else:
                sent.append(await producer.send(topic, item, partition=partition))
            if len(sent) >= APPEND_AWAIT:
                await _acked(sent)
        await _acked(sent)


#: Sends in flight at most while a backfill copies its input (their acks are read, then let go).
APPEND_AWAIT = 10_000


async def _acked(sent: list[asyncio.Future[Any]]) -> None:
    """Wait for these sends' acks; the first refusal is raised (a copy cut short starts over where it stopped)."""
    outcomes = await asyncio.gather(*sent, return_exceptions=True)
    sent.clear()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


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


class Bitmap:
    """One bit per offset of ``[first, end)`` of a partition: which were marked."""

    def __init__(self, first: int, end: int) -> None:
        self.first, self.end = first, max(first, end)
        self.bits = bytearray((self.end - self.first + 7) // 8)

    def __len__(self) -> int:
        return self.end - self.first

    def add(self, offset: int) -> bool:
        """Mark ``offset``; False when it was marked already or lies outside ``[first, end)``."""
        if not self.first <= offset < self.end:
            return False
        index, bit = divmod(offset - self.first, 8)
        if self.bits[index] >> bit & 1:
            return False
        self.bits[index] |= 1 << bit
        return True


@dataclass
class Fates:
    """The fates of a backfill topic's records, by position: per partition, a bitmap of the
    offsets that have one (the first result or dead letter counts; later ones add nothing)."""

    bitmaps: dict[int, Bitmap]
    results: int = 0
    #: reason -> records whose fate is a dead letter for it.
    reasons: Counter[str] = field(default_factory=Counter)
    paid: float = 0.0
    realtime: float = 0.0

    @classmethod
    def of(cls, spans: dict[int, tuple[int, int]]) -> Fates:
        """For partition -> (first, end) offsets of the backfill topic."""
        return cls({p: Bitmap(first, end) for p, (first, end) in spans.items()})

    @property
    def total(self) -> int:
        return sum(len(bitmap) for bitmap in self.bitmaps.values())

    @property
    def covered(self) -> int:
        return self.results + self.reasons.total()

    @property
    def missing(self) -> int:
        return self.total - self.covered

    def _cover(self, position: tuple[int, int]) -> bool:
        bitmap = self.bitmaps.get(position[0])
        return bitmap is not None and bitmap.add(position[1])

    def result(self, position: tuple[int, int], cost: dict[str, Any]) -> None:
        """A result for the record at (partition, offset); its cost counts when it is the record's first fate."""
        if self._cover(position):
            self.results += 1
            self.paid += float(cost.get("paid") or 0.0)
            self.realtime += float(cost.get("realtime") or 0.0)

    def dead_letter(self, position: tuple[int, int], reason: str) -> None:
        if self._cover(position):
            self.reasons[reason] += 1


def source_position(body: dict[str, Any], topic: str) -> tuple[int, int] | None:
    """(partition, offset) of the record of ``topic`` a result or dead letter is for; None: of no record of it."""
    source = body.get("source")
    if not isinstance(source, dict) or source.get("topic") != topic:
        return None
    partition, offset = source.get("partition"), source.get("offset")
    if type(partition) is not int or type(offset) is not int:
        return None
    return partition, offset


async def follow(
    settings: Settings, options: dict[str, Any], cfg: PipelineSettings, *, topic: str, output: str, version: str,
    worker: subprocess.Popen[bytes], on_progress: Any, timeout: float | None,
) -> Fates:  # fmt: skip
    """Follow the output topics until the group has committed the whole backfill topic."""
    bootstrap, group = settings.kafka.bootstrap_servers, group_of(cfg, version)
    positions: dict[str, dict[int, int]] = {output: {}, f"{output}.dlq": {}}
    deadline = None if timeout is None else time.monotonic() + timeout
    async with TopicReader(bootstrap, options) as reader:
        ends, firsts = await reader.end_offsets(topic), await reader.beginning_offsets(topic)
        fates = Fates.of({p: (firsts.get(p, 0), end) for p, end in ends.items()})
        finished = False
        while True:
            async for record in _new(reader, output, positions[output]):
                _on_result(fates, json_object(record.value), cfg, topic, version)
            async for record in _new(reader, f"{output}.dlq", positions[f"{output}.dlq"]):
                _on_dead_letter(fates, json_object(record.value), cfg, topic)
            on_progress(fates.covered, fates.total)
            if finished:
                return fates
            # Offsets are committed once a window is recorded, before its results: done when
            # every event has its fate and the group has committed the whole input.
            finished = fates.missing == 0 and _committed_all(await reader.committed(group), topic, ends)
            if finished:
                continue
            if worker.poll() is not None:
                raise ConfigError(f"the backfill's worker exited with code {worker.returncode}")
            if deadline is not None and time.monotonic() > deadline:
                raise ConfigError(f"--timeout: not every event had its fate after {timeout:g}s")
            await asyncio.sleep(1.0)


def _on_result(fates: Fates, body: dict[str, Any], cfg: PipelineSettings, topic: str, version: str) -> None:
    position = source_position(body, topic)
    if position is not None and body.get("pipeline") == cfg.name and body.get("task_version") == version:
        cost = body.get("cost")
        fates.result(position, cost if isinstance(cost, dict) else {})


def _on_dead_letter(fates: Fates, body: dict[str, Any], cfg: PipelineSettings, topic: str) -> None:
    position = source_position(body, topic)
    if position is not None and body.get("pipeline") == cfg.name:
        fates.dead_letter(position, str(body.get("reason")))


async def _new(reader: TopicReader, topic: str, positions: dict[int, int]) -> AsyncIterator[Record]:
    """The records of ``topic`` after ``positions``, streamed (none before the worker creates the topic)."""
    try:
        async for batch in reader.scan(topic, positions):
            for record in batch:
                yield record
    except TopicMissingError:
        return


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
