"""The flex path: one synchronous call per event with ``service_tier="flex"``.

Flex capacity is cheap but not guaranteed: the provider answers 429 ("resource
unavailable") when it has none. :meth:`FlexRunner.serve` retries such refusals, and
transient faults, with exponential backoff and jitter, within the event's budget (a number
of calls and a deadline), then applies the pipeline's fallback:

- ``standard``: the same request without flex (standard price), retried up to
  ``retry.attempts`` on transient faults;
- ``batch``: the caller hands the event to a batch window;
- ``dead_letter``: a ``flex_unavailable`` dead letter.

A provider without a flex tier (Anthropic, Azure) is only configured for flex with the
``standard`` fallback (``streams/config.py``): its events go straight to standard calls.

A model that does not offer flex rejects the ``service_tier`` parameter (HTTP 400 naming
it); that goes straight to the fallback. A refusal of the key or the account (401, 402,
403) is waited out, the call retried with backoff, never a dead letter. Any other 4xx is a
``provider_rejected`` dead letter. What the caller gets is an outcome value (``agents/outcomes.py``).

:class:`FlexLane` is the flex path of a pipeline: it takes routed events on under the
concurrency limit (a full lane holds back consumption), serves each in a task filed under
its input partition, writes its record, and only then marks the event finished in its
frontier. An event whose fallback is ``batch`` is handed to the batch lane instead.

Crash point: a flex event in flight is not finished, so the committed offset stays before
it; after a crash it is consumed and served again (a result written just before the crash
is then emitted twice, with the same ``id`` and ``task_version``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agents.metrics import PipelineMetrics
from agents.outbox import Outbox
from agents.outcomes import Failed, FlexOutcome, Served, ToBatch
from agents.retry import backoff, retry_forever
from agents.state import Ledger
from agents.tasks import PartitionTasks
from providers import Provider
from streams.config import PipelineSettings
from streams.errors import ProviderAccountError, ProviderBackpressure, ProviderError, ProviderRejected
from streams.models import Request
from streams.offsets import Pending

log = logging.getLogger(__name__)

#: The longest wait between calls refused for the key or the account.
ACCOUNT_RETRY_MAX = 60.0


def _error_detail(exc: ProviderError) -> dict[str, Any]:
    return {"status_code": exc.status_code, "code": exc.code, "param": exc.param, "message": str(exc)}


class FlexRunner:
    """Serves single requests through flex, then the fallback. One per pipeline."""

    def __init__(self, cfg: PipelineSettings, client: Provider, metrics: PipelineMetrics) -> None:
        self.cfg = cfg
        self.flex = cfg.flex
        self.client = client
        self.metrics = metrics
        #: Flex calls in flight; the caller acquires a slot before it takes an event on.
        self.slots = asyncio.Semaphore(cfg.flex.concurrency)

    async def serve(self, request: Request, *, deadline: float, allow_batch: bool = True) -> FlexOutcome:
        """Serve one request: flex until ``deadline`` (epoch seconds) or ``flex.attempts``, then fall back.

        ``allow_batch=False`` (a hedged event, already late) turns a ``batch`` fallback into
        ``standard``; configuration forbids that combination, this is the backstop.
        """
        started = time.time()
        if not self.client.offers_flex and self.flex.fallback == "standard":
            return await self._standard(request, 0, started)  # no flex tier: configured to call at standard
        attempts = 0
        last: ProviderError | None = None
        while attempts < self.flex.attempts:
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            attempts += 1
            self.metrics.flex_call("flex")
            try:
                reply = await self._call(request, flex=True, timeout=max(1.0, min(self.flex.timeout, remaining)))
            except ProviderRejected as exc:
                if self.client.refuses_flex(exc):
                    log.info("%s: the model does not offer flex (%s); falling back", request.id, exc)
                    last = exc
                    break
                return Failed("provider_rejected", str(exc), attempts, _error_detail(exc))
            except ProviderError as exc:
                last = exc
                retry_after = None
                if isinstance(exc, ProviderBackpressure):
                    self.metrics.flex_refused.inc()
                    retry_after = exc.retry_after
                delay = retry_after or backoff(
                    attempts, initial=self.flex.backoff_initial, maximum=self.flex.backoff_max
                )
                if attempts >= self.flex.attempts or time.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
                continue
            return Served(reply.body, "flex", reply.tier, attempts, started, time.time())
        return await self._fall_back(request, attempts, last, started, allow_batch=allow_batch)

    async def _call(self, request: Request, *, flex: bool, timeout: float) -> Any:
        """One call; while the provider refuses the key or the account (401, 402, 403), the
        same call again after a backoff, for as long as it takes: such a refusal says nothing
        of the event, so it never becomes its dead letter (nor uses its flex budget). Logged,
        counted (``batchstream_provider_account_refusals``); ``/readyz`` reports the key refused."""
        refusals = 0
        while True:
            try:
                return await self.client.call(request.endpoint, request.body, flex=flex, timeout=timeout)
            except ProviderAccountError as exc:
                refusals += 1
                self.metrics.account_refusals.inc()
                delay = backoff(refusals, initial=self.flex.backoff_initial, maximum=ACCOUNT_RETRY_MAX)
                if refusals == 1 or refusals % 10 == 0:
                    log.warning("%s: the provider refuses the key or the account (%s); the event waits, retrying "
                                "in %.1fs (refused %d times)", request.id, exc, delay, refusals)  # fmt: skip
                await asyncio.sleep(delay)

    async def _fall_back(
        self, request: Request, attempts: int, last: ProviderError | None, started: float, *, allow_batch: bool
    ) -> FlexOutcome:
        why = f"flex unavailable after {attempts} calls in {time.time() - started:.1f}s"
        if last is not None:
            why += f": {last}"
        fallback = self.flex.fallback
        if fallback == "batch" and not allow_batch:
            fallback = "standard"
        self.metrics.flex_fallback(fallback)
        if fallback == "dead_letter":
            return Failed("flex_unavailable", why, attempts, _error_detail(last) if last else None)
        if fallback == "batch":
            return ToBatch(attempts)
        return await self._standard(request, attempts, started)

    async def _standard(self, request: Request, flex_attempts: int, started: float) -> FlexOutcome:
        tries = 0
        while True:
            tries += 1
            self.metrics.flex_call("standard")
            try:
                reply = await self._call(request, flex=False, timeout=self.flex.timeout)
            except ProviderRejected as exc:
                return Failed("provider_rejected", str(exc), flex_attempts + tries, _error_detail(exc))
            except ProviderError as exc:
                if tries >= self.cfg.retry.attempts:
                    return Failed("retries_exhausted", str(exc), flex_attempts + tries, _error_detail(exc))
                retry_after = exc.retry_after if isinstance(exc, ProviderBackpressure) else None
                await asyncio.sleep(
                    retry_after
                    or backoff(tries, initial=self.cfg.retry.backoff_initial, maximum=self.cfg.retry.backoff_max)
                )
                continue
            return Served(reply.body, "standard", reply.tier, flex_attempts + tries, started, time.time())


class FlexLane:
    """The flex path of one pipeline: one task per event, at most ``flex.concurrency`` at once."""

    def __init__(
        self,
        runner: FlexRunner,
        outbox: Outbox,
        ledger: Ledger,
        tasks: PartitionTasks,
        *,
        to_batch: Callable[[Pending], Awaitable[None]],
    ) -> None:
        self.runner = runner
        self.outbox = outbox
        self.ledger = ledger
        self.tasks = tasks
        self.metrics = runner.metrics
        #: Where an event goes when flex has no capacity and the fallback is ``batch``.
        self.to_batch = to_batch

    async def add(self, pending: Pending) -> None:
        """Take an event on; waits while the lane is full (consumption waits with it)."""
        await self.runner.slots.acquire()
        slot = _Slot(self.runner.slots)
        if pending.frontier.closed:  # revoked while we waited: the new owner serves it
            slot.release()
            return
        request = pending.request
        task = self.tasks.spawn(request.source.partition, self._serve(pending, slot), name=f"flex:{request.custom_id}")
        # also released here: a task cancelled before its first step runs no finally
        task.add_done_callback(lambda _: slot.release())

    async def _serve(self, pending: Pending, slot: _Slot) -> None:
        request = pending.request
        deadline = time.time() + self.runner.flex.budget
        self.metrics.flex_in_flight.inc()
        try:
            outcome = await retry_forever(
                lambda: self.runner.serve(request, deadline=deadline), what=f"{request.id}: flex serving"
            )
        finally:
            self.metrics.flex_in_flight.dec()
            slot.release()  # the call is over: the next event may start while this one is written
        if isinstance(outcome, ToBatch):
            await self.to_batch(pending)  # finished when its window is sealed
            return
        unit = self.outbox.unit()
        unit.served(request, outcome, batch_id=None, submitted=None, rounds=0)
        if await self.ledger.mark_until_written(request.source.partition, [request.source.offset], unit, request.id,
                                                frontier=pending.frontier, linger=True):  # fmt: skip
            pending.frontier.finished(request.source.offset)


class _Slot:
    """One unit of a semaphore, released at most once."""

    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None
