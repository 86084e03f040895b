"""The flex path: one synchronous call per event with ``service_tier="flex"``.

Flex capacity is cheap but not guaranteed: the provider answers 429 ("resource
unavailable") when it has none. :meth:`FlexRunner.serve` retries such refusals, and
transient faults, with exponential backoff and jitter, within the event's budget (a number
of calls and a deadline), then applies the pipeline's fallback:

- ``standard``: the same request without flex (standard price), retried up to
  ``retry.attempts`` on transient faults;
- ``batch``: the caller hands the event to a batch window;
- ``dead_letter``: a ``flex_unavailable`` dead letter.

A model that does not offer flex rejects the ``service_tier`` parameter (HTTP 400 naming
it); that goes straight to the fallback. Any other 4xx is a ``provider_rejected`` dead
letter. What the caller gets is an outcome value; it writes the record and acks the event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from agents import metrics
from agents.outcomes import backoff
from agents.provider import BatchClient
from streams.config import PipelineSettings
from streams.errors import ProviderBackpressure, ProviderError, ProviderRejected
from streams.models import ReasonCode, Request

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Served:
    """The provider answered: ``mode`` is the path (flex or standard), ``tier`` what it reported
    (None when the response does not say: an OpenAI-compatible server without tiers)."""

    body: dict[str, Any]
    mode: Literal["flex", "standard"]
    tier: str | None
    attempts: int
    started: float
    finished: float


@dataclass(frozen=True, slots=True)
class Failed:
    reason: ReasonCode
    message: str
    attempts: int
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToBatch:
    """Flex had no capacity within the budget and the fallback is ``batch``."""

    attempts: int


Outcome = Served | Failed | ToBatch


def _error_detail(exc: ProviderError) -> dict[str, Any]:
    return {"status_code": exc.status_code, "code": exc.code, "param": exc.param, "message": str(exc)}


def _reported_tier(response: dict[str, Any]) -> str | None:
    tier = response.get("service_tier")
    return tier if isinstance(tier, str) and tier else None


def _rejects_flex(exc: ProviderRejected) -> bool:
    return exc.param == "service_tier" or "service_tier" in str(exc)


class FlexRunner:
    """Serves single requests through flex, then the fallback. One per pipeline."""

    def __init__(self, pipeline: PipelineSettings, client: BatchClient, labels: dict[str, str]) -> None:
        self.cfg = pipeline
        self.flex = pipeline.flex
        self.client = client
        self.labels = labels
        #: Flex calls in flight; the caller acquires a slot before it takes an event on.
        self.slots = asyncio.Semaphore(pipeline.flex.concurrency)

    async def serve(self, request: Request, *, deadline: float, allow_batch: bool = True) -> Outcome:
        """Serve one request: flex until ``deadline`` (epoch seconds) or ``flex.attempts``, then fall back.

        ``allow_batch=False`` (a hedged event, already late) turns a ``batch`` fallback into
        ``standard``; configuration forbids that combination, this is the backstop.
        """
        started = time.time()
        body = {**request.body, "service_tier": "flex"}
        attempts = 0
        last: ProviderError | None = None
        while attempts < self.flex.attempts:
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            attempts += 1
            metrics.FLEX_CALLS.labels(tier="flex", **self.labels).inc()
            try:
                response = await self.client.respond(
                    request.endpoint, body, timeout=max(1.0, min(self.flex.timeout, remaining))
                )
            except ProviderRejected as exc:
                if _rejects_flex(exc):
                    log.info("%s: the model does not offer flex (%s); falling back", request.id, exc)
                    last = exc
                    break
                return Failed("provider_rejected", str(exc), attempts, _error_detail(exc))
            except ProviderError as exc:
                last = exc
                if isinstance(exc, ProviderBackpressure):
                    metrics.FLEX_REFUSED.labels(**self.labels).inc()
                delay = getattr(exc, "retry_after", None) or backoff(
                    attempts, initial=self.flex.backoff_initial, maximum=self.flex.backoff_max
                )
                if attempts >= self.flex.attempts or time.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
                continue
            return Served(response, "flex", _reported_tier(response), attempts, started, time.time())
        return await self._fall_back(request, attempts, last, started, allow_batch=allow_batch)

    async def _fall_back(
        self, request: Request, attempts: int, last: ProviderError | None, started: float, *, allow_batch: bool
    ) -> Outcome:
        why = f"flex unavailable after {attempts} calls in {time.time() - started:.1f}s"
        if last is not None:
            why += f": {last}"
        fallback = self.flex.fallback
        if fallback == "batch" and not allow_batch:
            fallback = "standard"
        metrics.FLEX_FALLBACKS.labels(fallback=fallback, **self.labels).inc()
        if fallback == "dead_letter":
            return Failed("flex_unavailable", why, attempts, _error_detail(last) if last else None)
        if fallback == "batch":
            return ToBatch(attempts)
        return await self._standard(request, attempts, started)

    async def _standard(self, request: Request, flex_attempts: int, started: float) -> Outcome:
        body = {k: v for k, v in request.body.items() if k != "service_tier"}
        tries = 0
        while True:
            tries += 1
            metrics.FLEX_CALLS.labels(tier="standard", **self.labels).inc()
            try:
                response = await self.client.respond(request.endpoint, body, timeout=self.flex.timeout)
            except ProviderRejected as exc:
                return Failed("provider_rejected", str(exc), flex_attempts + tries, _error_detail(exc))
            except ProviderError as exc:
                if tries >= self.cfg.retry.attempts:
                    return Failed("retries_exhausted", str(exc), flex_attempts + tries, _error_detail(exc))
                await asyncio.sleep(
                    getattr(exc, "retry_after", None)
                    or backoff(tries, initial=self.cfg.retry.backoff_initial, maximum=self.cfg.retry.backoff_max)
                )
                continue
            return Served(response, "standard", _reported_tier(response), flex_attempts + tries, started, time.time())
