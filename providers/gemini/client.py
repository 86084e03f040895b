"""Google Gemini's Batch Mode and one-off ``generateContent`` calls, through the official
``google-genai`` SDK.

Request bodies are Gemini REST ``GenerateContentRequest`` objects (``contents``,
``systemInstruction``, ``generationConfig``, ...). They reach the API as they are: in a JSONL
input file (``{"key", "request"}`` lines), or, inline, through the SDK's ``extra_body`` (the
documented way to send fields in the backend's own shape), so no field is lost to the installed
SDK's types.

A window round travels inline in ``batches.create`` while its requests fit ``inline_bytes``
(20 MB, the API's limit), else as a file uploaded through the Files API. Each request carries
its custom id: ``metadata.key`` inline, ``key`` in a file. Results:

- a result file (``dest.file_name``): lines keyed by ``key``, downloaded to disk and checked
  to parse whole (a cut-off download is fetched again);
- inline responses (``dest.inlined_responses``): in input order, which is *not* trusted: each
  response is matched to its request by the key it carries back. A response without a key,
  or a key given twice, cannot be matched: those requests get another round, and from then on
  this provider sends every round as a file, whose results are keyed.

Per-request outcomes: a response is a result, unless its prompt was blocked (no candidates,
``promptFeedback.blockReason``), which is a rejection; an error (a ``google.rpc.Status``) is a
rejection when the request is at fault (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED, or an HTTP 4xx other than
408/429), else another round. Job states: PENDING/QUEUED/RUNNING run, CANCELLING ends,
SUCCEEDED/CANCELLED/EXPIRED/PARTIALLY_SUCCEEDED have ended (what is missing goes again),
FAILED failed as a whole.

Adoption after a crash: the round's tag is the batch's ``display_name``; batches are listed
and the newest bearing it is adopted.

One-off calls ask for ``serviceTier: "flex"``; the tier that served a call is read from
``usageMetadata.serviceTier`` where the response gives it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
import orjson
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

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
from providers.downloads import CappedFile, fetch_checked, keyed, local_file
from providers.gemini.outcomes import blocked_reason, classify
from streams.errors import ProviderRejected, ProviderUnavailable
from streams.models import Request
from streams.provider_config import ProviderSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The google-genai SDK's errors and transport errors (the SDK is given an httpx client).
ERRORS: tuple[type[Exception], ...] = (genai_errors.APIError, httpx.HTTPError)

_STATES: dict[str, JobState] = {
    "JOB_STATE_PENDING": "running", "JOB_STATE_QUEUED": "running", "JOB_STATE_RUNNING": "running",
    "JOB_STATE_PAUSED": "running", "JOB_STATE_UPDATING": "running", "JOB_STATE_CANCELLING": "ending",
    "JOB_STATE_SUCCEEDED": "ended", "JOB_STATE_PARTIALLY_SUCCEEDED": "ended", "JOB_STATE_CANCELLED": "ended",
    "JOB_STATE_EXPIRED": "ended", "JOB_STATE_FAILED": "failed",
}  # fmt: skip
_REQUEST_INDEX = re.compile(r"requests(?:\[|\.)(\d+)")
_TOO_LARGE = re.compile(r"payload size|too large|exceeds the (?:maximum|limit)", re.IGNORECASE)
#: Fields of a request body that are not part of Gemini's request (the model is in the path).
_NOT_SENT = ("model", "service_tier", "serviceTier")
#: The API version Batch Mode is documented under (the SDK's own default may differ).
API_VERSION = "v1beta"
#: How many listed batches adoption looks through.
_FIND_SCAN = 1000


@contextmanager
def _written(path: Path, data: bytes) -> Iterator[Path]:
    """``data`` in a temporary file at ``path``, removed afterwards."""
    path.write_bytes(data)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def rest_request(body: dict[str, Any]) -> dict[str, Any]:
    """The GenerateContentRequest of a request body (the model travels in the path)."""
    return {k: v for k, v in body.items() if k not in _NOT_SENT}


def _state(batch: types.BatchJob) -> str:
    state = batch.state
    return str(getattr(state, "value", state) or "JOB_STATE_UNSPECIFIED")


def job_of(batch: types.BatchJob) -> Job:
    status = _state(batch)
    state = _STATES.get(status, "running")
    dest = batch.dest
    files = (dest.file_name,) if dest is not None and dest.file_name and state in ("ended", "failed") else ()
    errors: list[dict[str, Any]] = []
    if state == "failed":
        reason = batch.error.message if batch.error is not None and batch.error.message else status
        errors.append({"code": "batch_failed", "line": None, "message": f"the batch failed: {reason}"})
    return Job(
        id=batch.name or "", status=status, state=state,
        created_at=batch.create_time.timestamp() if batch.create_time else 0.0,
        ended_at=batch.end_time.timestamp() if batch.end_time else None, errors=errors, result_files=files,
    )  # fmt: skip


def response_json(response: types.GenerateContentResponse) -> dict[str, Any]:
    """A parsed response in the REST shape (camelCase), as a result file holds it."""
    body = response.sdk_http_response.body if response.sdk_http_response is not None else None
    if body:
        try:
            raw = orjson.loads(body)
            if isinstance(raw, dict):
                return raw
        except orjson.JSONDecodeError:
            pass
    dumped: dict[str, Any] = response.model_dump(
        mode="json", by_alias=True, exclude_none=True,
        exclude={"sdk_http_response", "automatic_function_calling_history", "parsed"},
    )  # fmt: skip
    return dumped


class GeminiProvider(Provider):
    """Gemini Batch Mode and one-off generateContent calls (Gemini Developer API)."""

    kind: ClassVar[str] = "gemini"

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        #: False once an inline result could not be matched to its request: rounds go as files.
        self.inline_trusted = True
        self._http = httpx.AsyncClient(timeout=settings.timeout)
        retries = types.HttpRetryOptions(attempts=settings.max_retries + 1) if settings.max_retries else None
        self._client = genai.Client(
            api_key=settings.api_key.get_secret_value(),
            http_options=types.HttpOptions(
                base_url=settings.base_url, api_version=settings.api_version or API_VERSION,
                timeout=int(settings.timeout * 1000), retry_options=retries, httpx_async_client=self._http,
            ),
        )  # fmt: skip
        self._aio = self._client.aio

    async def close(self) -> None:
        await self._http.aclose()

    def _once(self, timeout: float, extra_body: dict[str, Any] | None = None) -> types.HttpOptions:
        """Options of a call made once (no SDK retries) within ``timeout``."""
        return types.HttpOptions(timeout=max(1, int(timeout * 1000)), retry_options=types.HttpRetryOptions(attempts=1),
                                 extra_body=extra_body)  # fmt: skip

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await guarded(what, call, ERRORS)

    # -- batch jobs ---------------------------------------------------------------------
    async def stage(self, requests: list[Request], path: Path) -> str | None:
        lines = [orjson.dumps({"key": r.custom_id, "request": rest_request(r.body)}) + b"\n" for r in requests]
        if self.inline_trusted and sum(map(len, lines)) <= self.settings.inline_bytes:
            return None  # the create call carries them
        config = types.UploadFileConfig(display_name=path.name, mime_type="jsonl")
        with _written(path, b"".join(lines)) as written:
            uploaded = await self._call("upload", lambda: self._aio.files.upload(file=written, config=config))
        if not uploaded.name:
            raise ProviderUnavailable("upload: the file has no name")
        return uploaded.name

    async def create(
        self, requests: list[Request], *, staged: str | None, endpoint: str, tag: str, metadata: dict[str, str]
    ) -> Job:
        src: Any
        if staged is not None:
            src, extra = staged, None
        else:
            inline = [{"request": rest_request(r.body), "metadata": {"key": r.custom_id}} for r in requests]
            # A placeholder the SDK converts; extra_body replaces it with the requests as they are.
            src = [types.InlinedRequest(contents=".")]
            extra = {"batch": {"inputConfig": {"requests": {"requests": inline}}}}
        config = types.CreateBatchJobConfig(display_name=tag,
                                            http_options=self._once(self.settings.create_timeout, extra))  # fmt: skip
        model = requests[0].model
        try:
            batch = await self._call("create batch", lambda: self._aio.batches.create(model=model, src=src,
                                                                                       config=config))  # fmt: skip
        except ProviderRejected as exc:
            text = str(exc)
            if exc.status_code == 413 or (exc.status_code == 400 and _TOO_LARGE.search(text)):
                raise BatchRefused(text, [{"code": exc.code, "line": None, "message": text}], status_code=413) from exc
            named = sorted({int(m.group(1)) for m in _REQUEST_INDEX.finditer(text)})
            if exc.status_code == 400 and named and named[-1] < len(requests):
                errors = [{"code": exc.code or "INVALID_ARGUMENT", "line": i + 1, "message": text} for i in named]
                raise BatchRefused(text, errors, status_code=400) from exc
            raise  # names no request: not the requests' fault; the window retries with backoff
        return job_of(batch)

    async def retrieve(self, job_id: str) -> Job:
        return job_of(await self._call("retrieve batch", lambda: self._aio.batches.get(name=job_id)))

    async def cancel(self, job_id: str) -> Job:
        await self._call("cancel batch", lambda: self._aio.batches.cancel(name=job_id))
        return await self.retrieve(job_id)

    async def results(self, job: Job, workdir: Path, admit: Admit = admit_all) -> dict[str, LineOutcome]:
        batch = await self._call("retrieve batch", lambda: self._aio.batches.get(name=job.id))
        dest = batch.dest
        if dest is None:
            return {}
        if dest.file_name:
            return await self._file_results(dest.file_name, workdir, job.id.replace("/", "_"), admit)
        return self._inline_results(job.id, dest.inlined_responses or [])

    async def _file_results(self, name: str, workdir: Path, stem: str, admit: Admit) -> dict[str, LineOutcome]:
        path = local_file(workdir, stem, ".results.jsonl")
        cap = self.settings.max_result_bytes

        async def download() -> None:
            # The SDK streams to a writable destination in chunks: the cap holds as it writes.
            with CappedFile(path, cap, f"download of {name}") as sink:
                await self._aio.files.download(file=name, destination=sink)

        try:
            return await fetch_checked(
                f"download of {name}", download, path, lambda lines: keyed(lines, "key", classify),
                attempts=self.settings.download_attempts, admit=admit, errors=ERRORS,
            )  # fmt: skip
        finally:
            path.unlink(missing_ok=True)

    def _inline_results(self, job_id: str, responses: list[types.InlinedResponse]) -> dict[str, LineOutcome]:
        outcomes: dict[str, LineOutcome] = {}
        doubtful: set[str] = set()
        unkeyed = 0
        for item in responses:
            key = (item.metadata or {}).get("key")
            if not key:
                unkeyed += 1
                continue
            if key in outcomes:
                doubtful.add(key)
            if item.error is not None:
                line: dict[str, Any] = {"error": item.error.model_dump(mode="json", exclude_none=True)}
            else:
                line = {"response": response_json(item.response) if item.response is not None else None}
            outcomes[key] = classify(line)
        for key in doubtful:
            del outcomes[key]
        if unkeyed or doubtful:
            self.inline_trusted = False
            log.warning("batch %s: %d inline results carry no key and %d keys came back twice; their requests go "
                        "again, and from now on rounds go as files (keyed results)",
                        job_id, unkeyed, len(doubtful))  # fmt: skip
        return outcomes

    async def find(self, tag: str, *, created_after: float, create_started: float | None, count: int) -> Lookup:
        """The newest batch whose ``display_name`` is ``tag``, among the most recent listed."""

        async def call() -> types.BatchJob | None:
            best: types.BatchJob | None = None
            pager = await self._aio.batches.list(config=types.ListBatchJobsConfig(page_size=100))
            seen = 0
            async for batch in pager:
                seen += 1
                created = batch.create_time.timestamp() if batch.create_time else 0.0
                if batch.display_name == tag and created >= created_after:
                    best_time = best.create_time.timestamp() if best is not None and best.create_time else -1.0
                    best = batch if created > best_time else best
                if seen >= _FIND_SCAN:
                    break
            return best

        found = await self.search("list batches", call, ERRORS)
        return Lookup(job_of(found) if found is not None else None)

    async def list_jobs(self, created_after: float, *, scan: int) -> list[Job] | None:
        async def call() -> list[Job]:
            # The order of the listing is not documented: stop after a whole page older than
            # ``created_after`` (or _FIND_SCAN batches), not at the first older one.
            jobs, seen, older_run = [], 0, 0
            pager = await self._aio.batches.list(config=types.ListBatchJobsConfig(page_size=100))
            async for batch in pager:
                seen += 1
                created = batch.create_time.timestamp() if batch.create_time else 0.0
                if created >= created_after:
                    jobs.append(job_of(batch))
                    older_run = 0
                else:
                    older_run += 1
                if seen >= min(scan, _FIND_SCAN) or older_run >= 100:
                    break
            return jobs

        return await self.search("list batches", call, ERRORS)

    async def ping(self) -> None:
        await self._call("list batches", lambda: self._aio.batches.list(config=types.ListBatchJobsConfig(page_size=1)))

    async def discard_staged(self, staged: str | None) -> None:
        if staged and self.settings.delete_files:
            await quietly(f"deleting file {staged}", lambda: self._aio.files.delete(name=staged), ERRORS)

    async def cleanup(self, job: Job) -> None:
        """Delete an ended batch (its inline results go with it) and its result file."""
        if not self.settings.delete_files or not job.terminal:
            return
        for name in job.result_files:
            await self.discard_staged(name)
        await quietly(f"deleting batch {job.id}", lambda: self._aio.batches.delete(name=job.id), ERRORS)

    # -- one-off calls --------------------------------------------------------------------
    async def call(self, endpoint: str, body: dict[str, Any], *, flex: bool, timeout: float) -> Reply:
        """One generateContent call, with ``serviceTier: flex`` when ``flex``; the body goes as is."""
        request = rest_request(body)
        if flex:
            request["serviceTier"] = "flex"
        # The SDK converts a placeholder; extra_body replaces it with the request as it is, and the
        # response comes back as the server sent it (should_return_http_response).
        options = self._once(timeout, request)
        config = types.GenerateContentConfig(http_options=options, should_return_http_response=True)
        model = str(body["model"])
        response = await self._call(endpoint, lambda: self._aio.models.generate_content(
            model=model, contents=".", config=config))  # fmt: skip
        answer = response_json(response)
        blocked = blocked_reason(answer)
        if blocked is not None:
            raise ProviderRejected(f"{endpoint}: the prompt was blocked: {blocked}", code="prompt_blocked")
        usage = answer.get("usageMetadata")
        tier = usage.get("serviceTier") if isinstance(usage, dict) else None
        return Reply(answer, str(tier).lower() if isinstance(tier, str) and tier else None)

    def refuses_flex(self, exc: ProviderRejected) -> bool:
        text = str(exc)
        return "serviceTier" in text or "service_tier" in text or "service tier" in text.lower()
