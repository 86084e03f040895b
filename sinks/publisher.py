"""Records published one by one, outside a pipeline: the operator commands' producer.

``dlq replay`` republishes dead-lettered events, ``backfill`` copies its input to a topic of its
own, ``batchstream webhooks`` publishes each verified delivery. Each record keeps its own
headers and (where given) partition, so they are sent one by one, not in the pipeline's bulk
batches (``sinks/base.py``). Acks from every in-sync replica, idempotent: a retried send is
never written twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.topics import start

__all__ = ["Publisher"]


class Publisher:
    """A producer (acks=all, idempotent); ``async with``, or ``start()``/``stop()``."""

    def __init__(self, bootstrap: str, options: dict[str, Any]) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **options)

    async def start(self) -> None:
        """Start the producer; one whose start failed is stopped before the error goes on."""
        await start(self._producer)

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (), partition: int | None = None,
    ) -> asyncio.Future[Any]:  # fmt: skip
        """Hand one record to the producer; the future the broker's acknowledgement resolves. A
        record refused before it was sent (too large for the producer...) is a future with that
        error: every send's outcome is read from its future, none is raised here."""
        try:
            sent: asyncio.Future[Any] = await self._producer.send(topic, value, key=key, headers=list(headers),
                                                                  partition=partition)  # fmt: skip
        except KafkaError as exc:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return sent

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes | None = None) -> None:
        """Send one record and wait for the broker's acknowledgement (raises when it refuses)."""
        await (await self.send(topic, value, key=key))

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged or failed."""
        await self._producer.flush()
