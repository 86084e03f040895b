"""Watching the batches at the provider until each ends, or until it is late and cancelled."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from agents.metrics import PipelineMetrics
from agents.planner import past
from agents.retry import backoff
from providers import Job, Provider
from providers.base import BatchVanished, SdkRefused
from streams.config import RetrySettings
from streams.errors import ProviderError
from streams.provider_config import ProviderSettings

log = logging.getLogger(__name__)

#: How far before the oldest watched batch's creation a listing reaches (clock differences).
LISTING_MARGIN = 120.0


@dataclass
class _Watched:
    """One batch being waited for, and what the shared listing last said of it."""

    #: Set when there is news: a changed or ended status from the listing, or a webhook.
    news: asyncio.Event = field(default_factory=asyncio.Event)
    #: The latest status the listing gave, not yet taken by the waiter.
    listed: Job | None = None
    #: Whether the latest listing showed the batch.
    seen: bool = False
    #: The listing generation and the time of the waiter's own last read.
    read_generation: int = -1
    read_at: float = 0.0
    last_status: str | None = None
    created_at: float | None = None
    #: A webhook said it ended: read it now, whatever the listing says.
    read_now: bool = False


class BatchWatch:
    """Watches the batches of the in-flight windows of one pipeline until each ends.

    Status reads do not grow with the number of batches in flight: one listing per
    ``poll_interval`` (where the provider lists batches with their status: OpenAI, Anthropic,
    Gemini; a page per 100 batches) tells every waiting window how its batch stands, and a
    window reads its own batch only on its first look, when a webhook names it, or when the
    listing does not show it (a server that cannot list, a listing that fails, a batch not
    listed yet). Ended batches come from the listing with what their results need.
    """

    def __init__(
        self, client: Provider, provider: ProviderSettings, retry: RetrySettings, metrics: PipelineMetrics
    ) -> None:
        self.client = client
        self.provider = provider
        self.retry = retry
        self.metrics = metrics
        self._watched: dict[str, _Watched] = {}
        self._board: asyncio.Task[None] | None = None
        #: When the last listing that worked ended (monotonic; 0: none, or the last one failed).
        self._listed_at = 0.0
        #: Listings attempted so far.
        self._generation = 0

    def wake(self, batch_id: str) -> None:
        """Read this batch now (a completion webhook named it), not at its next poll."""
        watched = self._watched.get(batch_id)
        if watched is not None:
            watched.read_now = True
            watched.news.set()

    def _take(self, batch_id: str, watched: _Watched, latest: Job) -> Job | None:
        """What the listing last said of the batch (``latest`` when it said nothing new since),
        if it listed the batch recently; None when the batch must be read."""
        job, watched.listed = watched.listed, None
        if self._watched.get(batch_id) is not watched:
            return None  # another wait for the same batch took over: this one reads for itself
        if watched.read_now:
            watched.read_now = False
            return None
        if watched.seen and self._listing_alive():
            return job or latest
        # Read since, and no listing attempted since: wait for the one under way (not for ever).
        board = self._board is not None and not self._board.done()
        fresh = time.monotonic() - watched.read_at <= self._horizon()
        return latest if board and fresh and watched.read_generation == self._generation else None

    async def wait(self, window_id: str, batch_id: str, hedge_at: float | None) -> tuple[Job | None, bool]:
        """Wait until the batch ends; at ``hedge_at`` cancel it. Return (batch, hedged).

        A status read that keeps failing is retried with backoff and reported (metric, warnings),
        and ``hedge_at`` still applies: a late batch whose status cannot be read is cancelled on a
        best-effort basis and returned as None (its events go flex, whatever it says later).
        """
        poll = self.provider.poll_interval
        ceiling = max(poll, self.retry.backoff_max)
        failures = 0
        watched = self._watched[batch_id] = _Watched()
        self._start_board()
        latest: Job | None = None

        def until(delay: float) -> float:
            return delay if hedge_at is None else min(delay, max(0.05, hedge_at - time.time()))

        try:
            while True:
                batch = self._take(batch_id, watched, latest) if latest is not None else None
                if batch is None:
                    try:
                        batch = await self.client.retrieve(batch_id)
                    except ProviderError as exc:
                        failures += 1
                        self.metrics.unreadable.failed(window_id, batch_id, exc)
                        if past(hedge_at, time.time()):
                            await self._cancel_unread(window_id, batch_id)
                            return None, True
                        if isinstance(exc, SdkRefused) or exc.status_code == 404:
                            raise BatchVanished(f"batch {batch_id}: {exc}", status_code=exc.status_code) from exc
                        if not exc.retriable:
                            raise
                        await asyncio.sleep(until(backoff(failures, initial=poll, maximum=ceiling)))
                        continue
                    failures = 0
                    self.metrics.unreadable.read(window_id)
                    watched.read_generation, watched.read_at = self._generation, time.monotonic()
                latest = batch
                watched.created_at, watched.last_status = batch.created_at, batch.status
                late = past(hedge_at, time.time())
                if batch.terminal:
                    return batch, late
                if late:
                    return await self._cancel(window_id, batch), True
                # Listed: the listing brings news; else poll it as before.
                await self._nap(watched, until(4 * poll if watched.seen and self._listing_alive() else poll))
        finally:
            if self._watched.get(batch_id) is watched:
                del self._watched[batch_id]
            self.metrics.unreadable.read(window_id)
            if not self._watched and self._board is not None:
                self._board.cancel()
                self._board = None

    def _horizon(self) -> float:
        return max(10 * self.provider.poll_interval, 60.0)

    def _listing_alive(self) -> bool:
        """The latest listing worked and is not stale (a listing slower than the interval is
        fine; one stuck far longer is not trusted)."""
        return self._listed_at > 0 and time.monotonic() - self._listed_at <= self._horizon()

    async def _nap(self, watched: _Watched, delay: float) -> None:
        try:
            await asyncio.wait_for(watched.news.wait(), delay)
        except TimeoutError:
            pass
        watched.news.clear()

    def _start_board(self) -> None:
        if self._board is None or self._board.done():
            self._board = asyncio.create_task(self._list_every_interval(), name="batchstream-batch-listing")

    async def _list_every_interval(self) -> None:
        """One listing per poll interval for every batch waited for, while any is."""
        while self._watched:
            await asyncio.sleep(self.provider.poll_interval)
            created = [w.created_at for w in self._watched.values() if w.created_at is not None]
            if not created:
                continue
            try:
                # Never more pages than reading each batch would cost: batches created since by
                # others beyond that are not looked at, and the windows not listed read their own.
                scan = max(100, 2 * len(self._watched))
                jobs = await self.client.list_jobs(min(created) - LISTING_MARGIN, scan=scan)
            except Exception as exc:  # noqa: BLE001 - whatever it is, the windows poll on their own
                log.info("listing batches failed (%s); each window reads its own batch meanwhile", exc)
                jobs = None
            self._listed_at = time.monotonic() if jobs is not None else 0.0
            self._generation += 1
            listed = {job.id: job for job in jobs or ()}
            for batch_id, watched in list(self._watched.items()):
                job = listed.get(batch_id)
                watched.seen = job is not None  # not listed: its waiter polls it itself
                if job is None:
                    continue
                watched.listed = job
                if job.terminal or job.status != watched.last_status:
                    watched.news.set()
            if jobs is None and not self.client.can_find:
                return  # this server cannot list: per-batch reads from now on

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
