"""Transactional writes per input partition, on the real broker: what a read_committed consumer sees."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from sinks.base import Outgoing
from sinks.transactions import Fenced, Transactions
from tests.support import committed_values

pytestmark = pytest.mark.kafka


def records(topic: str, *values: bytes) -> list[Outgoing]:
    return [(topic, 0, b"k", v) for v in values]


async def test_concurrent_writes_are_each_committed_once_and_share_transactions(bootstrap, make_topic) -> None:
    topic = await make_topic("txn")
    txns = Transactions(f"t-{uuid.uuid4().hex[:8]}", bootstrap, on_fenced=lambda _: None)
    await txns.open([0])
    try:
        await asyncio.gather(*(txns.write(0, records(topic, b"%d" % i)) for i in range(50)))
        commits = txns.of(0).commits
    finally:
        await txns.close()
    assert sorted(await committed_values(bootstrap, topic)) == sorted(b"%d" % i for i in range(50))
    assert commits < 50, "writes that arrive during a commit share the next transaction"


async def test_the_next_owner_of_a_partition_fences_the_previous_one(bootstrap, make_topic) -> None:
    topic = await make_topic("txn")
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    fenced: list[int] = []
    zombie = Transactions(prefix, bootstrap, on_fenced=fenced.append)
    owner = Transactions(prefix, bootstrap, on_fenced=lambda _: None)
    await zombie.open([0])
    try:
        await zombie.write(0, records(topic, b"before"))
        await owner.open([0])  # the partition's next owner starts its producer
        with pytest.raises(Fenced):
            await zombie.write(0, records(topic, b"zombie"))
        with pytest.raises(Fenced):  # and stays fenced: never started again by itself
            await zombie.write(0, records(topic, b"zombie again"))
        await owner.write(0, records(topic, b"owner"))
    finally:
        await zombie.close()
        await owner.close()
    assert fenced == [0]
    assert await committed_values(bootstrap, topic) == [b"before", b"owner"]


async def test_a_transaction_left_open_by_a_dead_owner_is_aborted_by_the_next(bootstrap, make_topic) -> None:
    topic = await make_topic("txn")
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    dead = Transactions(prefix, bootstrap, on_fenced=lambda _: None)
    await dead.open([0])
    producer = dead.of(0)._producer
    await producer.begin_transaction()
    await (await producer.send(topic, b"never committed", partition=0))  # written, not committed: then it dies
    owner = Transactions(prefix, bootstrap, on_fenced=lambda _: None)
    try:
        await owner.open([0])
        await owner.write(0, records(topic, b"owner"))
        assert await committed_values(bootstrap, topic) == [b"owner"]
    finally:
        await owner.close()
        dead.partitions.clear()
        await producer.stop()
