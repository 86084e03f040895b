"""What every emulated API shares: the faults, the stored OpenAI files and batches, counters,
ids, downloads (cut off on demand) and the faults of a batch-create call.

Each API (``emulator/openai_*.py``, ``emulator/anthropic.py``, ``emulator/gemini.py``) works on
one :class:`Core`; ``emulator/server.py`` serves them all from one application.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from emulator.strict import FLEX_MODELS

Outcome = Literal["failed", "expired", "cancelled", "completed_without_output"]


class Faults(BaseModel):
    """What the emulator does wrong, and how slowly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Time for a batch to process all of its requests.
    batch_seconds: float = Field(1.0, ge=0)
    #: Time a batch stays ``validating`` before it fails validation or starts.
    validation_seconds: float = Field(0.0, ge=0)
    #: Share of batch requests that fail (re-rolled on every attempt of the same custom_id).
    item_error_rate: float = Field(0.0, ge=0, le=1)
    #: Batch requests with these custom ids fail on every attempt (as ``item_error_status``).
    failing_custom_ids: list[str] = Field(default_factory=list)
    #: Shape of a failed line: ``error`` object, non-200 ``response``, or a mix of both.
    item_error_shape: Literal["error", "response", "mixed"] = "mixed"
    #: HTTP status of injected item errors (5xx and 429 are retriable, 4xx are not).
    item_error_status: int = 500
    #: Text appended to every injected item error's message (a provider quoting a key, say).
    item_error_text: str = ""
    #: Share of JSON-format requests answered with text that is not JSON.
    invalid_json_rate: float = Field(0.0, ge=0, le=1)
    #: The next N ``POST /v1/batches`` answer HTTP 429.
    create_429: int = Field(0, ge=0)
    #: The next N created batches fail validation with ``token_limit_exceeded``.
    token_limit: int = Field(0, ge=0)
    #: A real enqueued-token limit per model: a batch whose prompt tokens, with those of the
    #: model's running batches, pass it fails validation with ``token_limit_exceeded``.
    enqueued_token_limit: int | None = Field(None, ge=1)
    #: Outcomes forced on the next created batches, one each, in order.
    batch_outcomes: list[Outcome] = Field(default_factory=list)
    #: Share of requests finished before a forced expiry or cancellation.
    expire_after_fraction: float = Field(0.5, ge=0, le=1)
    #: Seconds ``POST /v1/batches`` waits after creating the batch before answering.
    create_delay: float = Field(0.0, ge=0)
    #: Seconds ``POST /v1/batches`` waits before creating the batch (a slow request in flight).
    create_lag: float = Field(0.0, ge=0)
    #: The next N file downloads are cut off half-way.
    cut_off_downloads: int = Field(0, ge=0)
    #: Share of flex calls refused with 429 "resource unavailable".
    flex_429_rate: float = Field(0.0, ge=0, le=1)
    #: Seconds a flex call takes to answer (a refusal answers at once).
    flex_latency: float = Field(0.0, ge=0)
    #: Seconds a standard (non-flex) synchronous call takes.
    standard_latency: float = Field(0.0, ge=0)
    #: Models that do not offer flex: ``service_tier="flex"`` is a 400 naming the parameter.
    flex_unsupported_models: list[str] = Field(default_factory=list)
    #: The next N ``POST /v1/batches`` create the batch, then answer HTTP 500 anyway.
    create_500: int = Field(0, ge=0)
    #: Behave like a minimal OpenAI-compatible server: ``GET /v1/batches`` is a 404 and
    #: responses carry no ``service_tier``.
    minimal: bool = False
    #: Models that offer flex (a dated snapshot of one counts too).
    flex_models: list[str] = Field(default_factory=lambda: list(FLEX_MODELS))
    #: A batch line whose raw JSON contains this text fails validation (``invalid_request``):
    #: poison only the provider can judge.
    reject_lines_containing: str | None = None
    #: Whether validation errors name their line (``False``: ``line`` is null, as some servers do).
    line_numbers: bool = True
    #: The next N created batches answer HTTP 500 to every status read, for
    #: ``unreadable_seconds`` after their creation (None: for ever).
    unreadable_next: int = Field(0, ge=0)
    unreadable_seconds: float | None = Field(None, ge=0)
    #: The next N ``GET /v1/batches`` (listings) answer HTTP 500.
    list_500: int = Field(0, ge=0)
    #: A batch appears in listings only this long after its creation.
    list_lag: float = Field(0.0, ge=0)
    #: The next N uploads answer HTTP 500 (nothing stored).
    upload_500: int = Field(0, ge=0)
    #: The next N ``POST /v1/batches`` answer HTTP 500 without creating anything.
    create_fail_500: int = Field(0, ge=0)
    #: Seconds a cancelled batch stays ``cancelling`` before it is ``cancelled``.
    cancel_seconds: float = Field(0.0, ge=0)
    #: ``Retry-After`` (seconds) sent with every 429.
    retry_after: float = Field(1.0, ge=0)
    #: Anthropic: a message batch's ``results_url`` is relative to the server (else absolute).
    anthropic_relative_results_url: bool = False
    #: Anthropic: ``results_url`` on this origin (``http://host:port``) instead of the emulator's own.
    anthropic_results_origin: str | None = None
    #: OpenAI and Gemini shapes: a batch's result files are named as URLs on this origin
    #: (``http://host:port``), as a gateway in front of another might hand them out; the files
    #: are still served here under such a name.
    foreign_file_origin: str | None = None
    #: Anthropic: an ended message batch names no ``results_url`` (its results are still served).
    anthropic_no_results_url: bool = False
    #: OpenAI shapes: requests bearing one of these keys answer 401 ``invalid_api_key`` (a key
    #: revoked or rotated), the key masked in the message as OpenAI masks it.
    refused_keys: list[str] = Field(default_factory=list)
    #: Anthropic: the next N message-batch creates answer 400 naming no request (low credit).
    create_400: int = Field(0, ge=0)
    #: Gemini: inline responses come back in reverse input order (each still keyed).
    gemini_inline_reversed: bool = False
    #: Gemini: inline responses come back without their requests' ``metadata`` (no key).
    gemini_inline_unkeyed: bool = False
    seed: int = 0


@dataclass
class StoredFile:
    id: str
    purpose: str
    filename: str
    data: bytes
    created_at: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
            "filename": self.filename, "purpose": self.purpose, "status": "processed",
        }  # fmt: skip


@dataclass
class StoredBatch:
    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    status: str = "validating"
    outcome: Outcome | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    times: dict[str, int] = field(default_factory=dict)
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = None
    #: Status reads answer 500 until this time.monotonic() (inf: for ever).
    unreadable_until: float = 0.0
    #: Created through Azure OpenAI's routes: lines name the endpoint as ``line_url`` (no
    #: ``/v1``), and a successful batch still names an (empty) error file.
    azure: bool = False
    line_url: str | None = None
    created_monotonic: float = field(default_factory=time.monotonic)
    model: str | None = None
    #: Prompt tokens of its requests (counted as the responses' usage counts them).
    tokens: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.line_url or self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86400,
            "in_progress_at": self.times.get("in_progress"),
            "finalizing_at": self.times.get("finalizing"),
            "completed_at": self.times.get("completed"),
            "failed_at": self.times.get("failed"),
            "expired_at": self.times.get("expired"),
            "cancelling_at": self.times.get("cancelling"),
            "cancelled_at": self.times.get("cancelled"),
            "request_counts": {
                "total": len(self.lines),
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


def error(
    status: int, message: str, *, code: str | None = None, param: str | None = None, retry_after: float | None = None
) -> web.Response:
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    return web.json_response(body, status=status, headers=headers, dumps=lambda o: orjson.dumps(o).decode())


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class Core:
    """The state every emulated API works on, and the behaviour they share."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.clear(faults)

    def clear(self, faults: Faults | None = None) -> None:
        """Forget every file and batch and reset the faults (batches in progress are stopped)."""
        running = [*getattr(self, "batches", {}).values(), *getattr(self, "message_batches", {}).values(),
                   *getattr(self, "gemini_batches", {}).values()]  # fmt: skip
        for batch in running:
            if batch.task is not None:
                batch.task.get_loop().call_soon_threadsafe(batch.task.cancel)
        self.faults = faults or Faults()
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, StoredBatch] = {}
        #: Anthropic's message batches and Gemini's batches and files, kept by their APIs.
        self.message_batches: dict[str, Any] = {}
        self.gemini_batches: dict[str, Any] = {}
        self.gemini_files: dict[str, bytes] = {}
        #: The last generateContent body received (to check what a client sent).
        self.gemini_last_body: Any = None
        self.stats: Counter[str] = Counter()
        #: Flex calls per distinct request body (to check retry budgets).
        self.flex_calls: Counter[int] = Counter()
        #: Flex answers served, by response id (a digest of the prompt).
        self.flex_served_ids: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._ids = itertools.count(1)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}{secrets.token_hex(4)}"

    def running_tasks(self) -> list[asyncio.Task[None]]:
        """Batches still being processed, of every API."""
        batches = [*self.batches.values(), *self.message_batches.values(), *self.gemini_batches.values()]
        return [b.task for b in batches if b.task is not None]

    async def download(self, request: web.Request, data: bytes, content_type: str) -> web.StreamResponse:
        """Send a file's bytes, or cut the transfer off half-way while ``cut_off_downloads`` lasts."""
        self.stats["downloads"] += 1
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(data)
        await response.prepare(request)
        if self.faults.cut_off_downloads > 0 and len(data) > 1:
            self.faults.cut_off_downloads -= 1
            self.stats["downloads_cut_off"] += 1
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write(data)
        await response.write_eof()
        return response

    async def refuse_create(self) -> int | None:
        """Before a batch exists: ``create_lag``, then the status a refused create answers
        (429 for ``create_429``, 500 for ``create_fail_500``), or None."""
        if self.faults.create_lag:
            self.stats["creates_lagging"] += 1
            await asyncio.sleep(self.faults.create_lag)
            self.stats["creates_lagged"] += 1
        for status, name in ((429, "create_429"), (500, "create_fail_500")):
            if getattr(self.faults, name) > 0:
                setattr(self.faults, name, getattr(self.faults, name) - 1)
                self.stats[name] += 1
                return status
        return None

    def unreadable_until(self) -> float:
        """When a new batch's status reads stop failing (``unreadable_next``): 0 for most."""
        if self.faults.unreadable_next <= 0:
            return 0.0
        self.faults.unreadable_next -= 1
        seconds = self.faults.unreadable_seconds
        return float("inf") if seconds is None else time.monotonic() + seconds

    async def lose_create_answer(self) -> bool:
        """After the batch exists: ``create_delay``, then whether ``create_500`` answers 500 anyway."""
        if self.faults.create_delay:
            await asyncio.sleep(self.faults.create_delay)
        if self.faults.create_500 > 0:
            self.faults.create_500 -= 1
            self.stats["create_500"] += 1
            return True
        return False
