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

from agents.polling import BatchWatch
from streams.topics import TopicReader

log = logging.getLogger(__name__)


class WebhookListener:
    """Reads the webhooks topic and wakes the watches; ``start()``/``stop()``."""

    def __init__(self, bootstrap: str, topic: str, watches: list[BatchWatch], options: dict[str, Any]) -> None:
        self._bootstrap, self._topic, self._options = bootstrap, topic, options
        self._reader: TopicReader | None = None
        self._watches = watches
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._reader = TopicReader(self._bootstrap, self._options, read_committed=False)  # in the running loop
            await self._reader.__aenter__()
            self._task = asyncio.create_task(self._run(), name="batchstream-webhooks")

    async def stop(self, *_: Any, **__: Any) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.__aexit__(None, None, None)

    async def _run(self) -> None:
        # A failed fetch (the broker away) is tried again by the reader: polling covers it meanwhile.
        assert self._reader is not None
        async for records in self._reader.follow(self._topic):
            for record in records:
                try:
                    batch_id = str(orjson.loads(record.value or b"{}")["batch_id"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                log.debug("webhook: batch %s ended", batch_id)
                for watch in self._watches:
                    watch.wake(batch_id)
