"""OpenAI's synchronous endpoints (chat completions, responses, embeddings; Azure OpenAI's
deployments), the flex tier's capacity, and the answer to one request body (:func:`respond`,
which batches answer with too)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from emulator.core import Core, error, json_response
from emulator.outputs import answer_text, count_tokens, digest, last_user_text, roll
from emulator.strict import offers_flex


class OpenAISync:
    """Synchronous calls, with the flex tier's faults."""

    def __init__(self, core: Core) -> None:
        self.e = core

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.sync_endpoint),
            web.post("/v1/responses", self.sync_endpoint),
            web.post("/v1/embeddings", self.sync_endpoint),
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
            return error(400, "We could not parse the JSON body of your request.")
        self.e.stats["sync_requests"] += 1
        if deployment is not None and isinstance(body, dict):
            body["model"] = deployment
        if isinstance(body, dict) and body.get("service_tier") == "flex":
            refusal = await self._flex_gate(endpoint, body)
            if refusal is not None:
                return refusal
        elif self.e.faults.standard_latency:
            await asyncio.sleep(self.e.faults.standard_latency)
        if isinstance(body, dict) and body.get("service_tier") != "flex":
            self.e.stats["standard_requests"] += 1
        status, payload = respond(self.e, endpoint, body, custom_id=None)
        if isinstance(body, dict) and body.get("service_tier") == "flex" and status == 200:
            self.e.flex_served_ids[str(payload.get("id"))] += 1
        if self.e.faults.minimal:
            payload.pop("service_tier", None)
        return json_response(payload, status=status)

    async def _flex_gate(self, path: str, body: dict[str, Any]) -> web.Response | None:
        """Flex capacity: unsupported model (400), no capacity (429), or a slow answer."""
        faults = self.e.faults
        model = body.get("model")
        unsupported = model in faults.flex_unsupported_models or not offers_flex(model, faults.flex_models)
        if path == "/v1/embeddings" or unsupported:
            self.e.stats["flex_unsupported"] += 1
            return error(400, f"service_tier 'flex' is not available for model {body.get('model')}",
                          param="service_tier", code="invalid_value")  # fmt: skip
        key = digest(orjson.dumps({k: v for k, v in body.items() if k != "service_tier"}, option=orjson.OPT_SORT_KEYS))
        self.e.flex_calls[key] += 1
        self.e.stats["flex_requests"] += 1
        if faults.flex_429_rate and roll(faults.seed, key, self.e.flex_calls[key], "flex") < faults.flex_429_rate:
            self.e.stats["flex_429"] += 1
            return error(429, "Resource unavailable: flex capacity is exhausted, retry later.",
                          code="resource_unavailable", retry_after=faults.retry_after)  # fmt: skip
        if faults.flex_latency:
            await asyncio.sleep(faults.flex_latency)
        self.e.stats["flex_served"] += 1
        return None


def respond(core: Core, endpoint: str, body: dict[str, Any], *, custom_id: str | None) -> tuple[int, dict[str, Any]]:
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
        text = _maybe_broken(core, answer_text(fmt, prompt, ""), fmt, custom_id or prompt)
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
    text = _maybe_broken(core, answer_text(fmt, prompt, "json_schema"), fmt, custom_id or prompt)
    usage_in, usage_out = count_tokens(messages), count_tokens(text)
    return 200, {
        "id": f"chatcmpl-{digest(prompt) % 10**12:012d}", "object": "chat.completion", "created": created,
        "model": model, "service_tier": tier,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": text, "refusal": None}}],
        "usage": {"prompt_tokens": usage_in, "completion_tokens": usage_out,
                  "total_tokens": usage_in + usage_out},
    }  # fmt: skip


def _maybe_broken(core: Core, text: str, fmt: Any, seed: str) -> str:
    wants_json = isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")
    rate = core.faults.invalid_json_rate
    if wants_json and rate and roll(core.faults.seed, seed, "json") < rate:
        core.stats["invalid_json_outputs"] += 1
        return text[: max(1, len(text) // 2)]
    return text
