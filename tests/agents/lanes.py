"""A batch lane without Kafka, for unit tests of a window's life.

Provider calls go through the provider's official SDK to the in-process emulator; the state topic is a
ledger over memory and the output topics are memory sinks, so a test reads exactly which
records the window wrote, in which order, and what it emitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from agents.flex import FlexRunner
from agents.inflight import InFlightWindow
from agents.metrics import PipelineMetrics
from agents.outbox import Outbox
from agents.polling import BatchWatch
from agents.quota import Quotas
from agents.rounds import InputReader
from agents.services import WindowServices
from agents.state import Ledger, PartitionState
from agents.tasks import PartitionTasks
from providers import make_provider
from sinks import MemorySink
from streams.config import PipelineSettings, Settings
from streams.letters import DeadLetter
from streams.models import Request, Result, Source, decode_event
from streams.records import WindowRecord


class MemoryBackend:
    """The state topic as a list of confirmed writes."""

    group_id = "g"
    transactional = False

    def __init__(self) -> None:
        self.writes: list[WindowRecord] = []

    async def put(self, record: WindowRecord, records: list[Any] = []) -> None:  # noqa: B006 - never mutated
        self.writes.append(record)

    async def mark(self, partition: int, offsets: list[int], records: list[Any], *, linger: bool = False) -> None:
        raise NotImplementedError

    async def release(self, partitions: Iterable[int]) -> None:
        pass

    async def tombstone(self, partition: int, keys: list[bytes]) -> None:
        pass

    async def load(self, partitions: Iterable[int]) -> dict[int, PartitionState]:
        return {p: PartitionState(p) for p in partitions}


class ListReader:
    """The input topic's records of partition 0 for a restored window: our reader's interface over a list."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values

    async def read(self, partition: int, first: int, last: int) -> list[tuple[int, int | None, None, bytes]]:
        return [(o, 1_700_000_000_000, None, self.values[o]) for o in range(first, min(last + 1, len(self.values)))]


class Lane:
    def __init__(self, settings: Settings, tmp_path: Any) -> None:
        self.cfg: PipelineSettings = settings.pipelines[0]
        self.backend = MemoryBackend()
        self.results, self.dead = MemorySink(Result), MemorySink(DeadLetter)
        metrics = PipelineMetrics(f"unit-{id(self)}")
        client = make_provider(*settings.provider_of(self.cfg))
        self.client = client
        self.services = WindowServices(
            cfg=self.cfg, provider=client.settings, client=client, ledger=Ledger(self.backend),
            outbox=Outbox(self.cfg, self.results, self.dead, metrics, provider=client.name),
            flex=FlexRunner(self.cfg, client, metrics),
            tasks=PartitionTasks(), reader=InputReader("127.0.0.1:9", self.cfg.input_topic), workdir=tmp_path,
            metrics=metrics, watch=BatchWatch(client, client.settings, self.cfg.retry, metrics),
            quotas=Quotas(client.settings.max_enqueued_tokens),
        )  # fmt: skip

    def requests(self, n: int, partition: int = 0, poison: Iterable[int] = ()) -> list[Request]:
        """``n`` requests; those at the ``poison`` offsets carry the text ``POISON``."""
        out, bad = [], set(poison)
        for offset in range(n):
            source = Source(self.cfg.input_topic, partition, offset, 1_700_000_000_000)
            text = "POISON" if offset in bad else f"event {offset}"
            decoded = decode_event(self.cfg, source, None, f'{{"id": "e{offset}", "text": "{text}"}}'.encode())
            assert isinstance(decoded, Request)
            out.append(decoded)
        return out

    def sealed(self, n: int) -> WindowRecord:
        """The first record of a window of offsets 0..n-1 of partition 0."""
        return WindowRecord(
            window_id="unit.p0.0-x", pipeline=self.cfg.name, input_topic=self.cfg.input_topic, group_id="g",
            partition=0, endpoint=self.cfg.endpoint, model=self.cfg.model, first_offset=0, last_offset=n - 1,
            count=n, status="sealed", sealed_at=1.0,
        )  # fmt: skip

    async def run(self, n: int, poison: Iterable[int] = ()) -> tuple[WindowRecord, list[Request]]:
        requests = self.requests(n, poison=poison)
        await self.services.ledger.load([0])
        record = await self.services.ledger.save(self.sealed(n))
        window = InFlightWindow(record, list(requests), self.services)
        await window.run()
        await self.client.close()
        return window.record, requests

    async def resume(self, record: WindowRecord, values: list[bytes]) -> WindowRecord:
        """Run a window restored from its record, its events read back from ``values`` (offset = index)."""
        await self.services.ledger.load([0])
        await self.services.ledger.save(record)
        services = dataclasses.replace(self.services, reader=ListReader(values))
        window = InFlightWindow(record, None, services)
        await window.run()
        await self.client.close()
        return window.record

    @property
    def statuses(self) -> list[tuple[str, int, int | None]]:
        """(status, round, how many offsets pending) of each state write, in order."""
        return [(r.status, r.round, None if r.offsets is None else len(r.offsets)) for r in self.backend.writes]

    def fates(self) -> tuple[list[Result], list[DeadLetter]]:
        results = [v for v in self.results.values if isinstance(v, Result)]
        dead = [v for v in self.dead.values if isinstance(v, DeadLetter)]
        return results, dead
