"""A sealed window round's step: adopt the batch an earlier create call made, or create one
(part of :class:`agents.inflight.InFlightWindow`)."""

from __future__ import annotations

import asyncio
import logging
import time

from agents.adoption import find_created
from agents.window_steps import WindowSteps
from providers import Job
from providers.base import META_PIPELINE
from streams.errors import ProviderBackpressure, ProviderRejected
from streams.models import Request

log = logging.getLogger(__name__)


class Submission(WindowSteps):
    """Submits a ``sealed`` window's round and records it ``submitted``."""

    async def _submit(self) -> None:
        """Adopt or create the round's batch. A refusal at create (``BatchRefused``,
        ``SdkRefused``) propagates with the round's quota released: it is a failed batch."""
        job: Job | None = None
        if self._look_first:
            requests = await self.memory.ensure()
            job = await find_created(self.record, self.s.client, self.s.provider, len(requests))
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
            job = await self._create(await self.memory.ensure())
        self._quota.created()
        await self._save(self.record.submitted(job.id, time.time()))
        self.s.metrics.batches_submitted.inc()

    async def _create(self, requests: list[Request]) -> Job:
        record = self.record
        # In offset order, so line numbers map back after a restart.
        requests.sort(key=lambda r: r.source.offset)
        # A create retried after an error reuses the round's file (the batch may exist and use it).
        path = self.s.workdir / f"{record.window_id}.r{record.round}.jsonl"
        staged = record.input_file_id or await self.s.client.stage(requests, path)
        metadata = {**self.s.cfg.metadata, META_PIPELINE: self.s.cfg.name}
        attempt = 0
        while True:
            # Recorded before the call: whoever resumes this window knows a batch may exist.
            await self._save(self.record.create_started(time.time(), staged))
            create = self.s.client.create(requests, staged=staged, endpoint=record.endpoint, tag=record.tag,
                                          metadata=metadata)  # fmt: skip
            try:
                return await self.s.tasks.shield(record.partition, create)
            except ProviderBackpressure as exc:
                attempt += 1
                delay = exc.retry_after or self.policy.backoff(attempt)
                self.s.metrics.backpressure.inc()
                log.info("%s: provider refused the batch (%s); waiting %.1fs", record.window_id, exc, delay)
                self.memory.park()
                await asyncio.sleep(delay)
                requests = await self.memory.ensure()
            except ProviderRejected:
                await self._quota.release()
                # Refused outright: no batch exists and none uses the file. Upload afresh next time.
                await self._save(self.record.model_copy(update={"input_file_id": None, "create_started_at": None}))
                await self.s.client.discard_staged(staged)
                raise
