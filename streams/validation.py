"""Local validation of request bodies, before they join a window. Pure.

A batch API validates the whole file before it runs anything: one malformed line fails the
whole batch. A request that can be judged here, with the provider's own SDK types, becomes an
``invalid_request`` dead letter at once instead.

The openai package's request types are TypedDicts; pydantic validates them, but it validates
``Iterable`` fields (``messages``) lazily, that is not at all. So the top-level parameters go
through the endpoint's params type, and each message through the type its ``role`` names.

Only structural errors count: a parameter or message field that is missing or of the wrong
type. A value the installed SDK does not list (a new model, effort level, format or tool type)
and anything nested deeper are left to the provider, so a newer API feature is never refused
here: a false refusal would dead-letter a good event.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from openai.types import embedding_create_params
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionDeveloperMessageParam,
    ChatCompletionFunctionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
    completion_create_params,
)
from openai.types.responses import response_create_params
from pydantic import TypeAdapter, ValidationError

#: A Responses request may take its input from one of these instead of ``input``.
RESPONSES_WITHOUT_INPUT = ("prompt", "previous_response_id", "conversation")

_PARAMS: dict[str, TypeAdapter[Any]] = {
    "/v1/chat/completions": TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming),
    "/v1/responses": TypeAdapter(response_create_params.ResponseCreateParamsNonStreaming),
    "/v1/embeddings": TypeAdapter(embedding_create_params.EmbeddingCreateParams),
}


@cache
def _anthropic() -> tuple[TypeAdapter[Any], TypeAdapter[Any]]:
    """Anthropic's params and message types, imported on first use (the SDK is slow to import):
    messages are ``user`` and ``assistant`` only (``system`` is a parameter of its own)."""
    from anthropic.types import MessageParam, message_create_params

    return TypeAdapter(message_create_params.MessageCreateParamsNonStreaming), TypeAdapter(MessageParam)


@cache
def _gemini_content() -> TypeAdapter[Any]:
    """Gemini's ``Content`` (role and parts), from the google-genai SDK, imported on first use."""
    from google.genai import types

    return TypeAdapter(types.Content)


#: Gemini request fields that hold one object.
_GEMINI_OBJECTS = ("systemInstruction", "generationConfig", "toolConfig")


def _check_contents(body: dict[str, Any], types: bool = True) -> str | None:
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
            _gemini_content().validate_python(content)
        except ValidationError as exc:
            problem = _first_error(exc, f"contents.{index}")
            if problem is not None:
                return problem
    for name in _GEMINI_OBJECTS:
        if name in body and not isinstance(body[name], dict):
            return f"'{name}' must be an object"
    return None


_MESSAGES: dict[str, TypeAdapter[Any]] = {
    "developer": TypeAdapter(ChatCompletionDeveloperMessageParam),
    "system": TypeAdapter(ChatCompletionSystemMessageParam),
    "user": TypeAdapter(ChatCompletionUserMessageParam),
    "assistant": TypeAdapter(ChatCompletionAssistantMessageParam),
    "tool": TypeAdapter(ChatCompletionToolMessageParam),
    "function": TypeAdapter(ChatCompletionFunctionMessageParam),
}


#: Error types that mean a wrong shape, not a value the installed SDK happens not to list.
STRUCTURAL = frozenset({
    "missing", "string_type", "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
    "bool_type", "bool_parsing", "dict_type", "list_type",
})  # fmt: skip


def _first_error(exc: ValidationError, prefix: str = "") -> str | None:
    """The first structural error of a field at the top level of the validated object, if any."""
    errors = [
        e for e in exc.errors(include_url=False, include_input=False)
        if len(e["loc"]) == 1 and e["type"] in STRUCTURAL
    ]  # fmt: skip
    if not errors:
        return None
    first = errors[0]
    where = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"'{where}': {first['msg']}{more}"


def _check_input(endpoint: str, body: dict[str, Any]) -> str | None:
    value = body.get("input")
    if value is None and endpoint == "/v1/responses" and any(k in body for k in RESPONSES_WITHOUT_INPUT):
        return None
    if value is None:
        return "'input' is required"
    if value == "" or value == []:
        return "'input' must not be empty"
    if not isinstance(value, str | list):
        return "'input' must be a string or a list"
    return None


def _check_messages(body: dict[str, Any], anthropic: bool = False, types: bool = True) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    roles = {"user": _anthropic()[1], "assistant": _anthropic()[1]} if anthropic else _MESSAGES
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"'messages.{index}' must be an object"
        role = message.get("role")
        adapter = roles.get(role) if isinstance(role, str) else None
        if adapter is None:
            return f"'messages.{index}.role' must be one of {', '.join(roles)}; got {role!r}"
        if not types:
            continue
        try:
            adapter.validate_python(message)
        except ValidationError as exc:
            problem = _first_error(exc, f"messages.{index}")
            if problem is not None:
                return problem
    return None


def check_body(endpoint: str, body: dict[str, Any], *, types: bool = True) -> str | None:
    """Why the provider would refuse this request body, or None when it looks valid.

    ``types=False`` skips the checks against the SDK's request types (the costly part) and
    keeps the others: for bodies rendered from a template whose rendering already passed them,
    since a template fixes every type and only fills in strings.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return "'model' must be a non-empty string"
    if endpoint == "generateContent":
        return _check_contents(body, types)
    if endpoint in ("/v1/chat/completions", "/v1/messages"):
        problem = _check_messages(body, anthropic=endpoint == "/v1/messages", types=types)
    else:
        problem = _check_input(endpoint, body)
    if problem is not None or not types:
        return problem
    adapter = _anthropic()[0] if endpoint == "/v1/messages" else _PARAMS.get(endpoint)
    if adapter is None:
        return None
    try:
        adapter.validate_python(body)
    except ValidationError as exc:
        return _first_error(exc)
    return None
