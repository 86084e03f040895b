"""What a provider's answer means for one event. Pure.

- a batch result line -> :class:`LineOutcome` (``ok``, ``retry`` or ``fail``), by
  :func:`classify`;
- a synchronous call (flex, or its fallback) -> :data:`FlexOutcome`: :class:`Served`,
  :class:`Failed`, or :class:`ToBatch`;
- a response body -> the useful output (text, parsed JSON, embeddings), by
  :func:`extract_output`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from streams.errors import InvalidOutputError
from streams.models import ReasonCode

RETRIABLE_CODES = frozenset({
    "server_error", "rate_limit_exceeded", "batch_expired", "batch_cancelled", "timeout",
    "internal_error", "service_unavailable", "overloaded",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What one batch result line says about its request."""

    kind: Literal["ok", "retry", "fail"]
    body: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def message(self) -> str:
        error = self.error or {}
        return str(error.get("message") or error.get("code") or "request failed")


def _status_retriable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def classify(line: dict[str, Any] | None) -> LineOutcome:
    """One output- or error-file line (or None when the line is missing) -> a LineOutcome.

    Handles both failure shapes: ``error`` set with ``response`` null, and ``error`` null
    with a non-200 ``response.status_code`` whose body holds the error.
    """
    if line is None:
        return LineOutcome("retry", error={"code": "missing_result", "message": "no result line for this request"})
    error = line.get("error")
    response = line.get("response")
    if isinstance(error, dict):
        kind: Literal["retry", "fail"] = "retry" if error.get("code") in RETRIABLE_CODES else "fail"
        return LineOutcome(kind, error=error)
    if not isinstance(response, dict):
        return LineOutcome("retry", error={"code": "malformed_line", "message": "line has neither response nor error"})
    status = int(response.get("status_code") or 0)
    body = response.get("body") if isinstance(response.get("body"), dict) else {}
    if status == 200:
        return LineOutcome("ok", body=body)
    inner = body.get("error") if isinstance(body, dict) else None
    detail = dict(inner) if isinstance(inner, dict) else {"message": f"HTTP {status}"}
    detail["status_code"] = status
    return LineOutcome("retry" if _status_retriable(status) else "fail", error=detail)


def extract_output(endpoint: str, body: dict[str, Any], wants_json: bool) -> Any:
    """The useful part of a response body: text, parsed JSON, or embeddings."""
    if endpoint == "/v1/embeddings":
        vectors = [item.get("embedding") for item in body.get("data", [])]
        return vectors[0] if len(vectors) == 1 else vectors
    if endpoint == "/v1/responses":
        texts = [
            part.get("text", "")
            for item in body.get("output", [])
            if item.get("type") == "message"
            for part in item.get("content", [])
            if part.get("type") == "output_text"
        ]
        text: str | None = "".join(texts)
    else:
        choices = body.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content")
    if not wants_json:
        return text
    if text is None:
        raise InvalidOutputError("the response has no text to parse as JSON")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidOutputError(f"the response is not valid JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Served:
    """The provider answered: ``mode`` is the path (flex or standard), ``tier`` what it reported
    (None when the response does not say: an OpenAI-compatible server without tiers)."""

    body: dict[str, Any]
    mode: Literal["flex", "standard"]
    tier: str | None
    attempts: int
    started: float
    finished: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The event ends as a dead letter."""

    reason: ReasonCode
    message: str
    attempts: int
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToBatch:
    """Flex had no capacity within the budget and the fallback is ``batch``."""

    attempts: int


FlexOutcome = Served | Failed | ToBatch
