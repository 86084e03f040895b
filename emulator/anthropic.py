"""Anthropic's Message Batches and Messages APIs on the emulator (the ``anthropic`` SDK works unchanged).

Shares the emulator's :class:`~emulator.server.Faults` and stats:

- ``batch_seconds``: a batch's requests finish evenly over it; a cancel part-way leaves the rest
  ``canceled``, a forced ``expired`` outcome leaves them ``expired``;
- ``item_error_rate`` / ``failing_custom_ids``: ``errored`` results, typed ``api_error`` when
  ``item_error_status`` is 5xx, ``invalid_request_error`` otherwise; ``reject_lines_containing``
  errors a request as invalid; a request without ``max_tokens`` or ``messages`` is invalid too;
- ``create_429``, ``create_fail_500``, ``create_500``, ``create_lag``, ``create_delay``,
  ``unreadable_next``, ``cut_off_downloads``, ``standard_latency`` as for OpenAI batches;
  a forced ``failed`` outcome refuses the create call with a 400 naming ``requests.0``;
  ``create_400`` refuses the next creates with a 400 naming no request (an account problem);
  ``failing_custom_ids`` also match a custom id's part after its first ``_``;
- ``anthropic_relative_results_url``: the batch's ``results_url`` relative to the server;
  ``anthropic_no_results_url``: none at all (the results are still served at their path).

Results come back in reverse input order (Anthropic does not keep input order).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from emulator.core import Core
from emulator.outputs import count_tokens, digest, instance, last_user_text, roll

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def error(status: int, message: str, *, retry_after: float | None = None) -> web.Response:
    kinds = {429: "rate_limit_error", 404: "not_found_error", 401: "authentication_error"}
    kind = kinds.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else None
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def params_problem(params: Any) -> str | None:
    """Why the Messages API would refuse these params (a validation error), or None."""
    if not isinstance(params, dict):
        return "params: Input should be an object"
    if not isinstance(params.get("model"), str) or not params["model"]:
        return "model: Field required"
    tokens = params.get("max_tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        return "max_tokens: Field required (a positive integer)"
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required (a non-empty list)"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    if params.get("service_tier") not in (None, "auto", "standard_only"):
        return "service_tier: Input should be 'auto' or 'standard_only'"
    return None


def message_for(params: dict[str, Any], tier: str) -> dict[str, Any]:
    """The assistant's answer: a forced tool's input (valid against its schema) or an echo."""
    prompt = last_user_text(params.get("messages"))
    choice: dict[str, Any] = params["tool_choice"] if isinstance(params.get("tool_choice"), dict) else {}
    tools = {t.get("name"): t for t in params.get("tools") or [] if isinstance(t, dict)}
    content: list[dict[str, Any]]
    if choice.get("type") == "tool" and choice.get("name") in tools:
        schema = tools[choice["name"]].get("input_schema") or {"type": "object"}
        answer = instance(schema, prompt)
        content = [{"type": "tool_use", "id": f"toolu_{digest(prompt, 't') % 10**12:012d}", "name": choice["name"],
                    "input": answer}]  # fmt: skip
        stop, produced = "tool_use", orjson.dumps(answer).decode()
    else:
        produced = f"Echo: {prompt[:200]}"
        content, stop = [{"type": "text", "text": produced}], "end_turn"
    return {
        "id": f"msg_{digest(prompt) % 10**12:012d}", "type": "message", "role": "assistant",
        "model": params.get("model"), "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": count_tokens(params.get("messages")) + count_tokens(params.get("system") or ""),
                  "output_tokens": count_tokens(produced), "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "service_tier": tier},
    }  # fmt: skip


@dataclass
class MessageBatch:
    id: str
    requests: list[dict[str, Any]]
    created_at: float
    status: str = "in_progress"
    outcome: str | None = None
    results: list[bytes] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    ended_at: float | None = None
    cancel_initiated_at: float | None = None
    unreadable_until: float = 0.0
    task: asyncio.Task[None] | None = None

    def as_json(self, results_url: str | None) -> dict[str, Any]:
        done = sum(self.counts.values())
        return {
            "id": self.id, "type": "message_batch", "processing_status": self.status,
            "request_counts": {"processing": len(self.requests) - done, "succeeded": self.counts.get("succeeded", 0),
                               "errored": self.counts.get("errored", 0), "canceled": self.counts.get("canceled", 0),
                               "expired": self.counts.get("expired", 0)},
            "ended_at": _iso(self.ended_at), "created_at": _iso(self.created_at),
            "expires_at": _iso(self.created_at + 86400), "archived_at": None,
            "cancel_initiated_at": _iso(self.cancel_initiated_at),
            "results_url": results_url if self.status == "ended" else None,
        }  # fmt: skip


class AnthropicApi:
    """The routes; state lives on the emulator (``message_batches``), so ``clear`` resets it."""

    def __init__(self, emulator: Core) -> None:
        self.e = emulator

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/messages/batches", self.create),
            web.get("/v1/messages/batches", self.list),
            web.get("/v1/messages/batches/{id}", self.retrieve),
            web.post("/v1/messages/batches/{id}/cancel", self.cancel),
            web.get("/v1/messages/batches/{id}/results", self.results),
            web.delete("/v1/messages/batches/{id}", self.delete),
            web.post("/v1/messages", self.message),
        ]

    @staticmethod
    def authorized(request: web.Request) -> web.Response | None:
        if not request.headers.get("x-api-key", "").strip():
            return error(401, "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return error(400, "anthropic-version header is required")
        return None

    def _url(self, request: web.Request, batch: MessageBatch) -> str | None:
        if self.e.faults.anthropic_no_results_url:
            return None
        path = f"/v1/messages/batches/{batch.id}/results"
        if self.e.faults.anthropic_results_origin:  # a gateway handing out another origin's URL
            return f"{self.e.faults.anthropic_results_origin.rstrip('/')}{path}"
        return path if self.e.faults.anthropic_relative_results_url else f"{request.url.origin()}{path}"

    def _batch(self, request: web.Request) -> MessageBatch | None:
        batch: MessageBatch | None = self.e.message_batches.get(request.match_info["id"])
        return batch

    async def create(self, request: web.Request) -> web.Response:
        e, faults = self.e, self.e.faults
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error(400, "the body is not JSON")
        refused = await e.refuse_create()
        if refused is not None:
            return error(refused, "Too many batches in progress" if refused == 429 else "Internal server error",
                         retry_after=faults.retry_after if refused == 429 else None)  # fmt: skip
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return error(400, "requests: Field required (a non-empty list)")
        if len(requests) > MAX_REQUESTS:
            return error(400, f"requests: at most {MAX_REQUESTS} requests per batch")
        seen: set[str] = set()
        for i, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                return error(400, f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if custom_id in seen:
                return error(400, f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}")
            seen.add(custom_id)
            if not isinstance(item.get("params"), dict):
                return error(400, f"requests.{i}.params: Field required")
        batch = MessageBatch(e._new_id("msgbatch"), requests, time.time())
        if faults.batch_outcomes:
            outcomes = list(faults.batch_outcomes)
            batch.outcome = outcomes.pop(0)
            faults.batch_outcomes = outcomes
        if batch.outcome == "failed":  # a server validating params at create names the request
            e.stats["batches_failed_validation"] += 1
            return error(400, "requests.0.params.max_tokens: Input should be a valid integer (injected)")
        if faults.create_400 > 0:
            faults.create_400 -= 1
            e.stats["create_400"] += 1
            return error(400, "Your credit balance is too low to access the Anthropic API (injected).")
        batch.unreadable_until = e.unreadable_until()
        e.message_batches[batch.id] = batch
        e.stats["batches_created"] += 1
        e.stats["message_batches_created"] += 1
        batch.task = asyncio.create_task(self._process(batch))
        if await e.lose_create_answer():
            return error(500, "Internal server error")
        return _json(batch.as_json(self._url(request, batch)))

    async def _process(self, batch: MessageBatch) -> None:
        faults, total = self.e.faults, len(batch.requests)
        stop_at = int(total * faults.expire_after_fraction) if batch.outcome in ("expired", "cancelled") else total
        started, done = time.monotonic(), 0
        results: list[bytes] = []
        await asyncio.sleep(0.05)
        while done < total and not batch.cancel_initiated_at and done < stop_at:
            elapsed = time.monotonic() - started
            duration = faults.batch_seconds
            target = min(stop_at, total if duration <= 0 else int(total * elapsed / duration))
            while done < target:
                results.append(self._run(batch, batch.requests[done]))
                done += 1
            if done < total:
                await asyncio.sleep(min(0.05, max(duration / 20, 0.005)))
        left = "canceled" if batch.cancel_initiated_at or batch.outcome == "cancelled" else "expired"
        if batch.cancel_initiated_at and faults.cancel_seconds:
            await asyncio.sleep(faults.cancel_seconds)
        for item in batch.requests[done:]:
            batch.counts[left] = batch.counts.get(left, 0) + 1
            results.append(orjson.dumps({"custom_id": item["custom_id"], "result": {"type": left}}))
        batch.results = list(reversed(results))
        batch.status, batch.ended_at = "ended", time.time()
        self.e.stats["message_batches_ended"] += 1

    def _run(self, batch: MessageBatch, item: dict[str, Any]) -> bytes:
        faults, custom_id, params = self.e.faults, item["custom_id"], item["params"]
        attempt = self.e._seen[custom_id]
        self.e._seen[custom_id] += 1
        problem = params_problem(params)
        poison = faults.reject_lines_containing
        if poison and poison.encode() in orjson.dumps(params):
            problem = "the request was rejected (injected)"
        rolled = faults.item_error_rate and roll(faults.seed, custom_id, attempt, "err") < faults.item_error_rate
        kind = None
        if problem is not None:
            kind, message = "invalid_request_error", problem
        elif rolled or any(custom_id == f or custom_id.endswith(f"_{f}") for f in faults.failing_custom_ids):
            self.e.stats["item_errors"] += 1
            kind = "api_error" if faults.item_error_status >= 500 else "invalid_request_error"
            message = f"The request failed with status {faults.item_error_status} (injected).{faults.item_error_text}"
        if kind is not None:
            batch.counts["errored"] = batch.counts.get("errored", 0) + 1
            result = {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message}}}
            return orjson.dumps({"custom_id": custom_id, "result": result})
        batch.counts["succeeded"] = batch.counts.get("succeeded", 0) + 1
        result = {"type": "succeeded", "message": message_for(params, "batch")}
        return orjson.dumps({"custom_id": custom_id, "result": result})

    async def retrieve(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if batch is None:
            return error(404, "message batch not found")
        self.e.stats["status_reads"] += 1
        if time.monotonic() < batch.unreadable_until:
            self.e.stats["status_500"] += 1
            return error(500, "Internal server error")
        return _json(batch.as_json(self._url(request, batch)))

    async def list(self, request: web.Request) -> web.Response:
        self.e.stats["status_lists"] += 1
        limit = max(1, min(1000, int(request.query.get("limit", "20"))))
        ordered = sorted(self.e.message_batches.values(), key=lambda b: (b.created_at, b.id), reverse=True)
        after = request.query.get("after_id")
        if after:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[:limit]
        return _json({
            "data": [b.as_json(self._url(request, b)) for b in page], "has_more": len(ordered) > limit,
            "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
        })  # fmt: skip

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if batch is None:
            return error(404, "message batch not found")
        if batch.status == "in_progress":
            batch.status, batch.cancel_initiated_at = "canceling", time.time()
            self.e.stats["batches_cancel_requested"] += 1
        return _json(batch.as_json(self._url(request, batch)))

    async def results(self, request: web.Request) -> web.StreamResponse:
        batch = self._batch(request)
        if batch is None:
            return error(404, "message batch not found")
        if batch.status != "ended":
            return error(400, "results are not available until the batch has ended")
        return await self.e.download(request, b"\n".join(batch.results) + b"\n", "application/binary")

    async def delete(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if batch is None:
            return error(404, "message batch not found")
        if batch.status != "ended":
            return error(400, "a batch must end before it can be deleted")
        del self.e.message_batches[batch.id]
        self.e.stats["message_batches_deleted"] += 1
        return _json({"id": batch.id, "type": "message_batch_deleted"})

    async def message(self, request: web.Request) -> web.Response:
        try:
            params = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error(400, "the body is not JSON")
        self.e.stats["sync_requests"] += 1
        self.e.stats["standard_requests"] += 1
        problem = params_problem(params)
        if problem is not None:
            return error(400, problem)
        if self.e.faults.standard_latency:
            await asyncio.sleep(self.e.faults.standard_latency)
        return _json(message_for(params, "standard"))
