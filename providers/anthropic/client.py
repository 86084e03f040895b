"""Anthropic's Message Batches and Messages, through the official ``anthropic`` SDK.

A round's requests travel inside the create call (``requests=[{custom_id, params}]``): there
is no file to upload. Status: ``processing_status`` in_progress -> canceling -> ended, with
request counts. Results stream as JSONL from the batch's ``results_url``, relative or absolute
but only on the configured origin (the key goes with the request: a URL elsewhere is never
followed, the documented path is read instead), one line per request, in no particular order,
keyed by ``custom_id``:

- ``succeeded``: the message is the result;
- ``errored`` with ``invalid_request_error``: the request is rejected (a dead letter);
  any other error type: another round;
- ``canceled``, ``expired``: not run (and not billed): another round.

A create refused outright is read by what it names: a 400 naming requests (``requests.N...``)
rejects those requests and resubmits the rest; a 413 (too large) bisects the round; a 400
naming none (an account problem, such as a low credit balance) is retried with backoff, so
nothing is dead-lettered for it.

Adoption: a message batch carries no metadata, so each request's custom id carries a mark of
the window round (``<mark>_<partition>-<offset>``, within ``^[a-zA-Z0-9_-]{1,64}$``). After a
create call whose outcome is unknown (a crash, a timeout, a cut connection, a 5xx), the round's
next owner lists the batches created around that call with the round's request count: an
ended one is checked by the mark on its first result line; running ones are waited for, since
their results cannot be read yet. Only a batch bearing the round's mark is adopted; none found,
the round is submitted again. A window whose create call was cut short thus waits, at worst,
about one batch's duration before it is submitted, instead of paying for its requests twice.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import httpx
import orjson
from anthropic.types.messages import MessageBatch

from providers.anthropic.outcomes import classify
from providers.base import (
    Admit,
    BatchRefused,
    Job,
    JobState,
    LineOutcome,
    Lookup,
    Provider,
    Reply,
    admit_all,
    guarded,
    quietly,
)
from providers.downloads import download_checked, keyed, local_file
from streams.errors import ProviderError, ProviderRejected, ProviderUnavailable
from streams.models import Request
from streams.provider_config import ProviderSettings

log = logging.getLogger(__name__)

#: The anthropic SDK's errors and transport errors, mapped at the boundary.
ERRORS: tuple[type[Exception], ...] = (anthropic.AnthropicError, httpx.HTTPError)

_STATES: dict[str, JobState] = {"in_progress": "running", "canceling": "ending", "ended": "ended"}
_REQUEST_INDEX = re.compile(r"requests\.(\d+)")
#: Clock difference tolerated between the worker and the provider when matching creation times.
CLOCK_SKEW = 30.0


#: A candidate whose first result line could not be read now (look again later).
_UNREAD = object()


def mark_of(tag: str) -> str:
    """The window round's mark, carried in each of its custom ids."""
    return hashlib.sha256(tag.encode()).hexdigest()[:16]


def _unmarked(custom_id: str) -> str:
    return custom_id.partition("_")[2] or custom_id


def job_of(batch: MessageBatch) -> Job:
    counts = batch.request_counts
    total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
    return Job(
        id=batch.id, status=batch.processing_status, state=_STATES.get(batch.processing_status, "running"),
        created_at=batch.created_at.timestamp(), ended_at=batch.ended_at.timestamp() if batch.ended_at else None,
        total=total, succeeded=counts.succeeded, failed=counts.errored + counts.canceled + counts.expired,
    )  # fmt: skip


class AnthropicProvider(Provider):
    """Message Batches and one-off Messages calls."""

    kind: ClassVar[str] = "anthropic"

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        #: Marks read from ended batches' first result lines, by batch id (bounded).
        self._marks: dict[str, str | None] = {}
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.api_key.get_secret_value(), base_url=settings.base_url,
            timeout=settings.timeout, max_retries=settings.max_retries,
            http_client=anthropic.DefaultAioHttpClient(),  # as the OpenAI provider does, for the same reason
        )  # fmt: skip

    async def close(self) -> None:
        await self._client.close()

    # -- batch jobs ---------------------------------------------------------------------
    async def stage(self, requests: list[Request], path: Path) -> None:
        return None  # the create call carries the requests

    async def create(
        self, requests: list[Request], *, staged: str | None, endpoint: str, tag: str, metadata: dict[str, str]
    ) -> Job:
        mark = mark_of(tag)
        lines: list[Any] = [{"custom_id": f"{mark}_{r.custom_id}", "params": r.body} for r in requests]
        batches = self._client.with_options(timeout=self.settings.create_timeout, max_retries=0).messages.batches
        try:
            batch = await guarded("create message batch", lambda: batches.create(requests=lines), ERRORS,
                                  within=self.settings.create_timeout)  # fmt: skip
        except ProviderRejected as exc:
            named = sorted({int(m.group(1)) for m in _REQUEST_INDEX.finditer(str(exc))})
            if exc.status_code == 413:
                raise BatchRefused(str(exc), [{"code": exc.code, "line": None, "message": str(exc)}],
                                   status_code=413) from exc  # fmt: skip
            if exc.status_code in (400, 422) and named and named[-1] < len(requests):
                errors = [{"code": exc.code or "invalid_request_error", "line": i + 1, "message": str(exc)}
                          for i in named]  # fmt: skip
                raise BatchRefused(str(exc), errors, status_code=exc.status_code) from exc
            raise  # names no request: not the requests' fault; the window retries with backoff
        return job_of(batch)

    async def retrieve(self, job_id: str) -> Job:
        batches = self._client.messages.batches
        return job_of(await guarded("retrieve message batch", lambda: batches.retrieve(job_id), ERRORS))

    async def cancel(self, job_id: str) -> Job:
        batches = self._client.messages.batches
        return job_of(await guarded("cancel message batch", lambda: batches.cancel(job_id), ERRORS))

    async def results(self, job: Job, workdir: Path, admit: Admit = admit_all) -> dict[str, LineOutcome]:
        path = local_file(workdir, job.id, ".results.jsonl")

        def stream() -> Any:
            return self._open_results(job.id)

        def parse(lines: Iterator[Any]) -> dict[str, LineOutcome]:
            return {_unmarked(custom_id): outcome for custom_id, outcome in keyed(lines, "custom_id", classify).items()}

        try:
            return await download_checked(f"results of {job.id}", stream, path, parse,
                                          attempts=self.settings.download_attempts, cap=self.settings.max_result_bytes,
                                          admit=admit, errors=ERRORS)  # fmt: skip
        finally:
            path.unlink(missing_ok=True)

    @asynccontextmanager
    async def _open_results(self, batch_id: str) -> AsyncIterator[tuple[Any, AsyncIterator[bytes]]]:
        """An ended batch's results as (headers, chunks of raw bytes), read with the key only from
        the configured ``base_url``'s origin (:meth:`results_url`); redirects are not followed."""
        batch = await self._client.messages.batches.retrieve(batch_id)
        url = self.results_url(batch_id, batch.results_url)
        headers = {k: v for k, v in self._client.default_headers.items() if isinstance(v, str)}
        async with (
            httpx.AsyncClient(timeout=self.settings.timeout, follow_redirects=False) as http,
            http.stream("GET", url, headers={**headers, "Accept": "application/binary"}) as response,
        ):
            if response.status_code >= 300:
                status = response.status_code
                kind = ProviderUnavailable if status >= 500 or status == 429 else ProviderRejected
                raise kind(f"results of {batch_id}: HTTP {status}", status_code=status)
            yield response.headers, response.aiter_bytes()

    def results_url(self, batch_id: str, given: str | None) -> str:
        """Where a batch's results are read: its ``results_url`` when it is on the configured
        origin (scheme, host and port of ``base_url``) or relative to it; otherwise, and when
        the batch names none, the documented path on that origin. The key is sent with the
        request, so a URL on another origin (handed out by a gateway, a proxy or a compatible
        server) is never followed: only its origin is logged."""
        base = httpx.URL(str(self._client.base_url))
        documented = f"{str(base).rstrip('/')}/v1/messages/batches/{batch_id}/results"
        if not given:
            return documented
        target = base.join(given)
        if (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port):
            return str(target)
        log.warning("message batch %s names results on another origin (%s://%s%s); reading them from the "
                    "configured origin instead: the key is never sent elsewhere", batch_id, target.scheme,
                    target.host, f":{target.port}" if target.port else "")  # fmt: skip
        return documented

    async def find(self, tag: str, *, created_after: float, create_started: float | None, count: int) -> Lookup:
        """The round's batch among those created around its create call with its request count.

        An ended candidate is ours when its first result line bears the round's mark; a running
        one cannot be told yet (``undecided``: the caller waits and looks again).
        """
        if create_started is None or not self.can_find:
            return Lookup()
        start, end = create_started - CLOCK_SKEW, create_started + self.settings.create_timeout + CLOCK_SKEW

        async def candidates() -> list[Job]:
            found = []
            async for batch in self._client.messages.batches.list(limit=100):
                created = batch.created_at.timestamp()
                if created < start:
                    break  # listed newest first
                job = job_of(batch)
                if created <= end and job.total == count:
                    found.append(job)
            return found

        jobs = await self.search("list message batches", candidates, ERRORS)
        if jobs is None:
            return Lookup()
        mark, undecided = mark_of(tag), 0
        for job in jobs:
            if job.state != "ended":
                undecided += 1
                continue
            first = await self._first_mark(job)
            if first == mark:
                return Lookup(job)
            undecided += first is _UNREAD
        return Lookup(None, undecided)

    async def _first_mark(self, job: Job) -> str | object | None:
        """The mark on an ended batch's first result line; None when it has none or is gone,
        ``_UNREAD`` when it cannot be read now."""
        if job.id in self._marks:
            return self._marks[job.id]

        async def first_line() -> bytes:
            head = b""
            async with self._open_results(job.id) as (_, chunks):
                async for chunk in chunks:
                    head += chunk
                    if b"\n" in head or len(head) > 4096:
                        break
            return head

        try:
            head = await guarded("results of a candidate batch", first_line, ERRORS)
        except ProviderRejected:
            return None  # deleted or expired: not a batch anyone can still use
        except ProviderError:
            return _UNREAD
        try:
            custom_id = orjson.loads(head.split(b"\n", 1)[0]).get("custom_id", "")
        except (orjson.JSONDecodeError, AttributeError):
            custom_id = ""
        mark = str(custom_id).partition("_")[0] if "_" in str(custom_id) else None
        if len(self._marks) > 10_000:
            self._marks.clear()
        self._marks[job.id] = mark
        return mark

    async def list_jobs(self, created_after: float, *, scan: int) -> list[Job] | None:
        async def call() -> list[Job]:
            jobs: list[Job] = []
            async for batch in self._client.messages.batches.list(limit=min(1000, scan)):
                if batch.created_at.timestamp() < created_after or len(jobs) >= scan:
                    break  # listed newest first
                jobs.append(job_of(batch))
            return jobs

        return await self.search("list message batches", call, ERRORS)

    async def ping(self) -> None:
        await guarded("list message batches", lambda: self._client.messages.batches.list(limit=1), ERRORS)

    async def discard_staged(self, staged: str | None) -> None:
        return None

    async def cleanup(self, job: Job) -> None:
        if self.settings.delete_files and job.state == "ended":
            batches = self._client.messages.batches
            await quietly(f"deleting message batch {job.id}", lambda: batches.delete(job.id), ERRORS)

    # -- one-off calls --------------------------------------------------------------------
    async def call(self, endpoint: str, body: dict[str, Any], *, flex: bool, timeout: float) -> Reply:
        """One Messages call (Anthropic has no flex tier: ``flex`` is never asked of it)."""
        response = await guarded(endpoint, lambda: self._client.post(
            endpoint, body=body, cast_to=object, options={"timeout": timeout, "max_retries": 0},
        ), ERRORS, within=timeout)  # fmt: skip
        if not isinstance(response, dict):
            raise ProviderUnavailable(f"{endpoint}: the response is not a JSON object")
        usage: dict[str, Any] = response["usage"] if isinstance(response.get("usage"), dict) else {}
        tier = usage.get("service_tier")
        return Reply(response, tier if isinstance(tier, str) and tier else None)
