"""``batchstream dlq``: what is in a pipeline's dead-letter topic, and replaying it after a fix.

**inspect** reads the dead-letter topic to its end and counts its letters by reason, with the
first and last time one was written and a sample message.

**replay** re-publishes the original events of chosen dead letters (by reason, time written,
event id) to the input topic, or ``--to`` another: the exact original bytes, key and headers,
read back from the input topic at the dead letter's source offset (while retention keeps it;
else the bytes the dead letter carries). Each replayed record gets two headers:

- ``batchstream-replays``: how many times the event has been replayed (the original's count
  plus one). Events already replayed ``--max-replays`` times are skipped and reported;
- ``batchstream-replay-of``: the coordinate (``topic/partition/offset``) of the record whose
  dead letter was replayed. Before publishing, the target topic is read from the oldest chosen
  dead letter's time on: a dead letter whose record was already replayed is skipped, so a second
  run publishes nothing twice. An event dead-lettered twice (at-least-once) is replayed once.

``--dry-run`` prints what a replay would do, by reason, and publishes nothing.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sinks.limits import SIZE_ERRORS
from sinks.publisher import Publisher
from streams.config import PipelineSettings
from streams.topics import Record, TopicMissingError, TopicReader

REPLAYS = "batchstream-replays"
REPLAY_OF = "batchstream-replay-of"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead-letter record, decoded."""

    record: Record
    id: str
    reason: str
    message: str
    source: tuple[str, int, int]
    body: dict[str, Any]


async def _scan_letters(reader: TopicReader, topic: str, *, since_ms: int | None = None) -> AsyncIterator[Letter]:
    """The dead letters of ``topic``, streamed (none when the topic does not exist yet)."""
    try:
        async for batch in reader.scan(topic, since_ms=since_ms):
            for letter in _letters(batch):
                yield letter
    except TopicMissingError:
        return  # no worker has run the pipeline yet


def _letters(records: list[Record]) -> list[Letter]:
    out = []
    for record in records:
        try:
            body = orjson.loads(record.value or b"")
            source = body["source"]
            coordinate = (str(source["topic"]), int(source["partition"]), int(source["offset"]))
            out.append(Letter(record, str(body["id"]), str(body["reason"]), str(body.get("message") or ""),
                              coordinate, body))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # not a batchstream dead letter
    return out


@dataclass
class ReasonRow:
    count: int = 0
    first_ms: int = 0
    last_ms: int = 0
    sample: str = ""


async def inspect(bootstrap: str, options: dict[str, Any], cfg: PipelineSettings) -> dict[str, ReasonRow]:
    """Dead letters by reason (most frequent first)."""
    rows: dict[str, ReasonRow] = {}
    async with TopicReader(bootstrap, options) as reader:
        async for letter in _scan_letters(reader, cfg.dead_letter_topic):
            row = rows.setdefault(letter.reason, ReasonRow(first_ms=letter.record.timestamp_ms, sample=letter.message))
            row.count += 1
            row.first_ms = min(row.first_ms, letter.record.timestamp_ms)
            row.last_ms = max(row.last_ms, letter.record.timestamp_ms)
    return dict(sorted(rows.items(), key=lambda item: (-item[1].count, item[0])))


def inspect_table(cfg: PipelineSettings, rows: dict[str, ReasonRow]) -> Any:
    from rich.table import Table

    table = Table(title=f"dead letters of {cfg.name} ({cfg.dead_letter_topic})")
    for column in ("reason", "count", "first seen (UTC)", "last seen (UTC)", "sample message"):
        table.add_column(column, overflow="fold")
    for reason, row in rows.items():
        sample = row.sample if len(row.sample) <= 80 else f"{row.sample[:77]}..."
        table.add_row(reason, str(row.count), _when(row.first_ms), _when(row.last_ms), sample)
    if not rows:
        table.add_row("(none)", "0", "", "", "")
    return table


@dataclass
class ReplayPlan:
    """What a replay publishes (or would), and what it skips, by reason."""

    target: str
    publish: list[tuple[Letter, Record]] = field(default_factory=list)
    skipped_max: Counter[str] = field(default_factory=Counter)
    skipped_done: Counter[str] = field(default_factory=Counter)
    #: Dead letters carrying no event (``input_gone``, or a reference to an original too large to
    #: travel with them) whose event is not in the input topic any more: nothing to replay.
    skipped_gone: int = 0
    chosen: Counter[str] = field(default_factory=Counter)

    def rows(self) -> list[tuple[str, int, int, int, int]]:
        """(reason, chosen, to replay, already replayed, replayed max times) per reason."""
        planned = Counter(letter.reason for letter, _ in self.publish)
        return [(r, self.chosen[r], planned[r], self.skipped_done[r], self.skipped_max[r]) for r in sorted(self.chosen)]


def _original(letter: Letter) -> Record:
    """The event as the dead letter carries it, when the input topic no longer has it."""
    topic, partition, offset = letter.source
    if letter.body.get("original_base64"):
        value = base64.b64decode(letter.body["original_base64"])
    else:
        value = orjson.dumps(letter.body.get("event"))
    return Record(topic, partition, offset, letter.record.timestamp_ms, letter.record.key, value, ())


def _replays(record: Record) -> int:
    raw = record.header(REPLAYS)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


async def plan_replay(
    bootstrap: str, options: dict[str, Any], cfg: PipelineSettings, *, reasons: list[str], since_ms: int | None,
    until_ms: int | None, ids: list[str], target: str | None, max_replays: int,
) -> ReplayPlan:  # fmt: skip
    plan = ReplayPlan(target or cfg.input_topic)
    async with TopicReader(bootstrap, options) as reader:
        # streamed: memory grows with the dead letters chosen, not with the topic
        unique: dict[tuple[str, int, int], Letter] = {}
        async for letter in _scan_letters(reader, cfg.dead_letter_topic, since_ms=since_ms):
            chosen = (not reasons or letter.reason in reasons) and (not ids or letter.id in ids) and (
                until_ms is None or letter.record.timestamp_ms <= until_ms)  # fmt: skip
            if chosen:
                unique.setdefault(letter.source, letter)  # an event dead-lettered twice is replayed once
        if not unique:
            return plan
        originals = await reader.at(unique)
        oldest = min(letter.record.timestamp_ms for letter in unique.values())
        done: set[str] = set()
        async for batch in reader.scan(plan.target, since_ms=oldest):
            done.update(mark.decode() for mark in (r.header(REPLAY_OF) for r in batch) if mark is not None)
    for coordinate, letter in unique.items():
        plan.chosen[letter.reason] += 1
        carried = letter.body.get("original_base64") or letter.body.get("event") is not None
        if coordinate not in originals and (letter.reason == "input_gone" or not carried):
            # the dead letter carries no event (input_gone, or only a reference to an original too
            # large to travel with it), and the topic no longer has it
            plan.skipped_gone += 1
            continue
        original = originals.get(coordinate) or _original(letter)
        if "/".join(map(str, coordinate)) in done:
            plan.skipped_done[letter.reason] += 1
        elif _replays(original) >= max_replays:
            plan.skipped_max[letter.reason] += 1
        else:
            plan.publish.append((letter, original))
    return plan


async def replay(bootstrap: str, options: dict[str, Any], plan: ReplayPlan) -> tuple[int, list[str]]:
    """Publish the plan's events (acks=all, idempotent): how many the broker acknowledged, and
    why the others were refused (each send's result is read; a refusal is never counted)."""
    async with Publisher(bootstrap, options) as producer:

        async def send(letter: Letter, original: Record) -> asyncio.Future[Any]:
            headers = [(k, v) for k, v in original.headers if k not in (REPLAYS, REPLAY_OF)]
            headers += [(REPLAYS, str(_replays(original) + 1).encode()),
                        (REPLAY_OF, "/".join(map(str, letter.source)).encode())]  # fmt: skip
            return await producer.send(plan.target, original.value, key=original.key, headers=headers)

        sends = [await send(letter, original) for letter, original in plan.publish]
        outcomes = list(await asyncio.gather(*sends, return_exceptions=True))
        # A batch refused for its size takes the records that would fit with it: each alone again.
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, SIZE_ERRORS):
                alone = await send(*plan.publish[index])
                outcomes[index] = (await asyncio.gather(alone, return_exceptions=True))[0]
    refused = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    return len(outcomes) - len(refused), refused


def replay_table(plan: ReplayPlan, *, dry_run: bool) -> Any:
    from rich.table import Table

    title = f"{'dry run: ' if dry_run else ''}replay to {plan.target}"
    table = Table(title=title)
    for column in ("reason", "dead letters", "to replay" if dry_run else "replayed", "already replayed",
                   "replayed max times"):  # fmt: skip
        table.add_column(column)
    for reason, chosen, planned, done, maxed in plan.rows():
        table.add_row(reason, str(chosen), str(planned), str(done), str(maxed))
    if not plan.chosen:
        table.add_row("(none chosen)", "0", "0", "0", "0")
    return table
