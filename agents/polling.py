"""Watching one batch at the provider until it ends, or until it is late and cancelled."""

from __future__ import annotations

import asyncio
import logging
import time

from agents.metrics import PipelineMetrics
from agents.retry import backoff
from providers import Job, Provider
from streams.config import RetrySettings
from streams.errors import ProviderError
from streams.provider_config import ProviderSettings

log = logging.getLogger(__name__)


class BatchWatch:
    """Polls batches for the in-flight windows of one pipeline."""

    def __init__(
        self, client: Provider, provider: ProviderSettings, retry: RetrySettings, metrics: PipelineMetrics
    ) -> None:
        self.client = client
        self.provider = provider
        self.retry = retry
        self.metrics = metrics
        #: Batches being watched, each with an event that cuts its poll interval short.
        self._wakeups: dict[str, asyncio.Event] = {}

    def wake(self, batch_id: str) -> None:
        """Read this batch now (a completion webhook named it), not at its next poll."""
        event = self._wakeups.get(batch_id)
        if event is not None:
            event.set()

    async def _nap(self, batch_id: str, delay: float) -> None:
        event = self._wakeups.setdefault(batch_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), delay)
        except TimeoutError:
            pass
        event.clear()

    async def wait(self, window_id: str, batch_id: str, hedge_at: float | None) -> tuple[Job | None, bool]:
        """Poll until the batch ends (or :meth:`wake` says it did); at ``hedge_at`` cancel it.
        Return (batch, hedged).

        A status read that keeps failing is retried with backoff and reported (metric, warnings),
        and ``hedge_at`` still applies: a late batch whose status cannot be read is cancelled on a
        best-effort basis and returned as None (its events go flex, whatever it says later).
        """
        poll = self.provider.poll_interval
        ceiling = max(poll, self.retry.backoff_max)
        failures = 0

        def until(delay: float) -> float:
            return delay if hedge_at is None else min(delay, max(0.05, hedge_at - time.time()))

        try:
            while True:
                try:
                    batch = await self.client.retrieve(batch_id)
                except ProviderError as exc:
                    failures += 1
                    self.metrics.unreadable.failed(window_id, batch_id, exc)
                    if hedge_at is not None and time.time() >= hedge_at:
                        await self._cancel_unread(window_id, batch_id)
                        return None, True
                    if not exc.retriable:
                        raise
                    await asyncio.sleep(until(backoff(failures, initial=poll, maximum=ceiling)))
                    continue
                failures = 0
                self.metrics.unreadable.read(window_id)
                late = hedge_at is not None and time.time() >= hedge_at
                if batch.terminal:
                    return batch, late
                if late:
                    return await self._cancel(window_id, batch), True
                await self._nap(batch_id, until(poll))
        finally:
            self._wakeups.pop(batch_id, None)
            self.metrics.unreadable.read(window_id)

    async def _cancel_unread(self, window_id: str, batch_id: str) -> None:
        self.metrics.batches_hedged.inc()
        log.warning("%s: batch %s passed max_batch_latency and its status cannot be read; cancelling it "
                    "and serving its events through flex", window_id, batch_id)  # fmt: skip
        try:
            await self.client.cancel(batch_id)
        except ProviderError as exc:
            log.info("%s: cancelling batch %s failed (%s); ignoring it from now on", window_id, batch_id, exc)

    async def _cancel(self, window_id: str, batch: Job) -> Job:
        """Cancel a late batch and wait up to ``cancel_wait`` for its finished part to be final.

        Returns the last status read: still not terminal after ``cancel_wait`` means nothing of
        it is used (all of its events go flex).
        """
        self.metrics.batches_hedged.inc()
        log.info("%s: batch %s passed max_batch_latency; cancelling it", window_id, batch.id)
        try:
            batch = await self.client.cancel(batch.id)
        except ProviderError as exc:
            log.info("%s: cancelling batch %s: %s", window_id, batch.id, exc)  # it may have ended meanwhile
        give_up = time.monotonic() + self.provider.cancel_wait
        while not batch.terminal and time.monotonic() < give_up:
            await asyncio.sleep(min(self.provider.poll_interval, 1.0))
            try:
                batch = await self.client.retrieve(batch.id)
            except ProviderError as exc:
                log.info("%s: reading cancelled batch %s: %s", window_id, batch.id, exc)
        return batch
