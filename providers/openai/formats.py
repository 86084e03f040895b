"""OpenAI's request formats: chat completions, responses and embeddings (``azure`` serves the
first and the last too). Pure; the openai SDK's request types, used to check a body, are
imported on first use."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter

from streams.kinds import Prompt, RequestFormat, text_output
from streams.validation import check_messages, check_params

__all__ = ["CHAT", "EMBEDDINGS", "RESPONSES"]

#: A Responses request may take its input from one of these instead of ``input``.
RESPONSES_WITHOUT_INPUT = ("prompt", "previous_response_id", "conversation")


@cache
def _params(endpoint: str) -> TypeAdapter[Any]:
    from openai.types import embedding_create_params
    from openai.types.chat import completion_create_params
    from openai.types.responses import response_create_params

    return TypeAdapter({
        "/v1/chat/completions": completion_create_params.CompletionCreateParamsNonStreaming,
        "/v1/responses": response_create_params.ResponseCreateParamsNonStreaming,
        "/v1/embeddings": embedding_create_params.EmbeddingCreateParams,
    }[endpoint])  # fmt: skip


@cache
def _roles() -> dict[str, TypeAdapter[Any]]:
    from openai.types.chat import (
        ChatCompletionAssistantMessageParam,
        ChatCompletionDeveloperMessageParam,
        ChatCompletionFunctionMessageParam,
        ChatCompletionSystemMessageParam,
        ChatCompletionToolMessageParam,
        ChatCompletionUserMessageParam,
    )

    return {
        "developer": TypeAdapter(ChatCompletionDeveloperMessageParam),
        "system": TypeAdapter(ChatCompletionSystemMessageParam),
        "user": TypeAdapter(ChatCompletionUserMessageParam),
        "assistant": TypeAdapter(ChatCompletionAssistantMessageParam),
        "tool": TypeAdapter(ChatCompletionToolMessageParam),
        "function": TypeAdapter(ChatCompletionFunctionMessageParam),
    }


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if (system := prompt.system()) is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt.user})
    return messages


def _wants_json(fmt: Any) -> bool:
    return isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")


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


def _check_input_body(endpoint: str, body: dict[str, Any], *, types: bool) -> str | None:
    """The checks of the endpoints whose body carries an ``input`` (responses, embeddings)."""
    problem = _check_input(endpoint, body)
    if problem is not None or not types:
        return problem
    return check_params(_params(endpoint), body)


class Chat(RequestFormat):
    endpoint = "/v1/chat/completions"

    def render(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {"model": prompt.model, "messages": _messages(prompt)}
        if prompt.response_format:
            body["response_format"] = prompt.response_format
        body.update(prompt.parameters)
        return body

    def check(self, body: dict[str, Any], *, types: bool) -> str | None:
        problem = check_messages(body, _roles(), types=types)
        if problem is not None or not types:
            return problem
        return check_params(_params(self.endpoint), body)

    def wants_json(self, body: dict[str, Any]) -> bool:
        return _wants_json(body.get("response_format") or {})

    def output(self, body: dict[str, Any], wants_json: bool) -> Any:
        choices = body.get("choices") or [{}]
        return text_output((choices[0].get("message") or {}).get("content"), wants_json)


class Responses(RequestFormat):
    endpoint = "/v1/responses"

    def render(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {"model": prompt.model, "input": _messages(prompt)}
        if prompt.response_format:
            body["text"] = {"format": _responses_format(prompt.response_format)}
        body.update(prompt.parameters)
        return body

    def check(self, body: dict[str, Any], *, types: bool) -> str | None:
        return _check_input_body(self.endpoint, body, types=types)

    def wants_json(self, body: dict[str, Any]) -> bool:
        return _wants_json((body.get("text") or {}).get("format") or {})

    def output(self, body: dict[str, Any], wants_json: bool) -> Any:
        texts = [
            part.get("text", "")
            for item in body.get("output", [])
            if item.get("type") == "message"
            for part in item.get("content", [])
            if part.get("type") == "output_text"
        ]
        return text_output("".join(texts), wants_json)


def _responses_format(response_format: dict[str, Any]) -> dict[str, Any]:
    # The Responses API flattens chat's {"type": "json_schema", "json_schema": {...}}.
    if response_format.get("type") == "json_schema" and "json_schema" in response_format:
        return {"type": "json_schema", **response_format["json_schema"]}
    return response_format


class Embeddings(RequestFormat):
    endpoint = "/v1/embeddings"
    flex = False

    def render(self, prompt: Prompt) -> dict[str, Any]:
        return {"model": prompt.model, "input": prompt.user, **prompt.parameters}

    def check(self, body: dict[str, Any], *, types: bool) -> str | None:
        return _check_input_body(self.endpoint, body, types=types)

    def wants_json(self, body: dict[str, Any]) -> bool:
        return _wants_json(body.get("response_format") or {})

    def output(self, body: dict[str, Any], wants_json: bool) -> Any:
        vectors = [item.get("embedding") for item in body.get("data", [])]
        return vectors[0] if len(vectors) == 1 else vectors


CHAT, RESPONSES, EMBEDDINGS = Chat(), Responses(), Embeddings()
