"""What the real servers refuse, checked as strictly as they do. Independent of batchstream's
own validation (``streams/validation.py``), so tests find out when the two disagree."""

from __future__ import annotations

from typing import Any

#: A Responses request may take its input from one of these instead of ``input``.
STORED_INPUT = ("prompt", "previous_response_id", "conversation")
ROLES = frozenset({"developer", "system", "user", "assistant", "tool", "function"})

#: Models that offer ``service_tier="flex"`` (OpenAI's flex guide, late 2026); a dated
#: snapshot of one (``o3-2025-04-16``) counts too. Other models refuse the parameter (400).
#: Gemini's flex inference (``serviceTier: flex``) is offered on the 2.5 and 3 models.
FLEX_MODELS = (
    "o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5.1", "gpt-5.2", "gpt-5.4-mini",
    "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-3-pro-preview", "gemini-3-flash-preview",
)  # fmt: skip

#: The Batch API's limits: requests per batch, and bytes per input file.
MAX_BATCH_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024


def offers_flex(model: Any, allowed: list[str]) -> bool:
    return isinstance(model, str) and any(model == m or model.startswith(f"{m}-20") for m in allowed)


def body_problem(endpoint: str, body: Any) -> tuple[str, str, str] | None:
    """(code, message, param) when the endpoint would refuse this body; None when it is valid."""
    if not isinstance(body, dict):
        return "invalid_request", "the body must be a JSON object", "body"
    model = body.get("model")
    if model is None:
        return "missing_required_parameter", "Missing required parameter: 'model'.", "model"
    if not isinstance(model, str) or not model:
        return "invalid_type", "Invalid type for 'model': expected a non-empty string.", "model"
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        if messages is None:
            return "missing_required_parameter", "Missing required parameter: 'messages'.", "messages"
        if not isinstance(messages, list) or not messages:
            return "invalid_value", "'messages' must be a non-empty array.", "messages"
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                return "invalid_type", f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]"
            if message.get("role") not in ROLES:
                return "invalid_value", f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role"
            content = message.get("content")
            answered = any(message.get(k) for k in ("tool_calls", "function_call", "refusal", "audio"))
            if content is None and not (message.get("role") == "assistant" and answered):
                return ("missing_required_parameter", f"Missing required parameter: 'messages[{i}].content'.",
                        f"messages[{i}].content")  # fmt: skip
            if content is not None and not isinstance(content, str | list):
                return ("invalid_type", f"Invalid type for 'messages[{i}].content': expected a string or an array.",
                        f"messages[{i}].content")  # fmt: skip
    elif endpoint in ("/v1/responses", "/v1/embeddings"):
        value = body.get("input")
        elsewhere = endpoint == "/v1/responses" and any(k in body for k in STORED_INPUT)
        if value is None and not elsewhere:
            return "missing_required_parameter", "Missing required parameter: 'input'.", "input"
        if value is not None and (not isinstance(value, str | list) or value in ("", [])):
            return "invalid_value", "'input' must be a non-empty string or array.", "input"
    for name in ("temperature", "top_p"):
        if name in body and (not isinstance(body[name], int | float) or isinstance(body[name], bool)):
            return "invalid_type", f"Invalid type for '{name}': expected a number.", name
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens", "n"):
        if name in body and (not isinstance(body[name], int) or isinstance(body[name], bool) or body[name] < 1):
            return "invalid_value", f"Invalid value for '{name}': expected a positive integer.", name
    return None
