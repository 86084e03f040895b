"""Windows close on each of their three bounds, as seen in the batches the provider received."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support import TopicReader, pipeline, produce

pytestmark = pytest.mark.kafka


async def provider_batches(base_url: str) -> list[tuple[int, int, int]]:
    """(created_at, request count, input file bytes) of every batch, as the SDK lists them."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test")
    try:
        rows = []
        async for batch in client.batches.list(limit=100):
            file = await client.files.retrieve(batch.input_file_id)
            assert batch.request_counts is not None
            rows.append((batch.created_at, batch.request_counts.total, file.bytes))
        return sorted(rows)
    finally:
        await client.close()


#: The tests read the input files the provider received: keep them.
KEEP_FILES = {"provider": {"delete_files": False}}


def padded(n: int) -> list[dict[str, Any]]:
    return [{"id": f"w{i:04d}", "text": "x" * 200} for i in range(n)]


async def test_window_closes_at_max_requests(bootstrap, emulator, run_pipeline):
    await run_pipeline(
        padded(250), partitions=1, settings=KEEP_FILES,
        window={"max_requests": 100, "max_bytes": "10MB", "max_wait": "3s"},
    )  # fmt: skip
    sizes = sorted(count for _, count, _ in await provider_batches(emulator.base_url))
    assert sizes == [50, 100, 100]


async def test_window_closes_at_max_bytes(bootstrap, emulator, run_pipeline):
    fates = await run_pipeline(
        padded(60), partitions=1, settings=KEEP_FILES,
        window={"max_requests": 1000, "max_bytes": "4KB", "max_wait": "3s"},
    )  # fmt: skip
    assert len(fates.results) == 60
    batches = await provider_batches(emulator.base_url)
    assert sum(count for _, count, _ in batches) == 60
    line = max(size / count for _, count, size in batches)
    assert all(size <= 4000 for _, _, size in batches), batches
    full = [size for _, _, size in batches if size > 4000 - line - 8]
    assert len(full) >= len(batches) - 1, f"every window but the last is closed by bytes: {batches}"
    assert len(batches) >= 60 * line // 4000


async def test_window_closes_at_max_wait(bootstrap, emulator, make_topic, configure, start_worker):
    topic = await make_topic("wait", partitions=1)
    window = {"max_requests": 100, "max_bytes": "10MB", "max_wait": "2s"}
    config, _ = configure(pipeline("w", topic, window=window), **KEEP_FILES)
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results:
        await produce(bootstrap, topic, padded(3))
        first = await results.until(3, timeout=60)
        await produce(bootstrap, topic, padded(5)[3:])
        everything = await results.until(5, timeout=60)
    batches = await provider_batches(emulator.base_url)
    assert [count for _, count, _ in batches] == [3, 2], "each window closed by time, far below 100 requests"
    received = min(r["timestamps"]["received"] for r in first)
    # created_at has a one-second resolution
    assert batches[0][0] >= received + 2 - 1, "the first window waited max_wait after its first event"
    assert len({r["batch_id"] for r in everything}) == 2
    assert worker.terminate() == 0, worker.log()
