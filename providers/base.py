"""The provider boundary: what the batch and flex lanes ask of any provider.

Two interfaces, implemented once per kind of provider through its official SDK:

- **batch jobs**: stage a window round's requests (upload a file, where the API takes one),
  create a job under a tag, read its status (:class:`Job`, with request counts), cancel it,
  read its per-request outcomes keyed by custom id (:class:`LineOutcome`), find a job by its
  tag after a crash (where the API can), and clean up what the job left at the provider;
- **one-off calls**: one request, asking for the flex tier or not (:class:`Reply` says which
  tier served it); a 429 is :class:`~streams.errors.ProviderBackpressure`.

Every SDK exception is mapped to the project's hierarchy at this boundary (``raise ... from``):
429 -> ProviderBackpressure, 5xx / 408 / 409 / timeouts / connection errors / cut-off
downloads -> ProviderUnavailable, any other 4xx -> ProviderRejected. Messages never carry a key.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import httpx
import openai
import orjson

from streams.errors import (
    ACCOUNT_CODES,
    ACCOUNT_STATUSES,
    BatchstreamError,
    ProviderAccountError,
    ProviderBackpressure,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    redact,
)
from streams.models import Request
from streams.provider_config import ProviderSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

JobState = Literal["running", "ending", "ended", "failed"]

#: Metadata keys batchstream puts on every batch it creates (where the API takes metadata).
META_PIPELINE = "batchstream_pipeline"
META_WINDOW = "batchstream_window"

#: Item error codes worth another round (the request itself may well succeed next time).
RETRIABLE_CODES = frozenset({
    "server_error", "rate_limit_exceeded", "batch_expired", "batch_cancelled", "timeout",
    "internal_error", "service_unavailable", "overloaded",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Job:
    """A batch job as the lanes see it, whatever the provider.

    ``state``: ``running`` (queued or in progress), ``ending`` (cancelling, finalizing: results
    not final yet), ``ended`` (per-request outcomes can be read; some may be missing, expired or
    cancelled) or ``failed`` (nothing ran: ``errors`` says why, as ``{code, line, message}``).
    """

    id: str
    status: str
    state: JobState
    created_at: float
    ended_at: float | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Provider files holding the job's input and results (deleted by ``cleanup``).
    input_file_id: str | None = None
    result_files: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in ("ended", "failed")


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What one request's batch result says: ``ok`` (``body`` is the response), ``retry`` or ``fail``."""

    kind: Literal["ok", "retry", "fail"]
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def message(self) -> str:
        error = self.error or {}
        return str(error.get("message") or error.get("code") or "request failed")


MISSING = LineOutcome("retry", error={"code": "missing_result", "message": "no result line for this request"})

#: Awaited with a result file's size once it is on disk, before it is parsed into memory: the
#: caller's budget of results held at once (``agents/rounds.ResultBudget``).
Admit = Callable[[int], Awaitable[None]]


async def admit_all(_size: int) -> None:
    """No budget: every result file is parsed as soon as it is on disk."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a search for a window round's job found."""

    job: Job | None = None
    #: Jobs that may be the round's but cannot be told apart yet (still running): wait for them.
    undecided: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a one-off call; ``tier`` is what the provider says served it (None: it does not say)."""

    body: dict[str, Any]
    tier: str | None


class SdkRefused(ProviderRejected):
    """The SDK refused a call's arguments before sending anything (a malformed model name or id):
    retrying the same call cannot help."""


class BatchVanished(ProviderRejected):
    """The provider no longer knows a batch (or its results file) it created: HTTP 404. The
    window's round goes again; its results cannot be had."""


class ResultsTooLarge(ProviderRejected):
    """A job's result file is larger than the provider's ``max_result_bytes``: it is not
    downloaded further, and the round's requests end as ``batch_results_too_large`` dead letters."""

    retriable = False


class BatchRefused(ProviderRejected):
    """The provider refused to create a job for these requests; ``errors`` as a failed job's."""

    def __init__(self, message: str, errors: list[dict[str, Any]], *, status_code: int | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.errors = errors


#: The openai SDK's errors and transport errors; each provider module passes its SDK's own.
OPENAI_ERRORS: tuple[type[Exception], ...] = (openai.OpenAIError, httpx.HTTPError)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _retry_delay(details: Any) -> float | None:
    """Gemini's ``google.rpc.RetryInfo`` (``retryDelay: "30s"``) in an error's details."""
    error = details.get("error", details) if isinstance(details, dict) else None
    for item in error.get("details") or [] if isinstance(error, dict) else []:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


def _code_and_param(exc: Exception) -> tuple[str | None, str | None]:
    """The provider's error code and parameter: OpenAI's ``code``/``param``, Anthropic's ``error.type``,
    google-genai's ``status`` (``INVALID_ARGUMENT``)."""
    code, param = getattr(exc, "code", None), getattr(exc, "param", None)
    if isinstance(code, int):
        code = getattr(exc, "status", None)
    if code is None:
        body = getattr(exc, "body", None)
        inner = body.get("error") if isinstance(body, dict) else None
        code = inner.get("type") if isinstance(inner, dict) else None
    return (code if isinstance(code, str) else None), (param if isinstance(param, str) else None)


def map_error(exc: Exception, what: str) -> ProviderError:
    """Translate an SDK or transport exception into a ProviderError (no secrets in messages).

    The SDKs (openai, anthropic) share the shape of their status errors (``status_code``,
    ``response``, ``message``), so one mapping serves both; google-genai's carry the status as
    ``code`` and a retry delay in their ``details``.
    """
    status = getattr(exc, "status_code", None)
    if status is None and isinstance(getattr(exc, "code", None), int) and hasattr(exc, "details"):
        status = exc.code  # type: ignore[attr-defined]
    response = getattr(exc, "response", None)
    if isinstance(status, int) and isinstance(response, httpx.Response):
        message = redact(getattr(exc, "message", None) or str(exc))
        code, param = _code_and_param(exc)
        if status == 429:
            retry_after = _retry_after(response.headers) or _retry_delay(getattr(exc, "details", None))
            return ProviderBackpressure(f"{what}: {message}", retry_after=retry_after, code=code)
        # 529 is Anthropic's "overloaded": transient, as every 5xx.
        kind = ProviderUnavailable if status >= 500 or status in (408, 409) else ProviderRejected
        if status in ACCOUNT_STATUSES or code in ACCOUNT_CODES:
            kind = ProviderAccountError
        return kind(f"{what}: HTTP {status}: {message}", status_code=status, code=code, param=param)
    return ProviderUnavailable(redact(f"{what}: {type(exc).__name__}: {exc}"))


async def guarded(
    what: str, call: Callable[[], Awaitable[T]], errors: tuple[type[Exception], ...] = OPENAI_ERRORS,
    *, within: float | None = None,
) -> T:  # fmt: skip
    """Await an SDK call, mapping its exceptions (``errors``: the SDK's own) at the boundary.

    ``within``: the whole call's time limit. The SDKs' timeouts bound each phase of a request
    (connect, read, ...), and their aiohttp transport has no limit on writing the body at all, so
    a call whose request goes out slowly or not at all (a peer that stops reading) is cut here.
    """
    limit = asyncio.timeout(within)
    try:
        async with limit:
            return await call()
    except errors as exc:
        raise map_error(exc, what) from exc
    except (ValueError, TypeError) as exc:  # the SDK refused the call's arguments before sending it
        if isinstance(exc, BatchstreamError | orjson.JSONDecodeError):
            raise  # batchstream's own, or a cut-off download: their callers handle them
        raise SdkRefused(redact(f"{what}: the SDK refused the request: {type(exc).__name__}: {exc}")) from exc
    except TimeoutError as exc:
        if not limit.expired():
            raise
        raise ProviderUnavailable(f"{what}: no answer within {within:g}s") from exc


class Provider(ABC):
    """One configured provider: batch jobs and one-off calls. ``close()`` is idempotent."""

    kind: ClassVar[str]

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        self.name = name
        self.settings = settings
        #: False once jobs cannot be looked up by tag (the API has no metadata, or listing was refused).
        self.can_find = True

    @property
    def offers_flex(self) -> bool:
        return self.settings.offers_flex

    @abstractmethod
    async def close(self) -> None: ...

    # -- batch jobs ---------------------------------------------------------------------
    @abstractmethod
    async def stage(self, requests: list[Request], path: Path) -> str | None:
        """Upload the requests as the round's input file (via ``path``); None when a create call carries them."""

    @abstractmethod
    async def create(
        self, requests: list[Request], *, staged: str | None, endpoint: str, tag: str, metadata: dict[str, str]
    ) -> Job:
        """Create the job (one call, never retried by the SDK); BatchRefused when the requests are refused."""

    @abstractmethod
    async def retrieve(self, job_id: str) -> Job: ...

    @abstractmethod
    async def cancel(self, job_id: str) -> Job: ...

    @abstractmethod
    async def results(self, job: Job, workdir: Path, admit: Admit = admit_all) -> dict[str, LineOutcome]:
        """Per-request outcomes of an ended job, by custom id: result files stream to ``workdir``
        (at most ``max_result_bytes`` each: :class:`ResultsTooLarge`; retried when cut off), each
        admitted by ``admit`` before it is parsed, line by line."""

    @abstractmethod
    async def find(self, tag: str, *, created_after: float, create_started: float | None, count: int) -> Lookup:
        """The job created under ``tag`` (a round of ``count`` requests, whose create call started
        at ``create_started``), looking back to ``created_after``."""

    async def list_jobs(self, created_after: float, *, scan: int) -> list[Job] | None:
        """Jobs created since ``created_after``, with their status, in as few listing calls as the
        API allows (looking at ``scan`` jobs at most): one status read for many batches. None
        where jobs cannot be listed."""
        return None

    @abstractmethod
    async def discard_staged(self, staged: str | None) -> None:
        """Delete a round's input file once no job needs it (``delete_files``); failures are only logged."""

    @abstractmethod
    async def cleanup(self, job: Job) -> None:
        """Delete what an ended job left at the provider (``delete_files``); failures are only logged."""

    @abstractmethod
    async def ping(self) -> None:
        """One cheap authenticated call (a listing of one job), for readiness; raises ProviderError."""

    # -- one-off calls --------------------------------------------------------------------
    @abstractmethod
    async def call(self, endpoint: str, body: dict[str, Any], *, flex: bool, timeout: float) -> Reply:
        """One synchronous request, with the flex tier when ``flex`` (no SDK retries: the caller's budget)."""

    async def search(
        self, what: str, call: Callable[[], Awaitable[T]], errors: tuple[type[Exception], ...] = OPENAI_ERRORS
    ) -> T | None:
        """A listing (to adopt jobs after a crash, or to poll many at once); None when jobs
        cannot be looked up.

        A server that refuses to list (404/405, a compatible server without the route) turns
        adoption off: windows are then submitted again after a crash, since the rare duplicate
        beats a window stuck forever.
        """
        if not self.can_find:
            return None
        try:
            return await guarded(what, call, errors)
        except ProviderRejected as exc:
            log.warning("cannot %s (%s): batches created before a crash cannot be adopted", what, exc)
            self.can_find = False
            return None

    def refuses_flex(self, exc: ProviderRejected) -> bool:
        """Whether a refusal says the model does not offer the flex tier."""
        return exc.param == "service_tier" or "service_tier" in str(exc)


async def quietly(
    what: str, call: Callable[[], Awaitable[Any]], errors: tuple[type[Exception], ...] = OPENAI_ERRORS
) -> None:
    """A clean-up call: a 404 counts as done, any other failure is logged and forgotten."""
    try:
        await guarded(what, call, errors)
    except ProviderRejected as exc:
        if exc.status_code != 404:
            log.warning("%s failed: %s", what, exc)
    except ProviderError as exc:
        log.warning("%s failed: %s", what, exc)
