"""Templates: a plain event rendered into a request body in the shape of the pipeline's
endpoint (OpenAI's chat, responses and embeddings, Anthropic's Messages, Gemini's
generateContent), and whether that body asks for JSON output. Pure."""

from __future__ import annotations

from typing import Any

import orjson

from streams.config import PipelineSettings

#: Anthropic's Messages endpoint (the ``/v1/`` others are OpenAI's).
MESSAGES = "/v1/messages"
#: Gemini's ``models/{model}:generateContent``: a body is a ``GenerateContentRequest`` (REST
#: names: ``contents``, ``systemInstruction``, ``generationConfig``, ...) plus ``model``.
GENERATE = "generateContent"


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def render_body(cfg: PipelineSettings, event: dict[str, Any]) -> dict[str, Any]:
    template = cfg.template
    fields = _Missing(event)
    user = template.user.format_map(fields) if template.user else orjson.dumps(event).decode()
    if cfg.endpoint == "/v1/embeddings":
        return {"model": cfg.model, "input": user, **template.parameters}
    if cfg.endpoint == MESSAGES:
        return _messages_body(cfg, fields, user)
    if cfg.endpoint == GENERATE:
        return _generate_body(cfg, fields, user)
    messages: list[dict[str, str]] = []
    if template.system:
        messages.append({"role": "system", "content": template.system.format_map(fields)})
    messages.append({"role": "user", "content": user})
    if cfg.endpoint == "/v1/responses":
        body: dict[str, Any] = {"model": cfg.model, "input": messages}
        if template.response_format:
            body["text"] = {"format": _responses_format(template.response_format)}
    else:
        body = {"model": cfg.model, "messages": messages}
        if template.response_format:
            body["response_format"] = template.response_format
    body.update(template.parameters)
    return body


def _messages_body(cfg: PipelineSettings, fields: _Missing, user: str) -> dict[str, Any]:
    """Anthropic's shape: ``system`` apart from ``messages``, ``max_tokens`` required, and JSON
    output through a tool the model must call (its input is the output)."""
    template = cfg.template
    body: dict[str, Any] = {"model": cfg.model, "max_tokens": cfg.max_tokens,
                            "messages": [{"role": "user", "content": user}]}  # fmt: skip
    if template.system:
        body["system"] = template.system.format_map(fields)
    if template.response_format:
        body.update(json_tool(template.response_format))
    body.update(template.parameters)
    return body


def _generate_body(cfg: PipelineSettings, fields: _Missing, user: str) -> dict[str, Any]:
    """Gemini's shape: ``contents`` of parts, ``systemInstruction`` apart, and JSON output through
    ``generationConfig.responseMimeType`` + ``responseSchema``; ``parameters`` that are request
    fields (``safetySettings``, ``tools``...) stay at the top, the others (``temperature``...)
    and a ``generationConfig`` given whole join ``generationConfig``."""
    template = cfg.template
    body: dict[str, Any] = {"model": cfg.model, "contents": [{"role": "user", "parts": [{"text": user}]}]}
    if template.system:
        body["systemInstruction"] = {"parts": [{"text": template.system.format_map(fields)}]}
    generation: dict[str, Any] = {}
    if template.response_format:
        generation.update(gemini_json(template.response_format))
    for name, value in template.parameters.items():
        if name == "generationConfig" and isinstance(value, dict):
            generation.update(value)
        elif name in GEMINI_REQUEST_FIELDS:
            body[name] = value
        else:  # temperature, topP, maxOutputTokens, thinkingConfig...: generation settings
            generation[name] = value
    if generation:
        body["generationConfig"] = generation
    return body


#: Top-level fields of Gemini's GenerateContentRequest; any other template parameter is a
#: ``generationConfig`` setting.
GEMINI_REQUEST_FIELDS = frozenset({
    "contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "cachedContent", "labels",
    "serviceTier", "store",
})  # fmt: skip


def gemini_json(response_format: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``response_format`` as Gemini's ``responseMimeType`` (+ ``responseSchema``).

    Gemini's ``responseSchema`` is an OpenAPI subset: keywords it does not know
    (``additionalProperties``, ``$schema``, ``strict``...) are dropped, nested schemas kept.
    """
    generation: dict[str, Any] = {"responseMimeType": "application/json"}
    spec = response_format.get("json_schema") if response_format.get("type") == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if isinstance(schema, dict):
        generation["responseSchema"] = _openapi_schema(schema)
    return generation


#: JSON Schema keywords Gemini's ``responseSchema`` (an OpenAPI 3.0 subset) accepts.
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf",
    "propertyOrdering", "default", "items", "minimum", "maximum",
})  # fmt: skip


def _openapi_schema(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _openapi_schema(sub) if isinstance(sub, dict) else sub for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = _openapi_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [_openapi_schema(sub) if isinstance(sub, dict) else sub for sub in value]
        elif key == "type" and isinstance(value, list):
            kinds = [k for k in value if k != "null"]  # ["string", "null"]: a nullable string
            out[key] = kinds[0] if kinds else "null"
            if "null" in value:
                out["nullable"] = True
        else:
            out[key] = value
    return out


def json_tool(response_format: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``response_format`` as Anthropic ``tools`` + ``tool_choice`` forcing that tool."""
    spec = response_format.get("json_schema") if response_format.get("type") == "json_schema" else None
    spec = spec if isinstance(spec, dict) else {}
    name = str(spec.get("name") or "output")
    tool = {
        "name": name,
        "description": str(spec.get("description") or "Give the answer as this tool's input."),
        "input_schema": spec.get("schema") or {"type": "object"},
    }
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": name}}


def _responses_format(response_format: dict[str, Any]) -> dict[str, Any]:
    # The Responses API flattens chat's {"type": "json_schema", "json_schema": {...}}.
    if response_format.get("type") == "json_schema" and "json_schema" in response_format:
        return {"type": "json_schema", **response_format["json_schema"]}
    return response_format


def wants_json(endpoint: str, body: dict[str, Any]) -> bool:
    if endpoint == GENERATE:
        generation = body.get("generationConfig")
        generation = generation if isinstance(generation, dict) else {}
        mime = generation.get("responseMimeType", generation.get("response_mime_type"))
        return mime == "application/json"
    if endpoint == MESSAGES:
        # JSON through a forced tool, or Anthropic's structured outputs (``output_config.format``,
        # formerly ``output_format``), whose text is the JSON
        choice = body.get("tool_choice")
        config: dict[str, Any] = body["output_config"] if isinstance(body.get("output_config"), dict) else {}
        formats = (config.get("format"), body.get("output_format"))
        structured = any(isinstance(f, dict) and f.get("type") == "json_schema" for f in formats)
        return structured or (isinstance(choice, dict) and choice.get("type") == "tool")
    if endpoint == "/v1/responses":
        fmt = (body.get("text") or {}).get("format") or {}
    else:
        fmt = body.get("response_format") or {}
    return isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")
