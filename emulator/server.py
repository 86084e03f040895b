"""A provider emulator: OpenAI's Files, Batches and three synchronous endpoints, the same
under Azure OpenAI's routes (``/openai/...``), Anthropic's Message Batches and Messages
(``emulator/anthropic.py``), and Gemini's Batch Mode, Files and generateContent
(``emulator/gemini.py``).

Speaks the wire format the official ``openai`` SDK expects, keeps everything in memory and
answers deterministically. Faults are injected through :class:`Faults`, set at start-up or
at run time with ``POST /_emulator/faults`` (a partial JSON object); ``GET /_emulator/stats``
counts what happened, so tests can assert, for example, that no window was submitted twice.

Strict where the real servers are strict (``emulator/strict.py``): every line of a batch file
is checked for its endpoint when the batch is created, and a file with bad lines fails as a
whole (``failed``, ``errors.data`` naming the lines), as OpenAI's does; the 50,000-request and
200 MB limits apply; 429s carry ``Retry-After``; ``enqueued_token_limit`` enforces a per-model
limit of prompt tokens in running batches (``token_limit_exceeded``), as OpenAI's queue limit does.

Synchronous calls with ``service_tier="flex"`` take ``flex_latency`` seconds and are refused
with HTTP 429 at ``flex_429_rate`` (re-rolled on every attempt of the same request body);
models outside ``flex_models`` (a realistic default set) or listed in ``flex_unsupported_models``
reject the parameter with HTTP 400.

A batch is processed progressively: its requests finish evenly over ``batch_seconds``, so a
cancel or an expiry part-way keeps the finished part in the output file, as the real API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import BodyPartReader, web
from pydantic import BaseModel, ConfigDict, Field

from emulator.anthropic import AnthropicApi, MessageBatch
from emulator.gemini import GeminiApi, GeminiBatch
from emulator.outputs import answer_text, count_tokens, digest, last_user_text, roll
from emulator.strict import FLEX_MODELS, MAX_BATCH_REQUESTS, MAX_FILE_BYTES, body_problem, offers_flex

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions")
MAX_METADATA_PAIRS = 16
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


def _error(
    status: int, message: str, *, code: str | None = None, param: str | None = None, retry_after: float | None = None
) -> web.Response:
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    return web.json_response(body, status=status, headers=headers, dumps=lambda o: orjson.dumps(o).decode())


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class Emulator:
    """The emulator's state and routes. ``app()`` builds the aiohttp application."""

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
        self.message_batches: dict[str, MessageBatch] = {}
        self.gemini_batches: dict[str, GeminiBatch] = {}
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

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=256 * 1024 * 1024)
        app.add_routes([
            web.post("/v1/files", self.upload_file),
            web.get("/v1/files/{id}", self.retrieve_file),
            web.get("/v1/files/{id:.+}/content", self.file_content),
            web.delete("/v1/files/{id}", self.delete_file),
            web.post("/v1/batches", self.create_batch),
            web.get("/v1/batches", self.list_batches),
            web.get("/v1/batches/{id}", self.retrieve_batch),
            web.post("/v1/batches/{id}/cancel", self.cancel_batch),
            web.post("/v1/chat/completions", self.sync_endpoint),
            web.post("/v1/responses", self.sync_endpoint),
            web.post("/v1/embeddings", self.sync_endpoint),
            web.get("/_emulator/faults", self.get_faults),
            web.post("/_emulator/faults", self.set_faults),
            web.get("/_emulator/stats", self.get_stats),
            web.post("/_emulator/reset", self.reset),
            *AnthropicApi(self).routes(),
            *GeminiApi(self).routes(),
            *self._azure_routes(),
        ])  # fmt: skip
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        tasks = [b.task for b in self.batches.values()] + [b.task for b in self.message_batches.values()]
        tasks += [b.task for b in self.gemini_batches.values()]
        for task in tasks:
            if task is not None:
                task.cancel()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/messages"):
            refused = AnthropicApi.authorized(request)
            if refused is not None:
                return refused
        elif request.path.startswith(("/v1beta/", "/upload/v1beta/")):
            refused = GeminiApi.authorized(request)
            if refused is not None:
                return refused
        elif request.path.startswith("/openai/"):
            if not request.headers.get("api-key", "").strip():
                return _error(401, "Access denied due to invalid subscription key.", code="401")
            if not request.query.get("api-version"):
                return _error(404, "Resource not found", code="404")
        elif request.path.startswith("/v1/"):
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
                return _error(401, "You didn't provide an API key.", code="invalid_api_key")
            key = auth.removeprefix("Bearer ").strip()
            if key in self.faults.refused_keys:
                masked = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
                return _error(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")
        response: web.StreamResponse = await handler(request)
        return response

    # -- control -------------------------------------------------------------------------
    async def get_faults(self, _request: web.Request) -> web.Response:
        return _json(self.faults.model_dump())

    async def set_faults(self, request: web.Request) -> web.Response:
        update = orjson.loads(await request.read())
        self.faults = Faults.model_validate({**self.faults.model_dump(), **update})
        return _json(self.faults.model_dump())

    async def get_stats(self, _request: web.Request) -> web.Response:
        return _json({**self.stats, "flex_calls_max_per_request": max(self.flex_calls.values(), default=0)})

    async def reset(self, _request: web.Request) -> web.Response:
        self.clear()
        return _json({"reset": True})

    # -- files ---------------------------------------------------------------------------
    async def upload_file(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        purpose, filename, data = "", "upload", b""
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                data = bytes(await part.read())
        if purpose not in ("batch", "assistants", "fine-tune", "user_data", "evals", "vision"):
            return _error(400, f"Invalid purpose {purpose!r}", param="purpose")
        if self.faults.upload_500 > 0:
            self.faults.upload_500 -= 1
            self.stats["upload_500"] += 1
            return _error(500, "The server had an error while processing your request.")
        if len(data) > MAX_FILE_BYTES:
            return _error(400, f"File is too large: {len(data)} bytes, the limit is {MAX_FILE_BYTES}.", param="file")
        stored = StoredFile(self._new_id("file"), purpose, filename, data, int(time.time()))
        self.files[stored.id] = stored
        self.stats["files_uploaded"] += 1
        return _json(stored.as_json())

    async def retrieve_file(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["id"])
        if stored is None:
            return _error(404, "No such File object", param="id")
        return _json(stored.as_json())

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        # a file named by a URL (foreign_file_origin): the gateway serves it by its last segment
        stored = self.files.get(request.match_info["id"].rsplit("/", 1)[-1])
        if stored is None:
            return _error(404, "No such File object", param="id")
        return await self.download(request, stored.data, "application/octet-stream")

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

    async def delete_file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["id"]
        if self.files.pop(file_id, None) is None:
            return _error(404, "No such File object", param="id")
        return _json({"id": file_id, "object": "file", "deleted": True})

    # -- create-call faults, shared by every provider's API ------------------------------
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

    # -- batches -------------------------------------------------------------------------
    async def create_batch(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        refused = await self.refuse_create()
        if refused == 429:
            return _error(429, "Too many batches in progress", code="rate_limit_exceeded",
                          retry_after=self.faults.retry_after)  # fmt: skip
        if refused == 500:
            return _error(500, "The server had an error while processing your request.")
        endpoint = body.get("endpoint")
        azure = request.path.startswith("/openai/")
        line_url = endpoint if azure else None
        if azure and isinstance(endpoint, str) and not endpoint.startswith("/v1/"):
            endpoint = f"/v1{endpoint}"
        if endpoint not in BATCH_ENDPOINTS:
            return _error(400, f"Invalid endpoint {endpoint!r}", param="endpoint")
        if body.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (
            len(metadata) > MAX_METADATA_PAIRS or any(len(k) > 64 or len(str(v)) > 512 for k, v in metadata.items())
        ):
            return _error(400, "Invalid metadata", param="metadata")
        stored_file = self.files.get(body.get("input_file_id", ""))
        if stored_file is None:
            return _error(404, "No such File object", param="input_file_id")
        if stored_file.purpose != "batch":
            return _error(400, "The file's purpose must be 'batch'", param="input_file_id")
        batch = StoredBatch(
            id=self._new_id("batch"),
            endpoint=endpoint,
            input_file_id=stored_file.id,
            metadata=metadata,
            created_at=int(time.time()),
            azure=azure,
            line_url=line_url,
        )
        if self.faults.batch_outcomes:
            outcomes = list(self.faults.batch_outcomes)
            batch.outcome = outcomes.pop(0)
            self.faults.batch_outcomes = outcomes
        batch.errors = self._validate(batch, stored_file.data)
        batch.unreadable_until = self.unreadable_until()
        self.batches[batch.id] = batch
        self.stats["batches_created"] += 1
        if metadata and metadata.get("batchstream_window"):
            self.stats[f"tag:{metadata['batchstream_window']}"] += 1
        batch.task = asyncio.create_task(self._process(batch))
        if await self.lose_create_answer():
            return _error(500, "The server had an error while processing your request.")
        return _json(batch.as_json())

    def _validate(self, batch: StoredBatch, data: bytes) -> list[dict[str, Any]] | None:
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        first_model: str | None = None
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                errors.append({"code": "invalid_json_line", "line": number, "message": "not JSON", "param": None})
                continue
            custom_id = line.get("custom_id")
            poison = self.faults.reject_lines_containing
            problem = body_problem(batch.endpoint, line.get("body"))
            if poison and poison.encode() in raw:
                problem = ("invalid_request", "This request was rejected (injected).", "body")
            if problem is not None:
                code, message, param = problem
                errors.append({"code": code, "line": number, "message": message, "param": param})
            if custom_id in seen:
                errors.append({"code": "duplicate_custom_id", "line": number,
                               "message": f"duplicate custom_id {custom_id!r}", "param": "custom_id"})  # fmt: skip
            seen.add(custom_id)
            if line.get("url") != (batch.line_url or batch.endpoint):
                errors.append({"code": "url_mismatch", "line": number,
                               "message": "url differs from the batch endpoint", "param": "url"})  # fmt: skip
            model = (line.get("body") or {}).get("model") if isinstance(line.get("body"), dict) else None
            if problem is None and isinstance(model, str):
                first_model = first_model or model
                if model != first_model:
                    errors.append({"code": "model_mismatch", "line": number, "param": "model",
                                   "message": "all requests in a batch must use the same model"})  # fmt: skip
            batch.lines.append(line)
        if not batch.lines:
            errors.append({"code": "empty_file", "line": None, "message": "the file has no requests", "param": None})
        if len(batch.lines) > MAX_BATCH_REQUESTS:
            errors.append({"code": "too_many_tasks", "line": None, "param": None,
                           "message": f"A batch may hold at most {MAX_BATCH_REQUESTS} requests."})  # fmt: skip
        batch.model = first_model
        batch.tokens = sum(count_tokens((line.get("body") or {}).get("messages") or (line.get("body") or {}).get(
            "input") or "") for line in batch.lines)  # fmt: skip
        limit = self.faults.enqueued_token_limit
        running = ("validating", "in_progress", "finalizing")
        enqueued = sum(b.tokens for b in self.batches.values() if b.model == first_model and b.status in running
                       and not b.errors)  # fmt: skip
        if limit is not None and not errors and enqueued + batch.tokens > limit:
            self.stats["token_limit_exceeded"] += 1
            errors.append({"code": "token_limit_exceeded", "line": None, "param": None,
                           "message": f"Enqueued token limit reached for {first_model}: {enqueued} enqueued, "
                                      f"limit {limit}."})  # fmt: skip
        if self.faults.token_limit > 0 and not errors:
            self.faults.token_limit -= 1
            self.stats["token_limit_exceeded"] += 1
            errors.append({"code": "token_limit_exceeded", "line": None, "param": None,
                           "message": "Enqueued token limit reached for this model."})  # fmt: skip
        if not errors and batch.outcome == "failed":
            errors.append({"code": "invalid_request", "line": None, "param": None,
                           "message": "The batch failed validation (injected)."})  # fmt: skip
        if not self.faults.line_numbers:
            errors = [{**e, "line": None} for e in errors]
        if errors:
            self.stats["batches_failed_validation"] += 1
        return errors or None

    async def _process(self, batch: StoredBatch) -> None:
        await asyncio.sleep(0.05 + self.faults.validation_seconds)
        now = int(time.time())
        if batch.errors:
            batch.status, batch.times["failed"] = "failed", now
            self.stats["batches_failed"] += 1
            return
        if not batch.cancel_requested:
            batch.status, batch.times["in_progress"] = "in_progress", now
        total = len(batch.lines)
        stop_at = total
        if batch.outcome in ("expired", "cancelled"):  # ended part-way by the provider or a user
            stop_at = int(total * self.faults.expire_after_fraction)
        outputs: list[bytes] = []
        errors: list[bytes] = []
        started = time.monotonic()
        done = 0
        ended_by: str | None = None
        while done < total:
            duration = self.faults.batch_seconds  # read each step: a change at run time applies at once
            if batch.cancel_requested:
                ended_by = "cancelled"
                break
            if done >= stop_at:
                ended_by = "cancelled" if batch.outcome == "cancelled" else "expired"
                break
            elapsed = time.monotonic() - started
            target = total if duration <= 0 else min(total, int(total * elapsed / duration))
            target = min(target, stop_at)
            while done < target:
                ok, line = self._run_line(batch, batch.lines[done])
                (outputs if ok else errors).append(line)
                batch.completed += ok
                batch.failed += not ok
                done += 1
            if done < total:
                await asyncio.sleep(min(0.05, max(duration / 20, 0.005)))
        if ended_by == "cancelled" and batch.cancel_requested and self.faults.cancel_seconds:
            await asyncio.sleep(self.faults.cancel_seconds)
        if ended_by is not None:
            code = "batch_expired" if ended_by == "expired" else "batch_cancelled"
            message = f"This request could not be executed before the batch was {ended_by}."
            for unfinished in batch.lines[done:]:
                errors.append(orjson.dumps({
                    "id": self._new_id("batch_req"), "custom_id": unfinished.get("custom_id"), "response": None,
                    "error": {"code": code, "message": message},
                }))  # fmt: skip
        batch.status, batch.times["finalizing"] = "finalizing", int(time.time())
        if outputs and batch.outcome != "completed_without_output":
            batch.output_file_id = self._store_result(batch, "output", outputs)
        elif batch.outcome == "completed_without_output":
            errors = [self._as_error_line(o) for o in outputs] + errors
            batch.failed, batch.completed = total, 0
        if errors or batch.azure:
            batch.error_file_id = self._store_result(batch, "error", errors)
        final = ended_by or "completed"
        batch.status, batch.times[final] = final, int(time.time())
        self.stats[f"batches_{final}"] += 1

    def _as_error_line(self, output: bytes) -> bytes:
        parsed = orjson.loads(output)
        return orjson.dumps({
            "id": parsed["id"], "custom_id": parsed["custom_id"], "response": None,
            "error": {"code": "server_error", "message": "The request failed (injected)."},
        })  # fmt: skip

    def _store_result(self, batch: StoredBatch, kind: str, lines: list[bytes]) -> str:
        stored = StoredFile(
            self._new_id("file"), f"batch_{kind}", f"{batch.id}_{kind}.jsonl",
            b"".join(line + b"\n" for line in lines), int(time.time()),
        )  # fmt: skip
        self.files[stored.id] = stored
        return stored.id

    def _run_line(self, batch: StoredBatch, line: dict[str, Any]) -> tuple[bool, bytes]:
        custom_id = str(line.get("custom_id"))
        attempt = self._seen[custom_id]
        self._seen[custom_id] += 1
        request_id = self._new_id("req")
        faults = self.faults
        rolled = faults.item_error_rate and roll(faults.seed, custom_id, attempt, "err") < faults.item_error_rate
        if rolled or custom_id in faults.failing_custom_ids:
            self.stats["item_errors"] += 1
            shape = faults.item_error_shape
            if shape == "mixed":
                shape = "error" if digest(custom_id, attempt) % 2 else "response"
            code = "server_error" if faults.item_error_status >= 500 else "invalid_request"
            message = f"The request failed with status {faults.item_error_status} (injected).{faults.item_error_text}"
            if shape == "error":
                err = {"code": code, "message": message}
                return False, orjson.dumps({"id": self._new_id("batch_req"), "custom_id": custom_id,
                                            "response": None, "error": err})  # fmt: skip
            body = {"error": {"message": message, "type": code, "param": None, "code": code}}
            return False, orjson.dumps({
                "id": self._new_id("batch_req"), "custom_id": custom_id, "error": None,
                "response": {"status_code": faults.item_error_status, "request_id": request_id, "body": body},
            })  # fmt: skip
        status, body = self.respond(batch.endpoint, line.get("body") or {}, custom_id=custom_id)
        ok = status == 200
        record = {
            "id": self._new_id("batch_req"),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        return ok, orjson.dumps(record)

    async def list_batches(self, request: web.Request) -> web.Response:
        if self.faults.minimal:
            return _error(404, "Not found")
        if self.faults.list_500 > 0:
            self.faults.list_500 -= 1
            self.stats["list_500"] += 1
            return _error(500, "The server had an error while processing your request.")
        self.stats["status_lists"] += 1
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
        after = request.query.get("after")
        visible_before = time.monotonic() - self.faults.list_lag
        listed = [b for b in self.batches.values() if b.created_monotonic <= visible_before]
        ordered = sorted(listed, key=lambda b: (b.created_at, b.id), reverse=True)
        if after:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[:limit]
        return _json({
            "object": "list", "data": [self._batch_json(b) for b in page],
            "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
            "has_more": len(ordered) > limit,
        })  # fmt: skip

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "No such Batch object", param="id")
        self.stats["status_reads"] += 1
        if time.monotonic() < batch.unreadable_until:
            self.stats["status_500"] += 1
            return _error(500, "The server had an error while processing your request.")
        return _json(self._batch_json(batch))

    def _batch_json(self, batch: StoredBatch) -> dict[str, Any]:
        shown = batch.as_json()
        origin = (self.faults.foreign_file_origin or "").rstrip("/")
        for key in ("output_file_id", "error_file_id") if origin else ():
            if shown[key]:
                shown[key] = f"{origin}/v1/files/{shown[key]}"
        return shown

    async def cancel_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "No such Batch object", param="id")
        if batch.status in ("validating", "in_progress"):
            batch.cancel_requested = True
            batch.status, batch.times["cancelling"] = "cancelling", int(time.time())
            self.stats["batches_cancel_requested"] += 1
        elif batch.status not in ("cancelling", "cancelled"):
            return _error(400, f"Cannot cancel a batch with status {batch.status}")
        return _json(batch.as_json())

    # -- synchronous endpoints -----------------------------------------------------------
    def _azure_routes(self) -> list[web.RouteDef]:
        """Azure OpenAI's shape of the same API: ``/openai/...?api-version=``, deployments as models."""
        return [
            web.post("/openai/files", self.upload_file),
            web.get("/openai/files/{id}", self.retrieve_file),
            web.get("/openai/files/{id}/content", self.file_content),
            web.delete("/openai/files/{id}", self.delete_file),
            web.post("/openai/batches", self.create_batch),
            web.get("/openai/batches", self.list_batches),
            web.get("/openai/batches/{id}", self.retrieve_batch),
            web.post("/openai/batches/{id}/cancel", self.cancel_batch),
            web.post("/openai/deployments/{deployment}/{endpoint:chat/completions|embeddings}", self.azure_sync),
            web.post("/openai/responses", self.azure_sync),
        ]

    async def azure_sync(self, request: web.Request) -> web.Response:
        deployment = request.match_info.get("deployment")
        endpoint = f"/v1/{request.match_info.get('endpoint', 'responses')}"
        return await self._sync(request, endpoint, deployment)

    async def sync_endpoint(self, request: web.Request) -> web.Response:
        return await self._sync(request, request.path, None)

    async def _sync(self, request: web.Request, endpoint: str, deployment: str | None) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        self.stats["sync_requests"] += 1
        if deployment is not None and isinstance(body, dict):
            body["model"] = deployment
        if isinstance(body, dict) and body.get("service_tier") == "flex":
            refusal = await self._flex_gate(endpoint, body)
            if refusal is not None:
                return refusal
        elif self.faults.standard_latency:
            await asyncio.sleep(self.faults.standard_latency)
        if isinstance(body, dict) and body.get("service_tier") != "flex":
            self.stats["standard_requests"] += 1
        status, payload = self.respond(endpoint, body, custom_id=None)
        if isinstance(body, dict) and body.get("service_tier") == "flex" and status == 200:
            self.flex_served_ids[str(payload.get("id"))] += 1
        if self.faults.minimal:
            payload.pop("service_tier", None)
        return _json(payload, status=status)

    async def _flex_gate(self, path: str, body: dict[str, Any]) -> web.Response | None:
        """Flex capacity: unsupported model (400), no capacity (429), or a slow answer."""
        faults = self.faults
        model = body.get("model")
        unsupported = model in faults.flex_unsupported_models or not offers_flex(model, faults.flex_models)
        if path == "/v1/embeddings" or unsupported:
            self.stats["flex_unsupported"] += 1
            return _error(400, f"service_tier 'flex' is not available for model {body.get('model')}",
                          param="service_tier", code="invalid_value")  # fmt: skip
        key = digest(orjson.dumps({k: v for k, v in body.items() if k != "service_tier"}, option=orjson.OPT_SORT_KEYS))
        self.flex_calls[key] += 1
        self.stats["flex_requests"] += 1
        if faults.flex_429_rate and roll(faults.seed, key, self.flex_calls[key], "flex") < faults.flex_429_rate:
            self.stats["flex_429"] += 1
            return _error(429, "Resource unavailable: flex capacity is exhausted, retry later.",
                          code="resource_unavailable", retry_after=faults.retry_after)  # fmt: skip
        if faults.flex_latency:
            await asyncio.sleep(faults.flex_latency)
        self.stats["flex_served"] += 1
        return None

    def respond(self, endpoint: str, body: dict[str, Any], *, custom_id: str | None) -> tuple[int, dict[str, Any]]:
        """Answer one request body as the endpoint would: (status, JSON body)."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return 400, {"error": {"message": "you must provide a model parameter", "type": "invalid_request_error",
                                   "param": "model", "code": None}}  # fmt: skip
        created = int(time.time())
        tier = body.get("service_tier") or "default"
        if tier == "auto":
            tier = "default"
        if endpoint == "/v1/embeddings":
            inputs = body.get("input")
            items = inputs if isinstance(inputs, list) else [inputs]
            data = [
                {"object": "embedding", "index": i,
                 "embedding": [round(roll(str(text), d) * 2 - 1, 6) for d in range(8)]}
                for i, text in enumerate(items)
            ]  # fmt: skip
            tokens = sum(count_tokens(str(t)) for t in items)
            return 200, {"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
        if endpoint == "/v1/responses":
            prompt = last_user_text(body.get("input"))
            fmt = (body.get("text") or {}).get("format")
            text = self._maybe_broken(answer_text(fmt, prompt, ""), fmt, custom_id or prompt)
            usage_in, usage_out = count_tokens(body.get("input")), count_tokens(text)
            return 200, {
                "id": f"resp_{digest(prompt) % 10**12:012d}", "object": "response", "created_at": created,
                "status": "completed", "model": model, "service_tier": tier,
                "output": [{"type": "message", "id": f"msg_{digest(prompt, 'm') % 10**12:012d}",
                            "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "usage": {"input_tokens": usage_in, "output_tokens": usage_out,
                          "total_tokens": usage_in + usage_out,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}},
            }  # fmt: skip
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, {"error": {"message": "'messages' is a required property", "type": "invalid_request_error",
                                   "param": "messages", "code": None}}  # fmt: skip
        prompt = last_user_text(messages)
        fmt = body.get("response_format")
        text = self._maybe_broken(answer_text(fmt, prompt, "json_schema"), fmt, custom_id or prompt)
        usage_in, usage_out = count_tokens(messages), count_tokens(text)
        return 200, {
            "id": f"chatcmpl-{digest(prompt) % 10**12:012d}", "object": "chat.completion", "created": created,
            "model": model, "service_tier": tier,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}],
            "usage": {"prompt_tokens": usage_in, "completion_tokens": usage_out,
                      "total_tokens": usage_in + usage_out},
        }  # fmt: skip

    def _maybe_broken(self, text: str, fmt: Any, seed: str) -> str:
        wants_json = isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")
        rate = self.faults.invalid_json_rate
        if wants_json and rate and roll(self.faults.seed, seed, "json") < rate:
            self.stats["invalid_json_outputs"] += 1
            return text[: max(1, len(text) // 2)]
        return text


class EmulatorThread:
    """The emulator on a loopback port in a background thread (for tests and the demo)."""

    def __init__(self, faults: Faults | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = Emulator(faults)
        self.host, self.port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulator", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI SDK's base URL."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The server's root: the Anthropic SDK's base URL, and Azure's resource endpoint."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start serving (idempotent); return the base URL."""
        if self._thread.is_alive():
            return self.base_url
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self.base_url

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.emulator.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop serving (idempotent; a no-op when never started)."""
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def serve(host: str, port: int, faults: Faults) -> None:
    """Run in the foreground until SIGINT/SIGTERM; the first stdout line is ``base_url=...``."""

    async def announce(_app: web.Application) -> None:
        print(f"base_url=http://{host}:{port}/v1", flush=True)  # noqa: T201 - the CLI's contract

    app = Emulator(faults).app()
    app.on_startup.append(announce)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
