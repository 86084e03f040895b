"""What one Gemini batch result (a line of the result file, or an inline response) means for
its request. Pure.

A response is a result, unless its prompt was blocked (no candidates,
``promptFeedback.blockReason``), which is a rejection; an error (a ``google.rpc.Status``) is a
rejection when the request is at fault (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED, or an HTTP 4xx other than
408/429), else another round.
"""

from __future__ import annotations

from typing import Any

from providers.base import MISSING, LineOutcome

__all__ = ["blocked_reason", "classify"]

#: google.rpc.Code values (and names) that mean the request itself is at fault.
_REJECTED_CODES = frozenset({3, 5, 7, 9, 11, 12, 16})
_REJECTED_NAMES = frozenset({
    "INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "UNAUTHENTICATED",
})  # fmt: skip


def _error_outcome(error: dict[str, Any]) -> LineOutcome:
    code, status = error.get("code"), error.get("status")
    if isinstance(code, int) and code >= 100:  # an HTTP status rather than a google.rpc.Code
        rejected = 400 <= code < 500 and code not in (408, 429)
    else:
        rejected = code in _REJECTED_CODES or status in _REJECTED_NAMES
    detail = {"code": status or code, "message": error.get("message") or status or "the request failed"}
    return LineOutcome("fail" if rejected else "retry", error=detail)


def classify(line: dict[str, Any] | None) -> LineOutcome:
    """One result (``{key, response}`` or ``{key, error}``; None when missing) -> a LineOutcome."""
    if line is None:
        return MISSING
    error, response = line.get("error"), line.get("response")
    if isinstance(error, dict):
        return _error_outcome(error)
    if not isinstance(response, dict):
        return LineOutcome("retry", error={"code": "malformed_line", "message": "neither response nor error"})
    blocked = blocked_reason(response)
    if blocked is not None:
        return LineOutcome("fail", error={"code": "prompt_blocked", "message": f"the prompt was blocked: {blocked}"})
    return LineOutcome("ok", body=response)


def blocked_reason(response: dict[str, Any]) -> str | None:
    """Why the prompt was blocked (``promptFeedback.blockReason``) when no candidate came back."""
    if response.get("candidates"):
        return None
    feedback = response.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return str(reason) if reason else None
