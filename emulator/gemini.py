"""Gemini's Batch Mode, Files and generateContent on the emulator (the ``google-genai`` SDK works
unchanged against it, with ``http_options.base_url`` set to the emulator).

Routes (under ``/v1beta``, authenticated by ``x-goog-api-key``): ``models/{model}:generateContent``,
``models/{model}:batchGenerateContent``, ``batches`` (list), ``batches/{id}`` (get, delete),
``batches/{id}:cancel``, the Files API's resumable upload (``/upload/v1beta/files``),
``files/{id}:download`` and ``files/{id}`` (delete). A batch is a long-running operation whose
``metadata`` holds the state (``BATCH_STATE_*``), ``displayName`` and ``output``: inline
responses (in input order, each carrying its request's ``metadata``) for inline requests, a
``responsesFile`` (``{key, response|error}`` lines, in no particular order) for a file.

Shares the emulator's :class:`~emulator.server.Faults` and stats:

- ``batch_seconds``, ``batch_outcomes`` (``failed``: an inline create is refused with a 400
  naming ``requests[0]``, a file's batch fails as a whole; ``expired`` and
  ``cancelled`` leave the rest of the requests without a result), ``expire_after_fraction``;
- ``item_error_rate`` / ``failing_custom_ids``: per-request errors, ``INTERNAL`` (13) when
  ``item_error_status`` is 5xx, ``INVALID_ARGUMENT`` (3) otherwise; ``reject_lines_containing``
  and a request without ``contents`` are ``INVALID_ARGUMENT`` too;
- ``create_429``, ``create_fail_500``, ``create_500``, ``create_lag``, ``create_delay``,
  ``unreadable_next``, ``upload_500``, ``cut_off_downloads``, ``list_500`` as for OpenAI;
- ``flex_429_rate``, ``flex_latency``, ``standard_latency``, ``flex_models`` /
  ``flex_unsupported_models`` (``serviceTier`` refused with 400), ``invalid_json_rate``;
- ``gemini_inline_reversed``: inline responses come back in reverse order (still keyed);
  ``gemini_inline_unkeyed``: inline responses come back without their ``metadata``.

Inline requests are limited to 20 MiB per create call, as the real API's are.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from emulator.core import Core
from emulator.outputs import count_tokens, digest, instance, roll
from emulator.strict import offers_flex

#: The API's limit on a create call's inline requests.
MAX_INLINE_BYTES = 20 * 1024 * 1024
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "INVALID_ARGUMENT",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def error(status: int, message: str, *, retry_after: float | None = None) -> web.Response:
    """A google.rpc.Status error body, as Google APIs send them."""
    status_name = _STATUS_NAMES.get(status, "UNKNOWN")
    body: dict[str, Any] = {"error": {"code": status, "message": message, "status": status_name}}
    if retry_after is not None:
        body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                     "retryDelay": f"{retry_after:g}s"}]  # fmt: skip
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _json(body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def request_problem(request: Any) -> str | None:
    """Why generateContent would refuse this GenerateContentRequest, or None."""
    if not isinstance(request, dict):
        return "request: must be an object"
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "contents is not specified"
    for i, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return f"contents[{i}].parts: must not be empty"
        if content.get("role") not in (None, "user", "model", "function"):
            return f"contents[{i}].role: Please use a valid role: user, model."
    if "generationConfig" in request and not isinstance(request["generationConfig"], dict):
        return "generationConfig: must be an object"
    return None


def _prompt(request: dict[str, Any]) -> str:
    texts = [
        str(part.get("text", ""))
        for content in request.get("contents") or []
        if isinstance(content, dict) and content.get("role", "user") == "user"
        for part in content.get("parts") or []
        if isinstance(part, dict)
    ]
    return texts[-1] if texts else ""


def _json_schema(schema: Any) -> Any:
    """A Gemini responseSchema (OpenAPI types, possibly upper case) as JSON Schema for ``instance``."""
    if isinstance(schema, dict):
        out = {k: _json_schema(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = out["type"].lower()
        return out
    if isinstance(schema, list):
        return [_json_schema(v) for v in schema]
    return schema


@dataclass
class GeminiBatch:
    id: str
    model: str
    display_name: str | None
    #: (key, GenerateContentRequest) in input order.
    requests: list[tuple[str | None, dict[str, Any]]]
    inline: bool
    #: Inline requests' metadata, echoed on their responses.
    metadata: list[dict[str, Any] | None]
    created_at: float
    state: str = "BATCH_STATE_PENDING"
    outcome: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    responses_file: str | None = None
    ended_at: float | None = None
    cancel_requested: bool = False
    unreadable_until: float = 0.0
    task: asyncio.Task[None] | None = None

    def as_json(self, *, reversed_inline: bool, unkeyed: bool, file_origin: str | None = None) -> dict[str, Any]:
        done = len(self.results)
        failed = sum(1 for r in self.results if "error" in r)
        metadata: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": f"models/{self.model}", "name": self.id, "displayName": self.display_name or "",
            "createTime": _iso(self.created_at), "updateTime": _iso(self.ended_at or self.created_at),
            "state": self.state,
            "batchStats": {"requestCount": str(len(self.requests)), "successfulRequestCount": str(done - failed),
                           "failedRequestCount": str(failed), "pendingRequestCount": str(len(self.requests) - done)},
        }  # fmt: skip
        if self.ended_at is not None:
            metadata["endTime"] = _iso(self.ended_at)
        ended = self.state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED")
        if ended and self.responses_file is not None:
            # a gateway may name the file by its URI on another origin (Files API URIs are https)
            shown = self.responses_file
            if file_origin:
                shown = f"https://{file_origin.split('://', 1)[-1].rstrip('/')}/v1beta/{shown}"
            metadata["output"] = {"responsesFile": shown}
        elif ended and self.inline:
            items = []
            for result in self.results:
                item = {k: v for k, v in result.items() if k != "key"}
                if unkeyed:
                    item.pop("metadata", None)
                items.append(item)
            if reversed_inline:
                items.reverse()
            metadata["output"] = {"inlinedResponses": {"inlinedResponses": items}}
        body: dict[str, Any] = {"name": self.id, "metadata": metadata, "done": self.ended_at is not None}
        if self.state == "BATCH_STATE_FAILED":
            body["error"] = {"code": 3, "message": "the batch failed (injected)"}
        return body


class GeminiApi:
    """The routes; state lives on the emulator (``gemini_batches``, ``gemini_files``)."""

    def __init__(self, emulator: Core) -> None:
        self.e = emulator
        self._uploads: dict[str, dict[str, Any]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1beta/models/{target}", self.model_call),
            web.get("/v1beta/batches", self.list),
            web.get("/v1beta/batches/{id}", self.get),
            web.post("/v1beta/batches/{target}", self.cancel),
            web.delete("/v1beta/batches/{id}", self.delete),
            web.post("/upload/v1beta/files", self.upload),
            web.get("/v1beta/files/{target}", self.download),
            web.delete("/v1beta/files/{id}", self.delete_file),
        ]

    @staticmethod
    def authorized(request: web.Request) -> web.Response | None:
        if request.path.startswith("/upload/") and request.query.get("upload_id"):
            return None  # a resumable upload's URL carries its own authority, as Google's do
        if not (request.headers.get("x-goog-api-key", "").strip() or request.query.get("key")):
            return error(401, "Method doesn't allow unregistered callers. Please use an API key.")
        return None

    def _view(self, batch: GeminiBatch) -> dict[str, Any]:
        faults = self.e.faults
        return batch.as_json(reversed_inline=faults.gemini_inline_reversed, unkeyed=faults.gemini_inline_unkeyed,
                             file_origin=faults.foreign_file_origin)  # fmt: skip

    # -- files -----------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        command = request.headers.get("X-Goog-Upload-Command", "").lower()
        if command == "start":
            if self.e.faults.upload_500 > 0:
                self.e.faults.upload_500 -= 1
                self.e.stats["upload_500"] += 1
                return error(500, "Internal error encountered.")
            meta = orjson.loads(await request.read() or b"{}").get("file") or {}
            upload_id = secrets.token_hex(8)
            self._uploads[upload_id] = {"meta": meta, "data": bytearray()}
            url = f"{request.url.origin()}/upload/v1beta/files?upload_id={upload_id}"
            return _json({}, headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})
        upload = self._uploads.get(request.query.get("upload_id", ""))
        if upload is None:
            return error(404, "upload not found")
        upload["data"] += await request.read()
        if "finalize" not in command:
            return _json({}, headers={"X-Goog-Upload-Status": "active"})
        del self._uploads[request.query["upload_id"]]
        name = f"files/{self.e._new_id('file').replace('_', '-')}"
        self.e.gemini_files[name] = bytes(upload["data"])
        self.e.stats["files_uploaded"] += 1
        now = _iso(time.time())
        body = {"file": {"name": name, "displayName": upload["meta"].get("displayName", ""),
                         "mimeType": upload["meta"].get("mimeType", "application/octet-stream"),
                         "sizeBytes": str(len(upload["data"])), "createTime": now, "updateTime": now,
                         "state": "ACTIVE", "source": "UPLOADED"}}  # fmt: skip
        return _json(body, headers={"X-Goog-Upload-Status": "final"})

    async def download(self, request: web.Request) -> web.StreamResponse:
        target = request.match_info["target"]
        if not target.endswith(":download"):
            name = f"files/{target}"
            if name not in self.e.gemini_files:
                return error(404, f"File {name} not found")
            return _json({"name": name, "sizeBytes": str(len(self.e.gemini_files[name])), "state": "ACTIVE"})
        name = f"files/{target.removesuffix(':download')}"
        data = self.e.gemini_files.get(name)
        if data is None:
            return error(404, f"File {name} not found")
        return await self.e.download(request, data, "application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        name = f"files/{request.match_info['id']}"
        if self.e.gemini_files.pop(name, None) is None:
            return error(404, f"File {name} not found")
        return _json({})

    # -- batches ---------------------------------------------------------------------------
    async def model_call(self, request: web.Request) -> web.Response:
        model, _, action = request.match_info["target"].rpartition(":")
        if action == "generateContent":
            return await self.generate(request, model)
        if action == "batchGenerateContent":
            return await self.create(request, model)
        return error(404, f"unknown method {action}")

    async def create(self, request: web.Request, model: str) -> web.Response:
        e, faults = self.e, self.e.faults
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error(400, "Invalid JSON payload received.")
        refused = await e.refuse_create()
        if refused == 429:
            return error(429, "Resource has been exhausted (e.g. check quota).", retry_after=faults.retry_after)
        if refused == 500:
            return error(500, "Internal error encountered.")
        batch_body = body.get("batch") if isinstance(body, dict) else None
        config = batch_body.get("inputConfig") if isinstance(batch_body, dict) else None
        if not isinstance(config, dict):
            return error(400, "batch.input_config is required")
        requests: list[tuple[str | None, dict[str, Any]]] = []
        metadata: list[dict[str, Any] | None] = []
        if "fileName" in config:
            data = e.gemini_files.get(str(config["fileName"]))
            if data is None:
                return error(404, f"File {config['fileName']} not found")
            for raw_line in data.splitlines():
                if not raw_line.strip():
                    continue
                line = orjson.loads(raw_line)
                requests.append((line.get("key"), line.get("request") or {}))
            inline = False
        else:
            if len(raw) > MAX_INLINE_BYTES:
                return error(400, f"Request payload size exceeds the limit: {MAX_INLINE_BYTES} bytes.")
            items = (config.get("requests") or {}).get("requests")
            if not isinstance(items, list) or not items:
                return error(400, "batch.input_config.requests.requests: must not be empty")
            for i, item in enumerate(items):
                problem = request_problem(item.get("request") if isinstance(item, dict) else None)
                if problem is not None:
                    return error(400, f"* BatchGenerateContentRequest.batch.input_config.requests.requests[{i}]"
                                      f".request.{problem}")  # fmt: skip
                meta = item.get("metadata")
                metadata.append(meta if isinstance(meta, dict) else None)
                key = meta.get("key") if isinstance(meta, dict) else None
                requests.append((key if isinstance(key, str) else None, item["request"]))
            inline = True
        if inline and faults.batch_outcomes and faults.batch_outcomes[0] == "failed":
            # a server validating inline requests at create names the request it refuses
            faults.batch_outcomes = list(faults.batch_outcomes[1:])
            e.stats["batches_failed_validation"] += 1
            return error(400, "* BatchGenerateContentRequest.batch.input_config.requests.requests[0].request"
                              ".contents: contents is not specified (injected)")  # fmt: skip
        display = batch_body.get("displayName") if isinstance(batch_body, dict) else None
        batch = GeminiBatch(f"batches/{e._new_id('batch').replace('_', '')}", model.removeprefix("models/"),
                            display, requests, inline, metadata, time.time())  # fmt: skip
        if faults.batch_outcomes:
            outcomes = list(faults.batch_outcomes)
            batch.outcome = outcomes.pop(0)
            faults.batch_outcomes = outcomes
        batch.unreadable_until = e.unreadable_until()
        e.gemini_batches[batch.id] = batch
        e.stats["batches_created"] += 1
        e.stats["gemini_batches_created"] += 1
        if display:
            e.stats[f"tag:{display}"] += 1
        batch.task = asyncio.create_task(self._process(batch))
        if await e.lose_create_answer():
            return error(500, "Internal error encountered.")
        return _json(self._view(batch))

    async def _process(self, batch: GeminiBatch) -> None:
        faults, total = self.e.faults, len(batch.requests)
        await asyncio.sleep(0.05)
        if batch.outcome == "failed":
            batch.state, batch.ended_at = "BATCH_STATE_FAILED", time.time()
            self.e.stats["batches_failed"] += 1
            return
        batch.state = "BATCH_STATE_RUNNING"
        partial = batch.outcome in ("expired", "cancelled")
        stop_at = int(total * faults.expire_after_fraction) if partial else total
        started, done = time.monotonic(), 0
        while done < stop_at and not batch.cancel_requested:
            elapsed = time.monotonic() - started
            duration = faults.batch_seconds
            target = min(stop_at, total if duration <= 0 else int(total * elapsed / duration))
            while done < target:
                batch.results.append(self._run(batch, done))
                done += 1
            if done < stop_at:
                await asyncio.sleep(min(0.05, max(duration / 20, 0.005)))
        if batch.cancel_requested or batch.outcome == "cancelled":
            batch.state = "BATCH_STATE_CANCELLED"
        elif batch.outcome == "expired":
            batch.state = "BATCH_STATE_EXPIRED"
        else:
            batch.state = "BATCH_STATE_SUCCEEDED"
        if not batch.inline and batch.results:
            name = f"files/{self.e._new_id('results').replace('_', '')}"  # ids as the Files API makes them
            lines = [orjson.dumps({k: v for k, v in r.items() if k != "metadata"}) for r in reversed(batch.results)]
            self.e.gemini_files[name] = b"\n".join(lines) + b"\n"
            batch.responses_file = name
        batch.ended_at = time.time()
        self.e.stats["gemini_batches_ended"] += 1

    def _run(self, batch: GeminiBatch, index: int) -> dict[str, Any]:
        faults = self.e.faults
        key, request = batch.requests[index]
        custom_id = key or f"{batch.id}#{index}"
        attempt = self.e._seen[custom_id]
        self.e._seen[custom_id] += 1
        out: dict[str, Any] = {"key": key}
        if batch.inline:
            out["metadata"] = batch.metadata[index]
        problem = request_problem(request)
        poison = faults.reject_lines_containing
        if problem is None and poison and poison.encode() in orjson.dumps(request):
            problem = "the request was rejected (injected)"
        rolled = faults.item_error_rate and roll(faults.seed, custom_id, attempt, "err") < faults.item_error_rate
        if problem is not None:
            out["error"] = {"code": 3, "message": problem, "status": "INVALID_ARGUMENT"}
        elif rolled or custom_id in faults.failing_custom_ids:
            self.e.stats["item_errors"] += 1
            server = faults.item_error_status >= 500
            out["error"] = {
                "code": 13 if server else 3,
                "status": "INTERNAL" if server else "INVALID_ARGUMENT",
                "message": f"The request failed with status {faults.item_error_status} (injected)."
                + faults.item_error_text,
            }
        else:
            out["response"] = self.answer(batch.model, request, "batch", custom_id)
        return out

    def answer(self, model: str, request: dict[str, Any], tier: str, seed: str) -> dict[str, Any]:
        """A GenerateContentResponse: JSON for a JSON ``responseMimeType``, else an echo."""
        prompt = _prompt(request)
        generation = request.get("generationConfig") or {}
        if generation.get("responseMimeType") == "application/json":
            schema = generation.get("responseJsonSchema") or _json_schema(generation.get("responseSchema"))
            text = orjson.dumps(instance(schema or {"type": "object"}, prompt)).decode()
            rate = self.e.faults.invalid_json_rate
            if rate and roll(self.e.faults.seed, seed, "json") < rate:
                self.e.stats["invalid_json_outputs"] += 1
                text = text[: max(1, len(text) // 2)]
        else:
            text = f"Echo: {prompt[:200]}"
        used_in = count_tokens(request.get("contents")) + count_tokens(request.get("systemInstruction") or "")
        used_out = count_tokens(text)
        return {
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP",
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": used_in, "candidatesTokenCount": used_out,
                              "totalTokenCount": used_in + used_out, "serviceTier": tier},
            "modelVersion": model, "responseId": f"{digest(prompt) % 10**12:012d}",
        }  # fmt: skip

    def _batch(self, batch_id: str) -> GeminiBatch | None:
        found: GeminiBatch | None = self.e.gemini_batches.get(f"batches/{batch_id}")
        return found

    async def get(self, request: web.Request) -> web.Response:
        batch = self._batch(request.match_info["id"])
        if batch is None:
            return error(404, "Batch not found.")
        self.e.stats["status_reads"] += 1
        if time.monotonic() < batch.unreadable_until:
            self.e.stats["status_500"] += 1
            return error(500, "Internal error encountered.")
        return _json(self._view(batch))

    async def list(self, request: web.Request) -> web.Response:
        faults = self.e.faults
        if faults.list_500 > 0:
            faults.list_500 -= 1
            self.e.stats["list_500"] += 1
            return error(500, "Internal error encountered.")
        self.e.stats["status_lists"] += 1
        size = max(1, min(1000, int(request.query.get("pageSize", "50"))))
        ordered = sorted(self.e.gemini_batches.values(), key=lambda b: (b.created_at, b.id), reverse=True)
        start = int(request.query.get("pageToken") or 0)
        page = ordered[start : start + size]
        body: dict[str, Any] = {"operations": [self._view(b) for b in page]}
        if start + size < len(ordered):
            body["nextPageToken"] = str(start + size)
        return _json(body)

    async def cancel(self, request: web.Request) -> web.Response:
        batch_id, _, action = request.match_info["target"].rpartition(":")
        batch = self._batch(batch_id)
        if action != "cancel":
            return error(404, f"unknown method {action}")
        if batch is None:
            return error(404, "Batch not found.")
        if batch.ended_at is None:
            batch.cancel_requested = True
            self.e.stats["batches_cancel_requested"] += 1
        return _json({})

    async def delete(self, request: web.Request) -> web.Response:
        batch = self._batch(request.match_info["id"])
        if batch is None:
            return error(404, "Batch not found.")
        if batch.task is not None:
            batch.task.cancel()
        del self.e.gemini_batches[batch.id]
        self.e.stats["gemini_batches_deleted"] += 1
        return _json({})

    # -- one-off calls ---------------------------------------------------------------------
    async def generate(self, request: web.Request, model: str) -> web.Response:
        e, faults = self.e, self.e.faults
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error(400, "Invalid JSON payload received.")
        model = model.removeprefix("models/")
        e.gemini_last_body = body
        e.stats["sync_requests"] += 1
        problem = request_problem(body)
        if problem is not None:
            return error(400, problem)
        tier = str(body.get("serviceTier") or "standard").lower()
        if tier == "flex":
            if model in faults.flex_unsupported_models or not offers_flex(model, faults.flex_models):
                e.stats["flex_unsupported"] += 1
                return error(400, f"serviceTier 'flex' is not supported for model {model}.")
            key = digest(orjson.dumps({k: v for k, v in body.items() if k != "serviceTier"},
                                      option=orjson.OPT_SORT_KEYS))  # fmt: skip
            e.flex_calls[key] += 1
            e.stats["flex_requests"] += 1
            if faults.flex_429_rate and roll(faults.seed, key, e.flex_calls[key], "flex") < faults.flex_429_rate:
                e.stats["flex_429"] += 1
                return error(429, "Flex capacity is exhausted, retry later.", retry_after=faults.retry_after)
            if faults.flex_latency:
                await asyncio.sleep(faults.flex_latency)
            e.stats["flex_served"] += 1
        else:
            e.stats["standard_requests"] += 1
            if faults.standard_latency:
                await asyncio.sleep(faults.standard_latency)
        return _json(self.answer(model, body, tier, _prompt(body)))
