"""One sealed window in flight, driven from its sealed record to ``done``: what it does next is
the planner's to say (``agents/planner.py``, which draws the window's life); here each step
is carried out.

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
from agents.outcomes import ToBatch
from agents.planner import Ended, Step, after_watch, next_step, plan_round
from agents.retry import retry_forever
from agents.submission import Submission
from providers import Job, LineOutcome
from providers.base import MISSING, Admit, BatchRefused, BatchVanished, ResultsTooLarge, SdkRefused
from streams.errors import ProviderRejected
from streams.models import Request

log = logging.getLogger(__name__)


class InFlightWindow(Submission, FailedRounds):
    """Drives one window from its record to ``done``; ``run`` returns only then (or when cancelled)."""

    async def run(self) -> None:
        try:
            while next_step(self.record) is not Step.FINISHED:
                await retry_forever(self._step, what=self.record.window_id, on_failure=self._lost_track)
        finally:
            self.memory.let_go()
            await self._quota.release()

    def _lost_track(self, _exc: BaseException) -> None:
        self._look_first = True  # we may not know whether the last call took effect

    async def _step(self) -> None:
        """Carry out the step the planner names for the record as it stands."""
        step = next_step(self.record)
        if step is Step.SUBMIT:
            try:
                await self._submit()
            except (BatchRefused, SdkRefused) as exc:  # the requests were refused at create: a failed batch
                await self._refused(exc)
        elif step is Step.WATCH:
            await self._watch()
        elif step is Step.SERVE_FLEX:
            await self._serve_flex()
        self._look_first = False

    # -- submitted: watch, then settle the round ------------------------------------------------
    async def _watch(self) -> None:
        assert self.record.batch_id is not None
        # The round's input file, where the provider's job does not name it (Gemini's).
        staged = self.record.input_file_id
        self._quota.hold(await self.memory.round_bytes(self.record))  # resumed after a restart: its round is enqueued
        self.memory.park()  # the provider may take hours
        hedge_at = self.policy.hedge_at(self.record)
        try:
            # Whether the watch cancelled it is not used: the planner says whether the round is late.
            batch, _ = await self.s.watch.wait(self.record.window_id, self.record.batch_id, hedge_at)
        except BatchVanished as exc:
            await self._vanished(exc)
            return
        # Requests first (a read-back slot bounds how many windows hold theirs at once), then
        # results (each file admitted by the pipeline's budget of result bytes before it is read).
        requests = await self.memory.ensure()
        grant = self.s.held.results.grant()
        try:
            await self._settle_ended(batch, requests, staged, grant.admit)
        finally:
            grant.release()

    async def _settle_ended(self, batch: Job | None, requests: list[Request], staged: str | None, admit: Admit) -> None:
        """Read a watched batch's results (when it ended) and settle the round."""
        ended = after_watch(batch)
        if ended is Ended.HEDGE_ALL:
            await self._save(self.record.hedged(r.source.offset for r in requests))
            return
        assert batch is not None
        if ended is Ended.FAILED:
            await self._failed(batch)
            return
        outcomes: dict[str, LineOutcome] = {}
        if ended is Ended.READ_RESULTS:
            try:
                outcomes = await self.s.client.results(batch, self.s.workdir, admit)
            except ResultsTooLarge as exc:
                await self._too_large(batch, exc)
                return
            except ProviderRejected as exc:
                if exc.status_code != 404:
                    raise
                await self._vanished(BatchVanished(f"the results of batch {self.record.batch_id}: {exc}"))
                return
            self._quota.learn(outcomes, await self.memory.round_bytes(self.record), len(self.record.owed_now))
            await self._quota.release()
        found = [outcomes.get(r.custom_id, MISSING) for r in requests]  # one lookup a request
        lines = [(r.source.offset, outcome) for r, outcome in zip(requests, found, strict=True)]
        plan = plan_round(self.record, lines, policy=self.policy, now=time.time())
        await self.s.tasks.shield(self.record.partition, self._emit_round(batch, found, plan))
        if batch.terminal:
            await self.s.client.cleanup(batch)
            if batch.input_file_id is None:
                await self.s.client.discard_staged(staged)
        else:
            await self.s.client.discard_staged(batch.input_file_id or staged)
        if next_step(plan.record) is Step.SUBMIT:  # a next round, recorded: back off before a retry
            log.info("%s: %d requests to submit again (round %d) in %.1fs", self.record.window_id,
                     len(self.record.offsets or ()), self.record.round, plan.delay)  # fmt: skip
            if plan.delay:
                self.memory.park()
            await asyncio.sleep(plan.delay)

    # -- hedged: flex -----------------------------------------------------------------------------
    async def _serve_flex(self) -> None:
        """Serve what a late batch still owes through flex (then the fallback), then finish."""
        requests = await self.memory.ensure()
        record, flex, unit = self.record, self.s.flex, self._unit()
        deadline = time.time() + self.s.cfg.flex.budget

        async def serve(request: Request) -> None:
            async with flex.slots:
                outcome = await flex.serve(request, deadline=deadline, allow_batch=False)
            assert not isinstance(outcome, ToBatch)
            unit.served(request, outcome, batch_id=record.batch_id, submitted=record.first_submitted_at,
                        rounds=record.attempts)  # fmt: skip

        log.info("%s: serving %d unfinished requests through flex", record.window_id, len(requests))
        await asyncio.gather(*(serve(r) for r in requests))
        await self._save(record.done(), unit)
        await self.s.client.discard_staged(record.input_file_id)
