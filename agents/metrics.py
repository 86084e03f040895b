"""Prometheus metrics of the worker (served when ``metrics_port`` is set)."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

EVENTS_IN = Counter("batchstream_events_in", "Input events consumed", ["pipeline"])
RESULTS = Counter("batchstream_results", "Results written to the output topic", ["pipeline"])
DEAD_LETTERS = Counter("batchstream_dead_letters", "Dead letters written", ["pipeline", "reason"])
WINDOWS_SEALED = Counter("batchstream_windows_sealed", "Windows sealed and recorded", ["pipeline"])
BATCHES_SUBMITTED = Counter("batchstream_batches_submitted", "Batches created or adopted", ["pipeline"])
BATCHES_DONE = Counter("batchstream_batches_done", "Windows whose every event has its fate", ["pipeline"])
BATCHES_IN_FLIGHT = Gauge("batchstream_batches_in_flight", "Windows sealed and not yet done", ["pipeline"])
BACKPRESSURE = Counter("batchstream_provider_backpressure", "Submissions refused (429, token limit)", ["pipeline"])
UNFINISHED_EVENTS = Gauge(
    "batchstream_unfinished_events",
    "Events consumed whose result, dead letter or sealed window is not written yet (they hold back commits)",
    ["pipeline"],
)
OWNED_PARTITIONS = Gauge("batchstream_owned_partitions", "Input partitions owned by this worker", ["pipeline"])
FLEX_CALLS = Counter(
    "batchstream_flex_calls", "Synchronous calls made, by tier asked (flex, standard)", ["pipeline", "tier"]
)
COST = Counter("batchstream_cost_usd", "USD paid for results, by the path that served them", ["pipeline", "tier"])
COST_REALTIME = Counter(
    "batchstream_cost_realtime_usd",
    "What the same results would cost at the real-time price (USD)",
    ["pipeline", "tier"],
)
ACCOUNT_REFUSALS = Counter(
    "batchstream_provider_account_refusals",
    "Calls refused for the key or the account (401, 402, 403): retried with backoff, never dead-lettered",
    ["pipeline"],
)
FLEX_REFUSED = Counter("batchstream_flex_refused", "Flex calls refused for lack of capacity (429)", ["pipeline"])
FLEX_FALLBACKS = Counter(
    "batchstream_flex_fallbacks", "Events whose flex budget ran out, by fallback", ["pipeline", "fallback"]
)
FLEX_IN_FLIGHT = Gauge("batchstream_flex_in_flight", "Events being served by flex or its fallback", ["pipeline"])
BATCHES_HEDGED = Counter("batchstream_batches_hedged", "Batches cancelled at max_batch_latency", ["pipeline"])
BATCHES_FAILED = Counter(
    "batchstream_batches_failed",
    "Batches that failed as a whole, by what followed: token_limit (resubmitted later), reject_lines "
    "(named lines dead-lettered, the rest resubmitted), bisect (halves submitted apart), dead_letter",
    ["pipeline", "action"],
)
UNREADABLE_BATCHES = Gauge(
    "batchstream_unreadable_batches", "In-flight batches whose last status read failed", ["pipeline"]
)
UNREADABLE_OLDEST = Gauge(
    "batchstream_unreadable_batch_oldest_seconds",
    "How long the status of the longest-unreadable in-flight batch has failed to read (0: none)",
    ["pipeline"],
)

#: First warning about an unreadable batch at once; the next ones when its age doubles, from a minute.
WARN_FIRST_REPEAT = 60.0


class UnreadableBatches:
    """Batches whose status reads fail, made visible: two gauges and warnings at growing intervals."""

    def __init__(self, pipeline: str) -> None:
        #: window id -> (when reads started failing, when to warn next)
        self._since: dict[str, tuple[float, float]] = {}
        UNREADABLE_BATCHES.labels(pipeline=pipeline).set_function(lambda: len(self._since))
        UNREADABLE_OLDEST.labels(pipeline=pipeline).set_function(self.oldest_age)

    def oldest_age(self) -> float:
        now = time.monotonic()
        return max((now - since for since, _ in self._since.values()), default=0.0)

    def failed(self, window_id: str, batch_id: str, error: BaseException) -> None:
        now = time.monotonic()
        since, warn_at = self._since.get(window_id, (now, now))
        if now >= warn_at:
            age = now - since
            log.warning("%s: the status of batch %s cannot be read (for %.0fs): %s", window_id, batch_id, age, error)
            warn_at = now + max(WARN_FIRST_REPEAT, age)
        self._since[window_id] = (since, warn_at)

    def read(self, window_id: str) -> None:
        self._since.pop(window_id, None)


class PipelineMetrics:
    """The metrics of one pipeline, its ``pipeline`` label bound once rather than per event."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.events_in = EVENTS_IN.labels(pipeline=pipeline)
        self.results = RESULTS.labels(pipeline=pipeline)
        self.windows_sealed = WINDOWS_SEALED.labels(pipeline=pipeline)
        self.batches_submitted = BATCHES_SUBMITTED.labels(pipeline=pipeline)
        self.batches_done = BATCHES_DONE.labels(pipeline=pipeline)
        self.batches_in_flight = BATCHES_IN_FLIGHT.labels(pipeline=pipeline)
        self.batches_hedged = BATCHES_HEDGED.labels(pipeline=pipeline)
        self.backpressure = BACKPRESSURE.labels(pipeline=pipeline)
        self.owned_partitions = OWNED_PARTITIONS.labels(pipeline=pipeline)
        self.unfinished_events = UNFINISHED_EVENTS.labels(pipeline=pipeline)
        self.flex_refused = FLEX_REFUSED.labels(pipeline=pipeline)
        self.account_refusals = ACCOUNT_REFUSALS.labels(pipeline=pipeline)
        self.flex_in_flight = FLEX_IN_FLIGHT.labels(pipeline=pipeline)
        self.unreadable = UnreadableBatches(pipeline)
        self._cost: dict[str, tuple[Counter, Counter]] = {}

    def dead_letter(self, reason: str) -> None:
        DEAD_LETTERS.labels(pipeline=self.pipeline, reason=reason).inc()

    def batch_failed(self, action: str) -> None:
        BATCHES_FAILED.labels(pipeline=self.pipeline, action=action).inc()

    def flex_call(self, tier: str) -> None:
        FLEX_CALLS.labels(pipeline=self.pipeline, tier=tier).inc()

    def cost(self, tier: str, paid: float, realtime: float) -> None:
        counters = self._cost.get(tier)
        if counters is None:
            labels = {"pipeline": self.pipeline, "tier": tier}
            counters = self._cost[tier] = (COST.labels(**labels), COST_REALTIME.labels(**labels))
        counters[0].inc(paid)
        counters[1].inc(realtime)

    def flex_fallback(self, fallback: str) -> None:
        FLEX_FALLBACKS.labels(pipeline=self.pipeline, fallback=fallback).inc()
