"""OpenAI's Batch API (and Azure OpenAI's, under ``/openai/``): create (strict, as the real
server: every line checked, the whole file failed on bad lines), progressive processing over
``batch_seconds``, status reads and listings, cancels; every fault of :class:`~emulator.core.Faults`
that concerns batches."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from emulator.core import Core, StoredBatch, StoredFile, error, json_response
from emulator.openai_sync import respond
from emulator.outputs import count_tokens, digest, roll
from emulator.strict import MAX_BATCH_REQUESTS, body_problem

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions")
MAX_METADATA_PAIRS = 16


class OpenAIBatches:
    """Batches, stored on the :class:`~emulator.core.Core`."""

    def __init__(self, core: Core) -> None:
        self.e = core

    def routes(self, prefix: str) -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/batches", self.create_batch),
            web.get(f"{prefix}/batches", self.list_batches),
            web.get(f"{prefix}/batches/{{id}}", self.retrieve_batch),
            web.post(f"{prefix}/batches/{{id}}/cancel", self.cancel_batch),
        ]

    async def create_batch(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        refused = await self.e.refuse_create()
        if refused == 429:
            return error(429, "Too many batches in progress", code="rate_limit_exceeded",
                          retry_after=self.e.faults.retry_after)  # fmt: skip
        if refused == 500:
            return error(500, "The server had an error while processing your request.")
        endpoint = body.get("endpoint")
        azure = request.path.startswith("/openai/")
        line_url = endpoint if azure else None
        if azure and isinstance(endpoint, str) and not endpoint.startswith("/v1/"):
            endpoint = f"/v1{endpoint}"
        if endpoint not in BATCH_ENDPOINTS:
            return error(400, f"Invalid endpoint {endpoint!r}", param="endpoint")
        if body.get("completion_window") != "24h":
            return error(400, "completion_window must be '24h'", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (
            len(metadata) > MAX_METADATA_PAIRS or any(len(k) > 64 or len(str(v)) > 512 for k, v in metadata.items())
        ):
            return error(400, "Invalid metadata", param="metadata")
        stored_file = self.e.files.get(body.get("input_file_id", ""))
        if stored_file is None:
            return error(404, "No such File object", param="input_file_id")
        if stored_file.purpose != "batch":
            return error(400, "The file's purpose must be 'batch'", param="input_file_id")
        batch = StoredBatch(
            id=self.e._new_id("batch"),
            endpoint=endpoint,
            input_file_id=stored_file.id,
            metadata=metadata,
            created_at=int(time.time()),
            azure=azure,
            line_url=line_url,
        )
        if self.e.faults.batch_outcomes:
            outcomes = list(self.e.faults.batch_outcomes)
            batch.outcome = outcomes.pop(0)
            self.e.faults.batch_outcomes = outcomes
        batch.errors = validate(self.e, batch, stored_file.data)
        batch.unreadable_until = self.e.unreadable_until()
        self.e.batches[batch.id] = batch
        self.e.stats["batches_created"] += 1
        if metadata and metadata.get("batchstream_window"):
            self.e.stats[f"tag:{metadata['batchstream_window']}"] += 1
        batch.task = asyncio.create_task(self._process(batch))
        if await self.e.lose_create_answer():
            return error(500, "The server had an error while processing your request.")
        return json_response(batch.as_json())

    async def _process(self, batch: StoredBatch) -> None:
        await asyncio.sleep(0.05 + self.e.faults.validation_seconds)
        now = int(time.time())
        if batch.errors:
            batch.status, batch.times["failed"] = "failed", now
            self.e.stats["batches_failed"] += 1
            return
        if not batch.cancel_requested:
            batch.status, batch.times["in_progress"] = "in_progress", now
        total = len(batch.lines)
        stop_at = total
        if batch.outcome in ("expired", "cancelled"):  # ended part-way by the provider or a user
            stop_at = int(total * self.e.faults.expire_after_fraction)
        outputs: list[bytes] = []
        errors: list[bytes] = []
        started = time.monotonic()
        done = 0
        ended_by: str | None = None
        while done < total:
            duration = self.e.faults.batch_seconds  # read each step: a change at run time applies at once
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
        if ended_by == "cancelled" and batch.cancel_requested and self.e.faults.cancel_seconds:
            await asyncio.sleep(self.e.faults.cancel_seconds)
        if ended_by is not None:
            code = "batch_expired" if ended_by == "expired" else "batch_cancelled"
            message = f"This request could not be executed before the batch was {ended_by}."
            for unfinished in batch.lines[done:]:
                errors.append(orjson.dumps({
                    "id": self.e._new_id("batch_req"), "custom_id": unfinished.get("custom_id"), "response": None,
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
        self.e.stats[f"batches_{final}"] += 1

    def _as_error_line(self, output: bytes) -> bytes:
        parsed = orjson.loads(output)
        return orjson.dumps({
            "id": parsed["id"], "custom_id": parsed["custom_id"], "response": None,
            "error": {"code": "server_error", "message": "The request failed (injected)."},
        })  # fmt: skip

    def _store_result(self, batch: StoredBatch, kind: str, lines: list[bytes]) -> str:
        stored = StoredFile(
            self.e._new_id("file"), f"batch_{kind}", f"{batch.id}_{kind}.jsonl",
            b"".join(line + b"\n" for line in lines), int(time.time()),
        )  # fmt: skip
        self.e.files[stored.id] = stored
        return stored.id

    def _run_line(self, batch: StoredBatch, line: dict[str, Any]) -> tuple[bool, bytes]:
        custom_id = str(line.get("custom_id"))
        attempt = self.e._seen[custom_id]
        self.e._seen[custom_id] += 1
        request_id = self.e._new_id("req")
        faults = self.e.faults
        rolled = faults.item_error_rate and roll(faults.seed, custom_id, attempt, "err") < faults.item_error_rate
        if rolled or custom_id in faults.failing_custom_ids:
            self.e.stats["item_errors"] += 1
            shape = faults.item_error_shape
            if shape == "mixed":
                shape = "error" if digest(custom_id, attempt) % 2 else "response"
            code = "server_error" if faults.item_error_status >= 500 else "invalid_request"
            message = f"The request failed with status {faults.item_error_status} (injected).{faults.item_error_text}"
            if shape == "error":
                err = {"code": code, "message": message}
                return False, orjson.dumps({"id": self.e._new_id("batch_req"), "custom_id": custom_id,
                                            "response": None, "error": err})  # fmt: skip
            body = {"error": {"message": message, "type": code, "param": None, "code": code}}
            return False, orjson.dumps({
                "id": self.e._new_id("batch_req"), "custom_id": custom_id, "error": None,
                "response": {"status_code": faults.item_error_status, "request_id": request_id, "body": body},
            })  # fmt: skip
        status, body = respond(self.e, batch.endpoint, line.get("body") or {}, custom_id=custom_id)
        ok = status == 200
        record = {
            "id": self.e._new_id("batch_req"),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        return ok, orjson.dumps(record)

    async def list_batches(self, request: web.Request) -> web.Response:
        if self.e.faults.minimal:
            return error(404, "Not found")
        if self.e.faults.list_500 > 0:
            self.e.faults.list_500 -= 1
            self.e.stats["list_500"] += 1
            return error(500, "The server had an error while processing your request.")
        self.e.stats["status_lists"] += 1
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
        after = request.query.get("after")
        visible_before = time.monotonic() - self.e.faults.list_lag
        listed = [b for b in self.e.batches.values() if b.created_monotonic <= visible_before]
        ordered = sorted(listed, key=lambda b: (b.created_at, b.id), reverse=True)
        if after:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[:limit]
        return json_response({
            "object": "list", "data": [self._batchjson_response(b) for b in page],
            "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
            "has_more": len(ordered) > limit,
        })  # fmt: skip

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        batch = self.e.batches.get(request.match_info["id"])
        if batch is None:
            return error(404, "No such Batch object", param="id")
        self.e.stats["status_reads"] += 1
        if time.monotonic() < batch.unreadable_until:
            self.e.stats["status_500"] += 1
            return error(500, "The server had an error while processing your request.")
        return json_response(self._batchjson_response(batch))

    def _batchjson_response(self, batch: StoredBatch) -> dict[str, Any]:
        shown = batch.as_json()
        origin = (self.e.faults.foreign_file_origin or "").rstrip("/")
        for key in ("output_file_id", "error_file_id") if origin else ():
            if shown[key]:
                shown[key] = f"{origin}/v1/files/{shown[key]}"
        return shown

    async def cancel_batch(self, request: web.Request) -> web.Response:
        batch = self.e.batches.get(request.match_info["id"])
        if batch is None:
            return error(404, "No such Batch object", param="id")
        if batch.status in ("validating", "in_progress"):
            batch.cancel_requested = True
            batch.status, batch.times["cancelling"] = "cancelling", int(time.time())
            self.e.stats["batches_cancel_requested"] += 1
        elif batch.status not in ("cancelling", "cancelled"):
            return error(400, f"Cannot cancel a batch with status {batch.status}")
        return json_response(batch.as_json())


def validate(core: Core, batch: StoredBatch, data: bytes) -> list[dict[str, Any]] | None:
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
        poison = core.faults.reject_lines_containing
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
    limit = core.faults.enqueued_token_limit
    running = ("validating", "in_progress", "finalizing")
    enqueued = sum(b.tokens for b in core.batches.values() if b.model == first_model and b.status in running
                   and not b.errors)  # fmt: skip
    if limit is not None and not errors and enqueued + batch.tokens > limit:
        core.stats["token_limit_exceeded"] += 1
        errors.append({"code": "token_limit_exceeded", "line": None, "param": None,
                       "message": f"Enqueued token limit reached for {first_model}: {enqueued} enqueued, "
                                  f"limit {limit}."})  # fmt: skip
    if core.faults.token_limit > 0 and not errors:
        core.faults.token_limit -= 1
        core.stats["token_limit_exceeded"] += 1
        errors.append({"code": "token_limit_exceeded", "line": None, "param": None,
                       "message": "Enqueued token limit reached for this model."})  # fmt: skip
    if not errors and batch.outcome == "failed":
        errors.append({"code": "invalid_request", "line": None, "param": None,
                       "message": "The batch failed validation (injected)."})  # fmt: skip
    if not core.faults.line_numbers:
        errors = [{**e, "line": None} for e in errors]
    if errors:
        core.stats["batches_failed_validation"] += 1
    return errors or None
