"""Anthropic's request format: the Messages API (``/v1/messages``). Pure; the anthropic SDK's
request types, used to check a body, are imported on first use (the SDK is slow to import)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter

from streams.kinds import Prompt, RequestFormat, text_output
from streams.validation import check_messages, check_params

__all__ = ["MESSAGES", "json_tool"]


@cache
def _types() -> tuple[TypeAdapter[Any], TypeAdapter[Any]]:
    """Anthropic's params and message types: messages are ``user`` and ``assistant`` only
    (``system`` is a parameter of its own)."""
    from anthropic.types import MessageParam, message_create_params

    return TypeAdapter(message_create_params.MessageCreateParamsNonStreaming), TypeAdapter(MessageParam)


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


class Messages(RequestFormat):
    endpoint = "/v1/messages"
    max_tokens_field = "max_tokens"

    def render(self, prompt: Prompt) -> dict[str, Any]:
        """``system`` apart from ``messages``, ``max_tokens`` required, and JSON output through a
        tool the model must call (its input is the output)."""
        body: dict[str, Any] = {"model": prompt.model, "max_tokens": prompt.max_tokens,
                                "messages": [{"role": "user", "content": prompt.user}]}  # fmt: skip
        if (system := prompt.system()) is not None:
            body["system"] = system
        if prompt.response_format:
            body.update(json_tool(prompt.response_format))
        body.update(prompt.parameters)
        return body

    def check(self, body: dict[str, Any], *, types: bool) -> str | None:
        message = _types()[1]
        problem = check_messages(body, {"user": message, "assistant": message}, types=types)
        if problem is not None or not types:
            return problem
        return check_params(_types()[0], body)

    def wants_json(self, body: dict[str, Any]) -> bool:
        # JSON through a forced tool, or Anthropic's structured outputs (``output_config.format``,
        # formerly ``output_format``), whose text is the JSON
        choice = body.get("tool_choice")
        config: dict[str, Any] = body["output_config"] if isinstance(body.get("output_config"), dict) else {}
        formats = (config.get("format"), body.get("output_format"))
        structured = any(isinstance(f, dict) and f.get("type") == "json_schema" for f in formats)
        return structured or (isinstance(choice, dict) and choice.get("type") == "tool")

    def output(self, body: dict[str, Any], wants_json: bool) -> Any:
        blocks = [b for b in body.get("content") or [] if isinstance(b, dict)]
        tool_input = next((b.get("input") for b in blocks if b.get("type") == "tool_use"), None)
        if wants_json and isinstance(tool_input, dict):
            return tool_input  # JSON output through a forced tool: its input is the answer
        text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
        return text_output(text, wants_json)


MESSAGES = Messages()
