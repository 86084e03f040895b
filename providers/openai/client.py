"""OpenAI's Batch API and one-off calls, through the official ``openai`` SDK.

A round's requests go up as a JSONL file (``purpose="batch"``); the batch's metadata carries
``batchstream_window = <window id>#r<round>``, so a batch created just before a crash is found
again by listing recent batches. Results are an output file and an error file, each line keyed
by ``custom_id``; both failure shapes of a line are read (``error`` set, or a non-200
``response``; ``outcomes.py`` reads them). Azure OpenAI (``providers/azure/``) speaks the
same API through a subclass.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import openai
from openai.types import Batch

from providers.base import (
    META_WINDOW,
    Admit,
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
from providers.openai.outcomes import classify
from streams.errors import ProviderUnavailable
from streams.models import Request
from streams.provider_config import ProviderSettings

log = logging.getLogger(__name__)

_STATES: dict[str, JobState] = {
    "validating": "running", "in_progress": "running", "finalizing": "ending", "cancelling": "ending",
    "completed": "ended", "expired": "ended", "cancelled": "ended", "failed": "failed",
}  # fmt: skip


def job_of(batch: Batch) -> Job:
    ended = next((v for v in (batch.completed_at, batch.expired_at, batch.cancelled_at, batch.failed_at) if v), None)
    counts = batch.request_counts
    errors = [e.model_dump() for e in (batch.errors.data if batch.errors and batch.errors.data else [])]
    files = tuple(f for f in (batch.output_file_id, batch.error_file_id) if f)
    return Job(
        id=batch.id, status=batch.status, state=_STATES.get(batch.status, "running"),
        created_at=float(batch.created_at), ended_at=float(ended) if ended else None,
        total=counts.total if counts else 0, succeeded=counts.completed if counts else 0,
        failed=counts.failed if counts else 0, errors=errors, input_file_id=batch.input_file_id,
        result_files=files if _STATES.get(batch.status) in ("ended", "failed") else (),
    )  # fmt: skip


@contextmanager
def _written(path: Path, lines: Iterable[bytes]) -> Iterator[BinaryIO]:
    """A temporary file holding ``lines``, open for reading; removed afterwards."""
    with path.open("wb") as fh:
        fh.writelines(lines)
    try:
        with path.open("rb") as fh:
            yield fh
    finally:
        path.unlink(missing_ok=True)


class OpenAIProvider(Provider):
    """Files and Batches calls, and one-off calls, for an OpenAI(-compatible) API."""

    kind: ClassVar[str] = "openai"

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        self._client = self._make_client(settings)
        # The SDK imports its resource modules on first use (about half a second of CPU): at
        # start-up, rather than in the middle of the first window's upload.
        _ = (self._client.files, self._client.batches)

    def _make_client(self, settings: ProviderSettings) -> openai.AsyncOpenAI:
        # The SDK's aiohttp transport (``openai[aiohttp]``): httpx's connection pool walks every
        # pooled connection, more than once, for each request, so with many calls in flight
        # most of a flex call's CPU went there (bench/RESULTS.md: half the CPU per call).
        return openai.AsyncOpenAI(
            base_url=settings.base_url, api_key=settings.api_key.get_secret_value(),
            organization=settings.organization, timeout=settings.timeout, max_retries=settings.max_retries,
            http_client=openai.DefaultAioHttpClient(),
        )  # fmt: skip

    def line_url(self, endpoint: str) -> str:
        """The ``url`` of a batch line (and the batch's ``endpoint``)."""
        return endpoint

    async def close(self) -> None:
        await self._client.close()

    # -- batch jobs ---------------------------------------------------------------------
    async def stage(self, requests: list[Request], path: Path) -> str:
        url = self.line_url(requests[0].endpoint)

        async def call() -> str:
            with _written(path, (r.jsonl_line(url) for r in requests)) as fh:
                created = await self._client.files.create(file=(path.name, fh), purpose="batch")
            return created.id

        return await guarded("upload", call, within=self.settings.timeout)

    async def create(
        self, requests: list[Request], *, staged: str | None, endpoint: str, tag: str, metadata: dict[str, str]
    ) -> Job:
        assert staged is not None
        client = self._client.with_options(timeout=self.settings.create_timeout, max_retries=0)
        batch = await guarded("create batch", lambda: client.batches.create(
            input_file_id=staged, endpoint=self.line_url(endpoint),  # type: ignore[arg-type]
            completion_window="24h", metadata={**metadata, META_WINDOW: tag},
        ), within=self.settings.create_timeout)  # fmt: skip
        return job_of(batch)

    async def retrieve(self, job_id: str) -> Job:
        return job_of(await guarded("retrieve batch", lambda: self._client.batches.retrieve(job_id)))

    async def cancel(self, job_id: str) -> Job:
        return job_of(await guarded("cancel batch", lambda: self._client.batches.cancel(job_id)))

    async def results(self, job: Job, workdir: Path, admit: Admit = admit_all) -> dict[str, LineOutcome]:
        outcomes: dict[str, LineOutcome] = {}
        for file_id in job.result_files:
            path = local_file(workdir, file_id, ".jsonl")

            @asynccontextmanager
            async def stream(file_id: str = file_id) -> AsyncIterator[tuple[Any, AsyncIterator[bytes]]]:
                async with self._client.files.with_streaming_response.content(file_id) as response:
                    yield response.headers, response.iter_bytes()

            try:
                outcomes.update(await download_checked(
                    f"download of {file_id}", stream, path, lambda lines: keyed(lines, "custom_id", classify),
                    attempts=self.settings.download_attempts, cap=self.settings.max_result_bytes, admit=admit,
                ))  # fmt: skip
            finally:
                path.unlink(missing_ok=True)
        return outcomes

    async def find(self, tag: str, *, created_after: float, create_started: float | None, count: int) -> Lookup:
        """The newest batch whose metadata names ``tag``, looking back to ``created_after``."""

        async def call() -> Batch | None:
            async for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(META_WINDOW) == tag:
                    return batch
                if batch.created_at < created_after:
                    return None
            return None

        found = await self.search("list batches", call)
        return Lookup(job_of(found) if found is not None else None)

    async def list_jobs(self, created_after: float, *, scan: int) -> list[Job] | None:
        async def call() -> list[Job]:
            jobs: list[Job] = []
            async for batch in self._client.batches.list(limit=100):
                if batch.created_at < created_after or len(jobs) >= scan:
                    break  # listed newest first
                jobs.append(job_of(batch))
            return jobs

        return await self.search("list batches", call)

    async def ping(self) -> None:
        await guarded("list batches", lambda: self._client.batches.list(limit=1))

    async def discard_staged(self, staged: str | None) -> None:
        if staged and self.settings.delete_files:
            await self._delete_file(staged)

    async def cleanup(self, job: Job) -> None:
        if self.settings.delete_files:
            for file_id in (job.input_file_id, *job.result_files):
                if file_id:
                    await self._delete_file(file_id)

    async def _delete_file(self, file_id: str) -> None:
        await quietly(f"deleting file {file_id}", lambda: self._client.files.delete(file_id))

    # -- one-off calls --------------------------------------------------------------------
    async def call(self, endpoint: str, body: dict[str, Any], *, flex: bool, timeout: float) -> Reply:
        """One synchronous call; the body goes through the SDK's generic ``post``.

        The body is an arbitrary request body from an event, so it goes through ``post`` rather
        than a typed method that would reject unknown parameters; ``cast_to=object`` keeps the
        JSON as the provider sent it (extra fields included).
        """
        body = {**body, "service_tier": "flex"} if flex else {k: v for k, v in body.items() if k != "service_tier"}
        path = self.line_url(endpoint).removeprefix("/v1")
        response = await guarded(endpoint, lambda: self._client.post(
            path, body=body, cast_to=object, options={"timeout": timeout, "max_retries": 0},
        ), within=timeout)  # fmt: skip
        if not isinstance(response, dict):
            raise ProviderUnavailable(f"{endpoint}: the response is not a JSON object")
        tier = response.get("service_tier")
        return Reply(response, tier if isinstance(tier, str) and tier else None)
