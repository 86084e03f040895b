"""The batch path end to end: real Kafka, the emulator over HTTP, the worker as a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import TopicReader, WorkerProcess, committed_total, pipeline, produce, wait_until, write_config

pytestmark = pytest.mark.kafka


async def test_thousand_events_over_three_partitions(bootstrap, emulator, make_topic, workers, tmp_path: Path, unique):
    topic = await make_topic("tickets", partitions=3)
    group = f"g-{unique}"
    config = write_config(
        tmp_path / "c.yaml",
        bootstrap=bootstrap,
        base_url=emulator.base_url,
        group=group,
        pipelines=[pipeline("tickets", topic)],
    )
    events = [{"id": f"t{i}", "subject": f"s{i}", "text": f"ticket {i}"} for i in range(1000)]
    await produce(bootstrap, topic, events, keys=[f"k{i}".encode() for i in range(1000)])
    worker = WorkerProcess(config, tmp_path / "worker.log")
    workers.append(worker)
    async with TopicReader(bootstrap, f"{topic}.results") as results:
        values = await results.until(1000, timeout=120)
        ids = {v["id"] for v in values}
        assert ids == {e["id"] for e in events}
        keys = {k for k, _ in results.records}
        assert keys == {f"k{i}".encode() for i in range(1000)}

    async def all_committed() -> bool:
        return await committed_total(bootstrap, group, topic) == 1000

    await wait_until(all_committed, timeout=30, what="committed offsets to reach 1000")
    assert worker.terminate() == 0, worker.log()
