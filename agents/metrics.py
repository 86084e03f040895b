"""Prometheus metrics of the worker (served when ``metrics_port`` is set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_IN = Counter("batchstream_events_in", "Input events consumed", ["pipeline"])
RESULTS = Counter("batchstream_results", "Results written to the output topic", ["pipeline"])
DEAD_LETTERS = Counter("batchstream_dead_letters", "Dead letters written", ["pipeline", "reason"])
WINDOWS_SEALED = Counter("batchstream_windows_sealed", "Windows sealed and recorded", ["pipeline"])
BATCHES_SUBMITTED = Counter("batchstream_batches_submitted", "Batches created or adopted", ["pipeline"])
BATCHES_DONE = Counter("batchstream_batches_done", "Windows whose every event has its fate", ["pipeline"])
BATCHES_IN_FLIGHT = Gauge("batchstream_batches_in_flight", "Windows sealed and not yet done", ["pipeline"])
BACKPRESSURE = Counter("batchstream_provider_backpressure", "Submissions refused (429, token limit)", ["pipeline"])
OWNED_PARTITIONS = Gauge("batchstream_owned_partitions", "Input partitions owned by this worker", ["pipeline"])
