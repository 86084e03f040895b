"""Anthropic's Message Batches and Messages, through the official ``anthropic`` SDK.

A round's requests travel inside the create call (``requests=[{custom_id, params}]``): there
is no file to upload. Status: ``processing_status`` in_progress -> canceling -> ended, with
request counts. Results stream as JSONL from the batch's ``results_url`` (the SDK resolves
it whether the server gives it relative or absolute), one line per request, in no particular
order, keyed by ``custom_id``:

- ``succeeded``: the message is the result;
- ``errored`` with ``invalid_request_error``: the request is rejected (a dead letter);
  any other error type: another round;
- ``canceled``, ``expired``: not run (and not billed): another round.

A create refused outright (HTTP 400/413) is read as a failed job, the request index it names
(``requests.N...``) as the failing line, so one bad request is isolated, not retried forever.

Adoption: a message batch carries no metadata and cannot be found by a tag, so a batch
created just before a crash cannot be adopted; its window is submitted again and the orphan
batch runs unobserved (its tokens are billed). The window between the create call and its
record is the create call itself, so this costs at most one batch per crash during a create.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anthropic
from anthropic.types.messages import MessageBatch

from providers.base import (
    MISSING,
    BatchRefused,
    Job,
    JobState,
    LineOutcome,
    Provider,
    Reply,
    download_checked,
    guarded,
    iter_jsonl,
    quietly,
)
from streams.errors import ProviderRejected, ProviderUnavailable
from streams.models import Request
from streams.provider_config import ProviderSettings

log = logging.getLogger(__name__)

_STATES: dict[str, JobState] = {"in_progress": "running", "canceling": "ending", "ended": "ended"}
_REQUEST_INDEX = re.compile(r"requests\.(\d+)")
#: Create refusals read as a failed job (the requests' fault), not as a configuration fault.
_REFUSED_STATUSES = frozenset({400, 413, 422})


def job_of(batch: MessageBatch) -> Job:
    counts = batch.request_counts
    total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
    return Job(
        id=batch.id, status=batch.processing_status, state=_STATES.get(batch.processing_status, "running"),
        created_at=batch.created_at.timestamp(), ended_at=batch.ended_at.timestamp() if batch.ended_at else None,
        total=total, succeeded=counts.succeeded, failed=counts.errored + counts.canceled + counts.expired,
    )  # fmt: skip


def classify(line: dict[str, Any] | None) -> LineOutcome:
    """One result line -> a LineOutcome (a missing line is retried, as for every provider)."""
    if line is None:
        return MISSING
    result: dict[str, Any] = line["result"] if isinstance(line.get("result"), dict) else {}
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        return LineOutcome("ok", body=result["message"])
    if kind == "errored":
        error: dict[str, Any] = result["error"] if isinstance(result.get("error"), dict) else {}
        inner: dict[str, Any] = error["error"] if isinstance(error.get("error"), dict) else error
        detail = {"code": inner.get("type"), "message": inner.get("message") or inner.get("type") or "errored"}
        return LineOutcome("fail" if inner.get("type") == "invalid_request_error" else "retry", error=detail)
    if kind in ("canceled", "expired"):
        code = "batch_cancelled" if kind == "canceled" else "batch_expired"
        return LineOutcome("retry", error={"code": code, "message": f"the request was {kind} before it ran"})
    return LineOutcome("retry", error={"code": "malformed_line", "message": f"unexpected result type {kind!r}"})


class AnthropicProvider(Provider):
    """Message Batches and one-off Messages calls."""

    kind: ClassVar[str] = "anthropic"

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        self.can_find = False  # no metadata: a batch cannot be looked up by tag
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.api_key.get_secret_value(), base_url=settings.base_url,
            timeout=settings.timeout, max_retries=settings.max_retries,
        )  # fmt: skip

    async def close(self) -> None:
        await self._client.close()

    # -- batch jobs ---------------------------------------------------------------------
    async def stage(self, requests: list[Request], path: Path) -> None:
        return None  # the create call carries the requests

    async def create(
        self, requests: list[Request], *, staged: str | None, endpoint: str, tag: str, metadata: dict[str, str]
    ) -> Job:
        lines: list[Any] = [{"custom_id": r.custom_id, "params": r.body} for r in requests]
        batches = self._client.with_options(timeout=self.settings.create_timeout, max_retries=0).messages.batches
        try:
            batch = await guarded("create message batch", lambda: batches.create(requests=lines))
        except ProviderRejected as exc:
            if exc.status_code not in _REFUSED_STATUSES:
                raise
            named = {int(m.group(1)) for m in _REQUEST_INDEX.finditer(str(exc))}
            line = next(iter(named)) + 1 if len(named) == 1 and max(named) < len(requests) else None
            errors = [{"code": exc.code or "invalid_request_error", "line": line, "message": str(exc)}]
            raise BatchRefused(str(exc), errors, status_code=exc.status_code) from exc
        return job_of(batch)

    async def retrieve(self, job_id: str) -> Job:
        return job_of(await guarded("retrieve message batch", lambda: self._client.messages.batches.retrieve(job_id)))

    async def cancel(self, job_id: str) -> Job:
        return job_of(await guarded("cancel message batch", lambda: self._client.messages.batches.cancel(job_id)))

    async def results(self, job: Job, workdir: Path) -> dict[str, LineOutcome]:
        path = workdir / f"{job.id}.results.jsonl"

        @asynccontextmanager
        async def stream() -> AsyncIterator[tuple[Any, AsyncIterator[bytes]]]:
            # The SDK resolves the batch's results_url, relative or absolute; the raw bytes go to disk.
            decoder = await self._client.messages.batches.results(job.id)
            try:
                yield decoder.http_response.headers, decoder.http_response.aiter_bytes()
            finally:
                await decoder.close()

        try:
            await download_checked(f"results of {job.id}", stream, path, attempts=self.settings.download_attempts)
            return {
                str(line["custom_id"]): classify(line)
                for line in iter_jsonl(path)
                if isinstance(line, dict) and "custom_id" in line
            }
        finally:
            path.unlink(missing_ok=True)

    async def find(self, tag: str, *, created_after: float) -> Job | None:
        return None

    async def discard_staged(self, staged: str | None) -> None:
        return None

    async def cleanup(self, job: Job) -> None:
        if self.settings.delete_files and job.state == "ended":
            await quietly(f"deleting message batch {job.id}", lambda: self._client.messages.batches.delete(job.id))

    # -- one-off calls --------------------------------------------------------------------
    async def call(self, endpoint: str, body: dict[str, Any], *, flex: bool, timeout: float) -> Reply:
        """One Messages call (Anthropic has no flex tier: ``flex`` is never asked of it)."""
        response = await guarded(endpoint, lambda: self._client.post(
            endpoint, body=body, cast_to=object, options={"timeout": timeout, "max_retries": 0},
        ))  # fmt: skip
        if not isinstance(response, dict):
            raise ProviderUnavailable(f"{endpoint}: the response is not a JSON object")
        usage: dict[str, Any] = response["usage"] if isinstance(response.get("usage"), dict) else {}
        tier = usage.get("service_tier")
        return Reply(response, tier if isinstance(tier, str) and tier else None)
