"""The worker's side of completion webhooks: batch ids from the webhooks topic wake their watch.

``batchstream webhooks`` (``ops/webhooks.py``) verifies each delivery and publishes the batch
id; every worker reads the topic from its end (no consumer group: each worker sees every id)
and asks each pipeline's :class:`~agents.polling.BatchWatch` to read that batch now. An id no
pipeline of this worker watches is ignored. Polling stays as the fallback: a webhook lost or
published while no worker was reading costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from agents.polling import BatchWatch

log = logging.getLogger(__name__)


class WebhookListener:
    """Reads the webhooks topic and wakes the watches; ``start()``/``stop()``."""

    def __init__(self, bootstrap: str, topic: str, watches: list[BatchWatch], options: dict[str, Any]) -> None:
        self._bootstrap, self._topic, self._options = bootstrap, topic, options
        self._consumer: AIOKafkaConsumer | None = None
        self._watches = watches
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._consumer = AIOKafkaConsumer(self._topic, bootstrap_servers=self._bootstrap, group_id=None,
                                              auto_offset_reset="latest", enable_auto_commit=False,
                                              **self._options)  # fmt: skip
            await self._consumer.start()
            self._task = asyncio.create_task(self._run(), name="batchstream-webhooks")

    async def stop(self, *_: Any, **__: Any) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:  # the broker away: polling covers it meanwhile
                log.warning("reading completion webhooks: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for messages in batches.values():
                for message in messages:
                    try:
                        batch_id = str(orjson.loads(message.value or b"{}")["batch_id"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue
                    log.debug("webhook: batch %s ended", batch_id)
                    for watch in self._watches:
                        watch.wake(batch_id)
