"""The outbox: every result and dead letter is built here, and writing them is the gate.

No event is finished (its offset allowed into a commit), and no window record moves on,
before the records it produced are written. Records are built into a *unit*
(:meth:`Outbox.unit`), handed to the ledger with the state they settle
(``Ledger.save`` / ``Ledger.mark``, ``agents/state.py``):

- ``at_least_once``: the unit is the outbox itself; its sinks are flushed (the broker
  confirmed every record added before, ``sinks/base.py``) before the state record is written;
- ``exactly_once``: the unit is a draft of its own, written in one Kafka transaction with
  the state record or the events' served marks.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from agents.metrics import PipelineMetrics
from agents.outcomes import Failed, Served, extract_output
from sinks import MemorySink, Sink
from sinks.transactions import Record
from streams.config import PipelineSettings
from streams.errors import InvalidOutputError
from streams.models import (
    DeadLetter,
    ReasonCode,
    Rejection,
    Request,
    Source,
    SourceRecord,
    dead_letter_for,
    task_version,
    token_counts,
)
from streams.pricing import Pricing

#: Backoff while a record cannot be written (the broker is down or restarting).
WRITE_RETRY_INITIAL = 0.5
WRITE_RETRY_MAX = 30.0


def stamps(request: Request, *, submitted: float | None, completed: float | None) -> dict[str, float | None]:
    """A result's ``timestamps`` (``streams.models.Timestamps``)."""
    received = request.source.timestamp_ms / 1000 if request.source.timestamp_ms else None
    return {"received": received, "submitted": submitted, "completed": completed}


def _dumps(record: BaseModel) -> bytes:
    return orjson.dumps(record.model_dump(mode="json"))


class Outbox:
    """Results and dead letters of one pipeline, through its two sinks."""

    def __init__(
        self, cfg: PipelineSettings, results: Sink, dead_letters: Sink, metrics: PipelineMetrics,
        *, provider: str | None = None, pricing: Pricing | None = None, transactional: bool = False,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        #: Prices of the models, for each result's ``cost`` (the defaults unless given).
        self.pricing = pricing or Pricing()
        #: The name of the provider serving the pipeline, stamped on every result.
        self.provider = provider
        self.task_version = task_version(cfg)
        self.results = results
        self.dead_letters = dead_letters
        self.metrics = metrics
        #: ``exactly_once``: units are drafts, written in transactions by the ledger.
        self.transactional = transactional

    def unit(self) -> Outbox:
        """Where the records of one atomic write gather (see the module docstring)."""
        if not self.transactional:
            return self
        unit = copy.copy(self)
        unit.results, unit.dead_letters = MemorySink(), MemorySink()
        return unit

    def staged(self) -> list[Record]:
        """A draft unit's records, for its transaction (each time the same: a failed write is retried)."""
        assert isinstance(self.results, MemorySink) and isinstance(self.dead_letters, MemorySink)
        return [
            *((self.cfg.output_topic, None, key, value) for key, value in self.results.pending),
            *((self.cfg.dead_letter_topic, None, key, value) for key, value in self.dead_letters.pending),
        ]

    def result(
        self, request: Request, body: dict[str, Any], *, attempts: int, batch_id: str | None,
        timestamps: dict[str, float | None], mode: Literal["batch", "flex", "standard"] = "batch",
        tier: str | None = "batch",
    ) -> None:  # fmt: skip
        """A result; an ``invalid_output`` dead letter when the output is not what the request asked for."""
        try:
            output = extract_output(request.endpoint, body, request.wants_json)
        except InvalidOutputError as exc:
            self.dead_letter(request, "invalid_output", str(exc), attempts=attempts, batch_id=batch_id,
                             error={"response": body})  # fmt: skip
            return
        usage = body.get("usage", body.get("usageMetadata"))
        usage = usage if isinstance(usage, dict) else None
        counts = token_counts(usage)
        amounts = None if counts is None else self.pricing.amounts(request.model, counts[0], counts[1], mode)
        source = request.source
        # The schema is streams.models.Result; built as plain data and serialized once (the hot path).
        record = {
            "id": request.id,
            "pipeline": self.cfg.name,
            "task_version": self.task_version,
            "provider": self.provider,
            "mode": mode,
            "batch_id": batch_id,
            "service_tier": tier,
            "output": output,
            "response": body,
            "usage": usage,
            "tokens": None if counts is None else {"input": counts[0], "output": counts[1]},
            "cost": None if amounts is None else {"paid": amounts[0], "realtime": amounts[1]},
            "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
            "timestamps": timestamps,
        }
        self.results.add(orjson.dumps(record), key=request.key)
        self.metrics.results.inc()
        if amounts is not None:
            self.metrics.cost(mode, *amounts)

    def served(
        self, request: Request, outcome: Served | Failed, *, batch_id: str | None, submitted: float | None, rounds: int
    ) -> None:
        """The record of one event served by a synchronous call (flex, or its standard fallback)."""
        attempts = rounds + outcome.attempts
        if isinstance(outcome, Failed):
            self.dead_letter(request, outcome.reason, outcome.message, attempts=attempts, batch_id=batch_id,
                             error=outcome.error)  # fmt: skip
            return
        timestamps = stamps(request, submitted=submitted or outcome.started, completed=outcome.finished)
        self.result(request, outcome.body, attempts=attempts, batch_id=batch_id, timestamps=timestamps,
                    mode=outcome.mode, tier=outcome.tier)  # fmt: skip

    def dead_letter(
        self, request: Request, reason: ReasonCode, message: str, *, attempts: int,
        batch_id: str | None = None, error: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        letter = DeadLetter(
            id=request.id,
            pipeline=self.cfg.name,
            reason=reason,
            message=message,
            attempts=attempts,
            batch_id=batch_id,
            error=error,
            event=request.event,
            source=SourceRecord.of(request.source),
        )
        self.dead_letters.add(_dumps(letter), key=request.key)
        self.metrics.dead_letter(reason)

    def rejected(self, source: Source, key: bytes | None, value: bytes | None, rejection: Rejection) -> None:
        """A dead letter for input that never became a request, with its original bytes."""
        self.dead_letters.add(_dumps(dead_letter_for(self.cfg, source, value, rejection)), key=key)
        self.metrics.dead_letter(rejection.reason)

    async def flush(self) -> None:
        await self.results.flush()
        await self.dead_letters.flush()
