"""The topic reader (``streams/topics.py``) on the real broker: ranges, their ends under an open
transaction, and following a topic as it grows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from streams.topics import TopicReader
from tests.support import produce

pytestmark = pytest.mark.kafka


async def _values(reader: TopicReader, topic: str, *, to_high_watermark: bool) -> list[bytes | None]:
    batches = reader.scan_between(topic, {0: (0, 2**63 - 1)}, to_high_watermark=to_high_watermark)
    return [record.value async for batch in batches for record in batch]


async def test_a_read_to_the_high_watermark_waits_for_an_open_transaction_instead_of_hiding_what_follows(
    bootstrap: str, make_topic: Any
) -> None:  # fmt: skip
    """A state topic shared with another producer: its open transaction holds the last stable
    offset back, so a read_committed read to that end misses records committed after the
    transaction began; a read to the high watermark waits for the transaction, then has them all."""
    topic = await make_topic("shared")
    await produce(bootstrap, topic, [b"a"], partition=0)
    other = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"other-{topic}")
    await other.start()
    try:
        await other.begin_transaction()
        await (await other.send(topic, b"b", partition=0))
        await produce(bootstrap, topic, [b"c"], partition=0)  # after the open transaction's record
        async with TopicReader(bootstrap, {}) as reader:
            assert await _values(reader, topic, to_high_watermark=False) == [b"a"], "c is past the stable offset"
        async with TopicReader(bootstrap, {}) as reader:
            read = asyncio.create_task(_values(reader, topic, to_high_watermark=True))
            done, _ = await asyncio.wait({read}, timeout=3)
            assert not done, "the read waits while the transaction is open"
            await other.commit_transaction()
            assert await asyncio.wait_for(read, 60) == [b"a", b"b", b"c"]
    finally:
        await other.stop()


async def test_following_a_topic_reads_what_is_written_after_it_began(bootstrap: str, make_topic: Any) -> None:
    """Only records written once following began: none from before (what is written while it
    starts may or may not be seen, so the test writes until one is)."""
    topic = await make_topic("followed", partitions=2)
    await produce(bootstrap, topic, [b"before"] * 5)
    async with TopicReader(bootstrap, {}, read_committed=False) as reader:
        follow = reader.follow(topic)
        first = asyncio.ensure_future(follow.__anext__())
        while not first.done():
            await produce(bootstrap, topic, [b"after"])
            await asyncio.wait({first}, timeout=1)
        batch = first.result()
        await follow.aclose()
    assert batch and {r.value for r in batch} == {b"after"}
