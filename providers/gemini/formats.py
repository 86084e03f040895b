"""Gemini's request format: ``models/{model}:generateContent``, a body being a
``GenerateContentRequest`` (REST names: ``contents``, ``systemInstruction``,
``generationConfig``, ...) plus ``model``. Pure; the google-genai SDK's ``Content`` type, used to
check a body, is imported on first use (the SDK is slow to import)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from streams.kinds import Prompt, RequestFormat, text_output
from streams.validation import first_error

__all__ = ["GEMINI_REQUEST_FIELDS", "GENERATE", "gemini_json"]

#: Top-level fields of Gemini's GenerateContentRequest; any other template parameter is a
#: ``generationConfig`` setting.
GEMINI_REQUEST_FIELDS = frozenset({
    "contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "cachedContent", "labels",
    "serviceTier", "store",
})  # fmt: skip
#: Gemini request fields that hold one object.
_GEMINI_OBJECTS = ("systemInstruction", "generationConfig", "toolConfig")


@cache
def _content() -> TypeAdapter[Any]:
    """Gemini's ``Content`` (role and parts), from the google-genai SDK."""
    from google.genai import types

    return TypeAdapter(types.Content)


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


def _text(body: dict[str, Any]) -> str | None:
    """The first candidate's text parts, without thought summaries; None when there is none."""
    candidates = [c for c in body.get("candidates") or [] if isinstance(c, dict)]
    if not candidates:
        return None
    content = candidates[0].get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts = [str(p["text"]) for p in parts or [] if isinstance(p, dict) and "text" in p and not p.get("thought")]
    return "".join(texts) if texts else None


class Generate(RequestFormat):
    endpoint = "generateContent"

    def render(self, prompt: Prompt) -> dict[str, Any]:
        """``contents`` of parts, ``systemInstruction`` apart, and JSON output through
        ``generationConfig.responseMimeType`` + ``responseSchema``; ``parameters`` that are request
        fields (``safetySettings``, ``tools``...) stay at the top, the others (``temperature``...)
        and a ``generationConfig`` given whole join ``generationConfig``."""
        body: dict[str, Any] = {"model": prompt.model, "contents": [{"role": "user", "parts": [{"text": prompt.user}]}]}
        if (system := prompt.system()) is not None:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        generation: dict[str, Any] = {}
        if prompt.response_format:
            generation.update(gemini_json(prompt.response_format))
        for name, value in prompt.parameters.items():
            if name == "generationConfig" and isinstance(value, dict):
                generation.update(value)
            elif name in GEMINI_REQUEST_FIELDS:
                body[name] = value
            else:  # temperature, topP, maxOutputTokens, thinkingConfig...: generation settings
                generation[name] = value
        if generation:
            body["generationConfig"] = generation
        return body

    def check(self, body: dict[str, Any], *, types: bool) -> str | None:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return "'contents' must be a non-empty list"
        for index, content in enumerate(contents):
            if not isinstance(content, dict):
                return f"'contents.{index}' must be an object"
            parts = content.get("parts")
            if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
                return f"'contents.{index}.parts' must be a non-empty list of objects"
            if not types:
                continue
            try:
                _content().validate_python(content)
            except ValidationError as exc:
                problem = first_error(exc, f"contents.{index}")
                if problem is not None:
                    return problem
        for name in _GEMINI_OBJECTS:
            if name in body and not isinstance(body[name], dict):
                return f"'{name}' must be an object"
        return None

    def wants_json(self, body: dict[str, Any]) -> bool:
        generation = body.get("generationConfig")
        generation = generation if isinstance(generation, dict) else {}
        mime = generation.get("responseMimeType", generation.get("response_mime_type"))
        return bool(mime == "application/json")

    def output(self, body: dict[str, Any], wants_json: bool) -> Any:
        return text_output(_text(body), wants_json)


GENERATE = Generate()
