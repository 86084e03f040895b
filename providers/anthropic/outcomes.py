"""What one line of a message batch's results means for its request. Pure.

- ``succeeded``: the message is the result;
- ``errored`` with a type the request causes (``invalid_request_error``...): rejected;
  any other error type: another round;
- ``canceled``, ``expired``: not run (and not billed): another round.
"""

from __future__ import annotations

from typing import Any

from providers.base import MISSING, LineOutcome

__all__ = ["classify"]

#: Result error types the request itself causes: retrying cannot help.
_REJECTED_TYPES = frozenset({"invalid_request_error", "request_too_large", "not_found_error"})


def classify(line: dict[str, Any] | None) -> LineOutcome:
    """One result line -> a LineOutcome (a missing line is retried, as for every provider)."""
    if line is None:
        return MISSING
    result: dict[str, Any] = line["result"] if isinstance(line.get("result"), dict) else {}
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        return LineOutcome("ok", body=result["message"])
    if kind == "errored":
        error: dict[str, Any] = result["error"] if isinstance(result.get("error"), dict) else {}
        inner: dict[str, Any] = error["error"] if isinstance(error.get("error"), dict) else error
        detail = {"code": inner.get("type"), "message": inner.get("message") or inner.get("type") or "errored"}
        return LineOutcome("fail" if inner.get("type") in _REJECTED_TYPES else "retry", error=detail)
    if kind in ("canceled", "expired"):
        code = "batch_cancelled" if kind == "canceled" else "batch_expired"
        return LineOutcome("retry", error={"code": code, "message": f"the request was {kind} before it ran"})
    return LineOutcome("retry", error={"code": "malformed_line", "message": f"unexpected result type {kind!r}"})
