"""One sealed window in flight: its life from the sealed record to ``done``.

    sealed --submit or adopt--> submitted --poll--> ended at the provider
        completed / expired / cancelled: emit what succeeded, then
            done, or sealed again (round + 1) for what may be retried
        failed (token_limit_exceeded): sealed again, same round, after a backoff
        failed (otherwise): every event a ``batch_failed`` dead letter, done
        late (``max_batch_latency``): cancel, emit the finished part, hedged --flex--> done

Every transition is written to the state topic (through the ledger) before the next step
starts, so whoever runs the window next (this worker after a failed step, a restarted
worker, the partition's next owner) resumes from the last record.

Crash points, and what happens at each:

1. *Window open, nothing submitted* (``agents/batches.py``). Its events are not finished,
   so the committed offset stays before them; after a crash they are read and windowed again.
2. *Window sealed.* The ``sealed`` record (the intent, with the window's offset range) is
   confirmed written **before** the window's events are finished. From here the window is
   the state topic's responsibility, not the input offset's.
3. *Uploaded, or batch created but not recorded.* The batch's metadata carries
   ``batchstream_window = <window id>#r<round>``, and the record notes when the create call
   started (written before the call). A restarted owner that finds a ``sealed`` record lists
   recent batches for that tag and adopts the batch it finds. If a create call had started,
   it keeps looking until ``provider.create_timeout`` after that start (a create call never
   outlives it: it is abandoned then, without SDK retries), so a call still in flight at the
   provider when its owner died is adopted rather than duplicated. A create call is a
   shielded step: a worker that loses the partition waits for it to return. Anthropic's
   batches carry no metadata: the tag travels as a mark in each custom id instead, and
   running candidates are waited for until they can be told apart
   (``providers/anthropic/client.py``). A server that cannot list batches gets the round again,
   with a warning: an orphan batch may run, billed and never read.
4. *Submitted, offsets not yet committed.* On replay the events fall inside a recorded
   window's range (same endpoint and model) and are skipped.
5. *Provider finished, output not (fully) downloaded.* Downloads stream to a temporary file
   and are checked (length, every line parses); a cut-off download is retried, and a restart
   simply downloads again.
6. *Results half emitted.* The record turns ``done`` (or moves to its next round) only after
   every result and dead letter of the round is flushed; emission and that write are one
   shielded step. A crash in between re-emits the round's records on restart; those
   duplicates carry the same ``id`` and ``task_version``: consumers dedupe on that pair.
7. *Rebalance.* Windows are per input partition and their records live in the same
   partition of the state topic, so whoever is assigned partition P reloads P's records and
   resumes P's windows, re-reading their events from the input topic by offset.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agents.failed_rounds import FailedRounds
from agents.outbox import Outbox, stamps
from agents.outcomes import ToBatch
from agents.quota import RoundQuota
from agents.retry import backoff, retry_forever
from agents.rounds import RoundRequests, reread_round
from agents.services import WindowServices
from providers import Job, LineOutcome
from providers.base import (
    META_PIPELINE,
    MISSING,
    Admit,
    BatchRefused,
    BatchVanished,
    Lookup,
    ResultsTooLarge,
    SdkRefused,
)
from streams.errors import ProviderBackpressure, ProviderRejected
from streams.models import Request
from streams.records import WindowRecord

log = logging.getLogger(__name__)

#: How far before a window was sealed to look for its batch when adopting one.
ADOPTION_LOOKBACK = 300.0


class InFlightWindow(FailedRounds):
    """Drives one window from its record to ``done``; ``run`` returns only then (or when cancelled)."""

    def __init__(self, record: WindowRecord, requests: list[Request] | None, services: WindowServices) -> None:
        self.record = record
        self.s = services
        self.cfg = services.cfg
        #: Whether a batch may exist that this worker does not know of (restored, or a step failed).
        self._look_first = requests is None
        self._quota = RoundQuota(services.quotas.of(record.model), services.estimate, record.window_id)
        #: The window's requests in memory, read back from the input topic when let go.
        self.memory = RoundRequests(requests, services.held, self._reread)

    async def run(self) -> None:
        try:
            while self.record.status != "done":
                await retry_forever(self._step, what=self.record.window_id, on_failure=self._lost_track)
        finally:
            self.memory.let_go()
            await self._quota.release()

    @property
    def requests(self) -> list[Request] | None:
        """The current round's requests; None when not in memory (restored, or let go while waiting)."""
        return self.memory.current

    def _lost_track(self, _exc: BaseException) -> None:
        self._look_first = True  # we may not know whether the last call took effect

    async def _step(self) -> None:
        if self.record.status == "sealed":
            await self._submit()
        elif self.record.status == "hedged":
            await self.memory.ensure()
            await self._hedge()
        else:
            await self._finish()
        self._look_first = False

    def _unit(self) -> Outbox:
        """An outbox unit for this window's records: its results carry the ``task_version`` the
        window was sealed with, whatever the pipeline's configuration says by then."""
        unit = self.s.outbox.unit()
        version = (self.record.task or {}).get("task_version")
        if isinstance(version, str):
            unit.task_version = version
        return unit

    async def _save(self, record: WindowRecord, unit: Outbox | None = None) -> None:
        """Write the window's next record with the unit's records (one transaction under ``exactly_once``)."""
        self.record = await self.s.ledger.save(record, unit)
        if record.status == "done":
            self.memory.let_go()
            self.s.metrics.batches_done.inc()
        elif record.offsets is not None:
            self.memory.follow(record.offsets)

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, initial=self.cfg.retry.backoff_initial, maximum=self.cfg.retry.backoff_max)

    # -- submit or adopt ---------------------------------------------------------------------
    async def _reread(self) -> list[Request]:
        return await reread_round(self.record, self.cfg, self.s.reader, self.s.outbox, self.s.ledger,
                                  self.memory.ended)  # fmt: skip

    async def _submit(self) -> None:
        job: Job | None = None
        if self._look_first:
            await self.memory.ensure()
            job = await self._find_created()
            if job is not None:
                log.info("%s: adopted batch %s created before a restart", self.record.window_id, job.id)
        if job is not None:
            self._quota.hold(await self.memory.round_bytes(self.record))
        else:
            nbytes = await self.memory.round_bytes(self.record)
            if self._quota.gated:
                self.memory.park()  # the quota may keep it waiting
            if await self._quota.acquire(nbytes) > 0.5:
                self.s.metrics.backpressure.inc()
            await self.memory.ensure()
            try:
                job = await self._create()
            except (BatchRefused, SdkRefused) as exc:  # the requests were refused at create: a failed batch
                await self._quota.release()
                errors = exc.errors if isinstance(exc, BatchRefused) else [
                    {"code": "sdk_refused", "line": None, "message": str(exc)}]  # fmt: skip
                refused = Job(id="", status="refused", state="failed", created_at=time.time(), errors=errors)
                hedge_at = self._hedge_at()
                await self._failed(refused, late=hedge_at is not None and time.time() >= hedge_at)
                return
        self._quota.created()
        await self._save(self.record.submitted(job.id, time.time()))
        self.s.metrics.batches_submitted.inc()

    async def _find_created(self) -> Job | None:
        """The batch of this window round, if a create call (ours or a previous owner's) made it.

        A create call recorded as started may still be in flight at the provider (its owner
        crashed or lost the partition mid-call): until ``create_timeout`` after it started,
        keep looking before concluding that no batch exists; and while the provider holds
        batches that may be the round's but cannot be told apart yet (``undecided``), wait for
        them. Where batches cannot be looked up at all (a server that cannot list), the round is
        submitted again.
        """
        assert self.requests is not None
        record, client, count = self.record, self.s.client, len(self.requests)

        async def look() -> Lookup:
            return await client.find(record.tag, created_after=record.sealed_at - ADOPTION_LOOKBACK,
                                     create_started=record.create_started_at, count=count)  # fmt: skip

        found = await look()
        if found.job is not None or record.create_started_at is None:
            return found.job
        if not client.can_find:
            log.warning("%s: a create call started before a restart may have made a batch, which %s cannot look "
                        "up; submitting again (such an orphan batch runs unobserved and is billed)",
                        record.window_id, client.name)  # fmt: skip
            return None
        settle_at = record.create_started_at + self.s.provider.create_timeout
        if found.undecided or time.time() < settle_at:
            log.info("%s: a create call may have made a batch; looking for it before submitting again "
                     "(%d candidates still running)", record.window_id, found.undecided)  # fmt: skip
        while found.job is None and (found.undecided or time.time() < settle_at):
            pause = self.s.provider.poll_interval
            await asyncio.sleep(pause if found.undecided else min(pause, max(0.05, settle_at - time.time())))
            found = await look()
        return found.job

    async def _create(self) -> Job:
        assert self.requests is not None
        record = self.record
        # In offset order, so line numbers map back after a restart.
        self.requests.sort(key=lambda r: r.source.offset)
        # A create retried after an error reuses the round's file (the batch may exist and use it).
        path = self.s.workdir / f"{record.window_id}.r{record.round}.jsonl"
        staged = record.input_file_id or await self.s.client.stage(self.requests, path)
        metadata = {**self.cfg.metadata, META_PIPELINE: self.cfg.name}
        attempt = 0
        while True:
            # Recorded before the call: whoever resumes this window knows a batch may exist.
            await self._save(self.record.create_started(time.time(), staged))
            create = self.s.client.create(self.requests, staged=staged, endpoint=record.endpoint, tag=record.tag,
                                          metadata=metadata)  # fmt: skip
            try:
                return await self.s.tasks.shield(record.partition, create)
            except ProviderBackpressure as exc:
                attempt += 1
                delay = exc.retry_after or self._backoff(attempt)
                self.s.metrics.backpressure.inc()
                log.info("%s: provider refused the batch (%s); waiting %.1fs", record.window_id, exc, delay)
                self.memory.park()
                await asyncio.sleep(delay)
                await self.memory.ensure()
            except ProviderRejected:
                await self._quota.release()
                # Refused outright: no batch exists and none uses the file. Upload afresh next time.
                await self._save(self.record.model_copy(update={"input_file_id": None, "create_started_at": None}))
                await self.s.client.discard_staged(staged)
                raise

    # -- poll, hedge ---------------------------------------------------------------------------
    def _hedge_at(self) -> float | None:
        if self.cfg.max_batch_latency is None or self.record.first_submitted_at is None:
            return None
        return self.record.first_submitted_at + self.cfg.max_batch_latency

    async def _hedge(self) -> None:
        """Serve what a late batch still owes through flex (then the fallback), then finish."""
        assert self.requests is not None
        record, flex = self.record, self.s.flex
        deadline = time.time() + self.cfg.flex.budget

        unit = self._unit()

        async def serve(request: Request) -> None:
            async with flex.slots:
                outcome = await flex.serve(request, deadline=deadline, allow_batch=False)
            assert not isinstance(outcome, ToBatch)
            unit.served(request, outcome, batch_id=record.batch_id, submitted=record.first_submitted_at,
                        rounds=record.attempts)  # fmt: skip

        log.info("%s: serving %d unfinished requests through flex", record.window_id, len(self.requests))
        await asyncio.gather(*(serve(r) for r in self.requests))
        await self._save(record.done(), unit)
        await self.s.client.discard_staged(record.input_file_id)

    # -- settle ---------------------------------------------------------------------------------
    async def _finish(self) -> None:
        assert self.record.batch_id is not None
        # The round's input file, where the provider's job does not name it (Gemini's).
        staged = self.record.input_file_id
        self._quota.hold(await self.memory.round_bytes(self.record))  # resumed after a restart: its round is enqueued
        self.memory.park()  # the provider may take hours
        try:
            batch, hedged = await self.s.watch.wait(self.record.window_id, self.record.batch_id, self._hedge_at())
        except BatchVanished as exc:
            await self._vanished(exc)
            return
        # Requests first (a read-back slot bounds how many windows hold theirs at once), then
        # results (each file admitted by the pipeline's budget of result bytes before it is read).
        requests = await self.memory.ensure()
        grant = self.s.held.results.grant()
        try:
            await self._settle_ended(batch, hedged, requests, staged, grant.admit)
        finally:
            grant.release()

    async def _settle_ended(
        self, batch: Job | None, hedged: bool, requests: list[Request], staged: str | None, admit: Admit
    ) -> None:
        """Read a watched batch's results (when it ended) and settle the round."""
        # A batch still cancelling after cancel_wait gives nothing: all of it goes flex.
        terminal = batch is not None and batch.state != "failed" and batch.terminal
        try:
            outcomes = await self.s.client.results(batch, self.s.workdir, admit) if terminal and batch else {}
        except ResultsTooLarge as exc:
            assert batch is not None
            await self._too_large(batch, exc)
            return
        except ProviderRejected as exc:
            if exc.status_code != 404:
                raise
            await self._vanished(BatchVanished(f"the results of batch {self.record.batch_id}: {exc}"))
            return
        if terminal:
            self._quota.learn(outcomes, await self.memory.round_bytes(self.record), len(self.record.owed_now))
            await self._quota.release()
        if batch is None:  # late, and its status unreadable: all of it goes flex
            await self._save(self.record.hedged(r.source.offset for r in requests))
            return
        if batch.state == "failed":
            await self._failed(batch, late=hedged)
            return
        attempts = self.record.attempts
        await self.s.tasks.shield(self.record.partition, self._settle(batch, outcomes, hedged))
        if batch.terminal:
            await self.s.client.cleanup(batch)
            if batch.input_file_id is None:
                await self.s.client.discard_staged(staged)
        else:
            await self.s.client.discard_staged(batch.input_file_id or staged)
        if self.record.status == "sealed":  # a next round, recorded: back off before a retry
            delay = self._backoff(attempts) if self.record.attempts > attempts else 0.0
            log.info("%s: %d requests to submit again (round %d) in %.1fs",
                     self.record.window_id, len(self.record.offsets or ()), self.record.round, delay)  # fmt: skip
            if delay:
                self.memory.park()
            await asyncio.sleep(delay)

    async def _too_large(self, batch: Job, exc: ResultsTooLarge) -> None:
        """Results too large to download: every request of the round ends as a dead letter naming
        the setting (they ran and were billed; raising the cap and replaying them runs them again)."""
        assert self.requests is not None
        await self._quota.release()
        log.error("%s: %s; the round's %d requests end as batch_results_too_large dead letters",
                  self.record.window_id, exc, len(self.requests))  # fmt: skip
        unit = self._unit()
        for request in self.requests:
            unit.dead_letter(request, "batch_results_too_large", str(exc), attempts=self.record.attempts,
                             batch_id=batch.id)  # fmt: skip
        await self.s.tasks.shield(self.record.partition, self._save(self.record.done(), unit))
        await self.s.client.cleanup(batch)

    async def _settle(self, batch: Job, outcomes: dict[str, LineOutcome], hedged: bool) -> None:
        """Emit a finished batch's records, then record what comes next: done, a next round, or hedged."""
        assert self.requests is not None
        record, outbox = self.record, self._unit()
        timestamps = stamps_of(batch)
        retry: list[Request] = []
        for request in self.requests:
            outcome = outcomes.get(request.custom_id, MISSING)
            if outcome.kind == "ok":
                assert outcome.body is not None
                outbox.result(request, outcome.body, attempts=record.attempts, batch_id=batch.id,
                              timestamps=stamps(request, **timestamps))  # fmt: skip
            elif outcome.kind == "retry" and (hedged or record.attempts < self.cfg.retry.attempts):
                retry.append(request)
            elif outcome.kind == "retry":
                outbox.dead_letter(request, "retries_exhausted", outcome.message, attempts=record.attempts,
                                   batch_id=batch.id, error=outcome.error)  # fmt: skip
            else:
                outbox.dead_letter(request, "provider_rejected", outcome.message, attempts=record.attempts,
                                   batch_id=batch.id, error=outcome.error)  # fmt: skip
        retried = (r.source.offset for r in retry)
        if hedged and (retry or record.deferred):
            await self._save(record.hedged(retried), outbox)
        else:
            await self._save(record.after_round(retried, time.time()), outbox)


def stamps_of(batch: Job) -> dict[str, float]:
    """When the provider says a batch was submitted and ended."""
    return {"submitted": batch.created_at, "completed": batch.ended_at or time.time()}
