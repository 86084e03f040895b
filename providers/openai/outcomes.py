"""What one line of an OpenAI batch's output or error file means for its request. Pure."""

from __future__ import annotations

from typing import Any

from providers.base import MISSING, RETRIABLE_CODES, LineOutcome

__all__ = ["classify"]


def _status_retriable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def classify(line: dict[str, Any] | None) -> LineOutcome:
    """One output- or error-file line (or None when the line is missing) -> a LineOutcome.

    Handles both failure shapes: ``error`` set with ``response`` null, and ``error`` null
    with a non-200 ``response.status_code`` whose body holds the error.
    """
    if line is None:
        return MISSING
    error = line.get("error")
    response = line.get("response")
    if isinstance(error, dict):
        return LineOutcome("retry" if error.get("code") in RETRIABLE_CODES else "fail", error=error)
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
