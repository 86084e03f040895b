"""Which path serves an event: batch or flex. Pure; the rule is documented in docs/modes.md.

``mode: batch`` and ``mode: flex`` send everything one way. ``mode: auto`` sends an event
batch only when the batch path can be trusted to meet its deadline::

    deadline - now >= window.max_wait + (max_batch_latency or 24 h)

An event without a deadline gets ``received + latency_objective``; without an objective it
has no hurry and goes batch.
"""

from __future__ import annotations

from typing import Literal

from streams.config import PipelineSettings
from streams.models import Request

Route = Literal["batch", "flex"]


def route(cfg: PipelineSettings, request: Request, *, now: float) -> Route:
    if cfg.mode != "auto":
        return cfg.mode
    deadline = request.deadline
    if deadline is None and cfg.latency_objective is not None:
        received = request.source.timestamp_ms / 1000 if request.source.timestamp_ms else now
        deadline = received + cfg.latency_objective
    if deadline is None:
        return "batch"
    return "batch" if deadline - now >= cfg.batch_latency_bound else "flex"
