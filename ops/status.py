"""``batchstream status``: each pipeline at a glance, from Kafka and the provider alone.

Per pipeline: consumer lag per input partition (the group's committed offsets against the
ends); open windows and, for each in-flight batch, the provider's progress (request counts),
its age, an ETA from its progress rate, and whether it is late (past ``max_batch_latency``)
or hedged; results, dead letters by reason, and cost so far with the saving against
real-time prices (summed from the results' ``cost``). It reads the state, output and
dead-letter topics and asks the provider for each in-flight batch's status; it needs no
running worker and changes nothing. A view refreshed with ``--watch`` reads only what the
topics gained since its last refresh.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from providers import make_provider
from providers.base import Provider
from streams.config import PipelineSettings, Settings
from streams.errors import ProviderError
from streams.records import Status, WindowRecord
from streams.topics import Record, TopicMissingError, TopicReader, json_object


@dataclass
class Tally:
    """What a pipeline's topics said so far (read incrementally)."""

    results: int = 0
    paid: float = 0.0
    realtime: float = 0.0
    dead: Counter[str] = field(default_factory=Counter)
    #: window id -> its latest state record (tombstones remove).
    windows: dict[str, WindowRecord] = field(default_factory=dict)
    positions: dict[str, dict[int, int]] = field(default_factory=dict)


class StatusReader:
    """Reads every pipeline's status; ``async with``; ``snapshot()`` as often as wanted."""

    def __init__(self, settings: Settings, pipelines: list[PipelineSettings], options: dict[str, Any]) -> None:
        self.settings, self.pipelines, self.options = settings, pipelines, options
        self.bootstrap = settings.kafka.bootstrap_servers
        self.reader = TopicReader(self.bootstrap, options)
        self.tallies = {p.name: Tally() for p in pipelines}
        self.providers: dict[str, Provider] = {}

    async def __aenter__(self) -> StatusReader:
        await self.reader.__aenter__()
        for cfg in self.pipelines:
            name, provider = self.settings.provider_of(cfg)
            if name not in self.providers:
                self.providers[name] = make_provider(name, provider)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for provider in self.providers.values():
            await provider.close()
        await self.reader.__aexit__(*exc)

    async def snapshot(self) -> dict[str, Any]:
        """One JSON-able document: ``{"generated_at", "pipelines": {name: {...}}}``."""
        committed = await self.reader.committed(self.settings.kafka.group_id)
        out = {}
        for cfg in self.pipelines:
            out[cfg.name] = await self._pipeline(cfg, committed)
        return {"generated_at": time.time(), "pipelines": out}

    async def _read(self, tally: Tally, topic: str) -> AsyncIterator[Record]:
        """The records of ``topic`` this view has not counted yet, streamed (memory independent of the topic)."""
        positions = tally.positions.setdefault(topic, {})
        try:
            async for batch in self.reader.scan(topic, positions):
                for record in batch:
                    yield record
        except TopicMissingError:
            return  # a pipeline that never ran: its worker creates the topic

    async def _pipeline(self, cfg: PipelineSettings, committed: dict[tuple[str, int], int]) -> dict[str, Any]:
        tally = self.tallies[cfg.name]
        try:
            ends = await self.reader.end_offsets(cfg.input_topic)
        except TopicMissingError:
            ends = {}
        lag = {
            str(p): {"committed": committed.get((cfg.input_topic, p), 0), "end": end,
                     "lag": max(0, end - committed.get((cfg.input_topic, p), 0))}
            for p, end in sorted(ends.items())
        }  # fmt: skip
        async for record in self._read(tally, cfg.output_topic):
            result = json_object(record.value)
            if result.get("pipeline") == cfg.name:
                tally.results += 1
                cost = result.get("cost") or {}
                tally.paid += float(cost.get("paid") or 0.0)
                tally.realtime += float(cost.get("realtime") or 0.0)
        async for record in self._read(tally, cfg.dead_letter_topic):
            letter = json_object(record.value)
            if letter.get("pipeline") == cfg.name:
                tally.dead[str(letter.get("reason"))] += 1
        async for record in self._read(tally, cfg.state_topic_name):
            window_id = (record.key or b"").decode()
            if record.value is None:
                tally.windows.pop(window_id, None)
                continue
            data = json_object(record.value)
            if "served" in data or "window_id" not in data:
                continue  # an event's served mark (exactly_once), not a window
            try:
                state = WindowRecord.model_validate(data)
            except ValidationError:
                continue  # a record of another version or another tool: not this pipeline's window
            mine = state.pipeline == cfg.name and state.input_topic in (None, cfg.input_topic) and state.group_id in (
                None, self.settings.kafka.group_id)  # fmt: skip
            if mine:
                tally.windows[window_id] = state
        open_windows = [w for w in tally.windows.values() if w.status != Status.DONE]
        provider = self.providers[self.settings.provider_of(cfg)[0]]
        batches = [await self._batch(cfg, provider, w) for w in open_windows if w.batch_id]
        return {
            "input_topic": cfg.input_topic, "mode": cfg.mode,
            "lag": {"total": sum(v["lag"] for v in lag.values()), "partitions": lag},
            "open_windows": len(open_windows), "in_flight": batches,
            "results": tally.results,
            "dead_letters": {"total": sum(tally.dead.values()), "by_reason": dict(sorted(tally.dead.items()))},
            "cost": {"paid_usd": round(tally.paid, 6), "realtime_usd": round(tally.realtime, 6),
                     "saved_usd": round(tally.realtime - tally.paid, 6)},
        }  # fmt: skip

    async def _batch(self, cfg: PipelineSettings, provider: Provider, window: WindowRecord) -> dict[str, Any]:
        assert window.batch_id is not None
        now = time.time()
        started = window.first_submitted_at or window.submitted_at or window.sealed_at
        age = max(0.0, now - started)
        view: dict[str, Any] = {
            "window_id": window.window_id, "partition": window.partition, "round": window.round,
            "batch_id": window.batch_id, "window_status": window.status, "age_seconds": round(age, 1),
            "late": cfg.max_batch_latency is not None and age > cfg.max_batch_latency,
            "hedged": window.status == Status.HEDGED,
        }  # fmt: skip
        try:
            job = await provider.retrieve(window.batch_id)
        except ProviderError as exc:
            return {**view, "state": "unreadable", "error": str(exc)}
        done = job.succeeded + job.failed
        since = max(1e-3, now - (window.submitted_at or started))
        rate = done / since
        eta = (job.total - done) / rate if rate > 0 and job.total > done and not job.terminal else None
        return {**view, "state": job.status, "requests": job.total or (len(window.offsets or []) or window.count),
                "completed": job.succeeded, "failed": job.failed,
                "eta_seconds": round(eta, 1) if eta is not None else None}  # fmt: skip


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render(document: dict[str, Any]) -> Any:
    """The rich view of a snapshot."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    parts: list[Any] = []
    for name, view in document["pipelines"].items():
        summary = Table(title=f"{name} ({view['mode']}, input {view['input_topic']})", show_header=False)
        lag = view["lag"]
        by_partition = "  ".join(f"p{p}: {v['lag']}" for p, v in lag["partitions"].items())
        summary.add_row("consumer lag", f"{lag['total']}  ({by_partition})")
        summary.add_row("open windows", str(view["open_windows"]))
        summary.add_row("results", str(view["results"]))
        dead = view["dead_letters"]
        reasons = ", ".join(f"{r}: {n}" for r, n in dead["by_reason"].items())
        summary.add_row("dead letters", f"{dead['total']}" + (f"  ({reasons})" if reasons else ""))
        cost = view["cost"]
        summary.add_row("cost so far", f"${cost['paid_usd']:.4f} paid vs ${cost['realtime_usd']:.4f} at real-time "
                                       f"prices (saved ${cost['saved_usd']:.4f})")  # fmt: skip
        parts.append(summary)
        if view["in_flight"]:
            batches = Table(title=f"{name}: batches in flight")
            for column in ("window", "round", "batch", "state", "progress", "done", "age", "eta", "flags"):
                batches.add_column(column, overflow="fold")
            for b in view["in_flight"]:
                total = b.get("requests") or 0
                done = (b.get("completed") or 0) + (b.get("failed") or 0)
                flags = " ".join(f for f in ("late" if b["late"] else "", "hedged" if b["hedged"] else "") if f)
                batches.add_row(b["window_id"], str(b["round"]), b["batch_id"], b["state"],
                                ProgressBar(total=max(total, 1), completed=done, width=20), f"{done}/{total}",
                                _duration(b["age_seconds"]), _duration(b.get("eta_seconds")), flags)  # fmt: skip
            parts.append(batches)
    return Group(*parts)
