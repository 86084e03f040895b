"""The outbox: every result and dead letter is built here, and writing them is the gate.

No event is finished (its offset allowed into a commit), and no window record moves on,
before the records it produced are written. Records are built into a *unit*
(:meth:`Outbox.unit`), handed to the ledger with the state they settle
(``Ledger.save`` / ``Ledger.mark``, ``agents/state.py``):

- ``at_least_once``: the unit is a draft whose records join the pipeline's sinks when it is
  flushed (the broker confirmed every record added before, ``sinks/base.py``), before the
  state record is written; a failed flush takes them back out, so a retry writes each once;
- ``exactly_once``: the unit is a draft of its own, written in one Kafka transaction with
  the state record or the events' served marks.

No record larger than its topic takes is ever added (``sinks/limits.py``): a result that does
not fit is a ``result_too_large`` dead letter, and a dead letter whose original does not fit
carries a reference to it instead (``streams/letters.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import orjson

from agents.metrics import PipelineMetrics
from agents.outcomes import Failed, Served, extract_output
from sinks import MemorySink, Sink
from sinks.base import Outgoing
from sinks.limits import SizeRefused
from streams.config import PipelineSettings
from streams.errors import InvalidOutputError
from streams.letters import DeadLetter, dead_letter_for, encode_dead_letter
from streams.models import ReasonCode, Rejection, Request, Source, SourceRecord, task_version, token_counts
from streams.pricing import Pricing

#: Backoff while a record cannot be written (the broker is down or restarting).
WRITE_RETRY_INITIAL = 0.5
WRITE_RETRY_MAX = 30.0


def stamps(request: Request, *, submitted: float | None, completed: float | None) -> dict[str, float | None]:
    """A result's ``timestamps`` (``streams.models.Timestamps``)."""
    received = request.source.timestamp_ms / 1000 if request.source.timestamp_ms else None
    return {"received": received, "submitted": submitted, "completed": completed}


class Outbox:
    """Results and dead letters of one pipeline, through its two sinks."""

    def __init__(
        self, cfg: PipelineSettings, results: Sink, dead_letters: Sink, metrics: PipelineMetrics,
        *, provider: str | None = None, pricing: Pricing | None = None, transactional: bool = False,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        #: Prices of the models, for each result's ``cost`` (the kinds' list prices unless given).
        self.pricing = pricing or Pricing(kinds=cfg.kinds.values())
        #: The name of the provider serving the pipeline, stamped on every result.
        self.provider = provider
        self.task_version = task_version(cfg)
        self.results = results
        self.dead_letters = dead_letters
        self.metrics = metrics
        #: ``exactly_once``: units are drafts, written in transactions by the ledger.
        self.transactional = transactional
        #: The largest record each topic takes: nothing larger is ever added (``sinks/limits.py``).
        self.limits = results.limits

    def unit(self) -> Outbox:
        """Where the records of one atomic write gather (see the module docstring): a draft,
        whose records reach the pipeline's sinks only when it is flushed or staged."""
        unit = copy.copy(self)
        unit.results, unit.dead_letters = self.results.draft(), self.dead_letters.draft()
        unit._shared = self
        return unit

    _shared: Outbox | None = None

    def staged(self) -> list[Outgoing]:
        """A draft unit's records, for its transaction (each time the same while the topics'
        limits hold: a failed write is retried; after a size refusal, what no longer fits is
        staged as its dead letter)."""
        assert isinstance(self.results, MemorySink) and isinstance(self.dead_letters, MemorySink)
        self.rescreen()
        return [*self.results.staged(), *self.dead_letters.staged()]

    # -- sizes --------------------------------------------------------------------------------
    def _add_result(self, value: bytes, key: bytes | None, too_large: Callable[[str], None]) -> None:
        limit = self.results.max_value(key)
        if len(value) > limit:
            too_large(f"the result is {len(value)} bytes; the output topic {self.results.topic!r} takes records "
                      f"of up to {limit} bytes (its max.message.bytes)")  # fmt: skip
            return
        self.results.add(value, key=key)

    def _add_letter(self, letter: DeadLetter, original: bytes | None, key: bytes | None) -> None:
        limit = self.dead_letters.max_value(key)
        self.dead_letters.add(encode_dead_letter(letter, original, limit), key=key)
        self.metrics.dead_letter(letter.reason)

    async def refused(self, exc: SizeRefused) -> None:
        """The broker refused a write for its size: learn the topics' limits again, and re-screen
        what waits to be written (so the retried write carries only records that fit)."""
        await self.limits.after_refusal(exc)
        self.rescreen()

    def rescreen(self) -> None:
        """Records added before a limit was lowered that no longer fit: a result becomes a
        ``result_too_large`` dead letter, a dead letter its reference form."""
        output, dead = self.results, self.dead_letters
        results, letters = output.pending, dead.pending
        if all(output.fits(k, v) for k, v in results) and all(dead.fits(k, v) for k, v in letters):
            return
        kept_results = [(k, v) for k, v in results if output.fits(k, v)]
        moved = [(k, v) for k, v in results if not output.fits(k, v)]
        kept_letters = []
        for key, value in letters:
            if dead.fits(key, value):
                kept_letters.append((key, value))
            else:
                letter = DeadLetter.model_validate_json(value)
                kept_letters.append((key, encode_dead_letter(letter, None, dead.max_value(key))))
        results[:] = kept_results
        letters[:] = kept_letters
        for key, value in moved:
            self._add_letter(result_too_large(value, output.topic, output.max_value(key)), None, key)

    def result(
        self, request: Request, body: dict[str, Any], *, attempts: int, batch_id: str | None,
        timestamps: dict[str, float | None], mode: Literal["batch", "flex", "standard"] = "batch",
        tier: str | None = "batch",
    ) -> None:  # fmt: skip
        """A result; an ``invalid_output`` dead letter when the output is not what the request
        asked for (or a result cannot be built from the response), a ``result_too_large`` one
        when the result does not fit the output topic's records."""
        try:
            self._result(request, body, attempts=attempts, batch_id=batch_id, timestamps=timestamps, mode=mode,
                         tier=tier)  # fmt: skip
        except InvalidOutputError as exc:
            self.dead_letter(request, "invalid_output", str(exc), attempts=attempts, batch_id=batch_id,
                             error={"response": body})  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a response no code foresaw is one event's dead letter
            self.dead_letter(request, "invalid_output", f"no result could be built from the response: "
                             f"{type(exc).__name__}: {exc}", attempts=attempts, batch_id=batch_id,
                             error={"response": body})  # fmt: skip

    def _result(
        self, request: Request, body: dict[str, Any], *, attempts: int, batch_id: str | None,
        timestamps: dict[str, float | None], mode: Literal["batch", "flex", "standard"], tier: str | None,
    ) -> None:  # fmt: skip
        output = extract_output(self.cfg.format_of(request.endpoint), body, request.wants_json)
        keys = self.cfg.kind_facts.usage
        usage = keys.of(body)
        counts = token_counts(usage, keys)
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
        try:
            value = orjson.dumps(record)
        except orjson.JSONEncodeError as exc:
            raise InvalidOutputError(f"the result cannot be written as JSON: {exc}") from exc
        written = True

        def too_large(why: str) -> None:
            nonlocal written
            written = False
            self.dead_letter(request, "result_too_large", why, attempts=attempts, batch_id=batch_id)

        self._add_result(value, request.key, too_large)
        if not written:
            return
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
        self._add_letter(letter, None, request.key)

    def rejected(self, source: Source, key: bytes | None, value: bytes | None, rejection: Rejection) -> None:
        """A dead letter for input that never became a request, with its original bytes (or,
        when they cannot fit, a reference to them)."""
        self._add_letter(dead_letter_for(self.cfg, source, value, rejection), value, key)

    async def flush(self) -> None:
        """Write what was added; return once the broker has it all, or raise.

        A draft (``at_least_once``) writes its records through the pipeline's sinks, whose
        writes are shared by every writer waiting at the time (group commit). A failed write
        keeps none of them in the sinks: the draft keeps them until written, so a retry (of this
        flush, or of the step that built the draft) writes each of them again, once."""
        shared = self._shared
        if shared is None:
            try:
                await self.results.flush()
                await self.dead_letters.flush()
            except SizeRefused as exc:
                await self.refused(exc)
                raise
            return
        self.rescreen()
        try:
            if self.results.pending:
                await shared.results.write(list(self.results.pending))
                self.results.pending.clear()  # written: a retry of this flush writes only the rest
            if self.dead_letters.pending:
                await shared.dead_letters.write(list(self.dead_letters.pending))
                self.dead_letters.pending.clear()
        except SizeRefused as exc:
            await self.limits.after_refusal(exc)  # the retry re-screens against the new limits
            raise


def result_too_large(value: bytes, topic: str, limit: int) -> DeadLetter:
    """The dead letter of a result already built that no longer fits its topic (a limit lowered)."""
    result = orjson.loads(value)
    return DeadLetter(
        id=result["id"], pipeline=result["pipeline"], reason="result_too_large",
        message=f"the result is {len(value)} bytes; the output topic {topic!r} takes records of up to {limit} bytes "
        "(its max.message.bytes)",
        attempts=0, batch_id=result.get("batch_id"), source=SourceRecord.model_validate(result["source"]),
    )  # fmt: skip
