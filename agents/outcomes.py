"""What a provider's answer means for one event. Pure.

(A batch result line's meaning, ``ok``, ``retry`` or ``fail``, is each provider's to say:
``providers/<kind>/outcomes.py``.)

- a synchronous call (flex, or its fallback) -> :data:`FlexOutcome`: :class:`Served`,
  :class:`Failed`, or :class:`ToBatch`;
- a response body -> the useful output (text, parsed JSON, embeddings), by
  :func:`extract_output`;
- a batch that failed as a whole -> what to do next (:class:`FailedBatch`), by
  :func:`plan_failed_batch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.kinds import RequestFormat
from streams.models import ReasonCode


def extract_output(fmt: RequestFormat, body: dict[str, Any], wants_json: bool) -> Any:
    """The useful part of a response body of ``fmt``'s endpoint: text, parsed JSON, or embeddings
    (each kind's ``formats.py`` says where it is)."""
    return fmt.output(body, wants_json)


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


#: Failed batches a window may bisect through, per doubling of its size: one poison request
#: costs about one failed half per halving, so this isolates a few of them; a provider that
#: fails every batch ends the window as ``batch_failed`` after a bounded number of tries.
BISECT_FAILURES_PER_HALVING = 4


@dataclass(frozen=True, slots=True)
class FailedBatch:
    """What to do with a batch that failed as a whole (nothing in it ran).

    - ``token_limit``: the provider's enqueued-token quota is full: the same requests, later;
    - ``reject_lines``: the provider named bad lines (``lines``: request index -> error):
      those are rejected, the rest resubmitted;
    - ``bisect``: no line named: the two halves as rounds of their own;
    - ``dead_letter``: every request ends with ``reason`` (one request alone fails its batch:
      it is the culprit; or the bisect budget is spent).
    """

    action: Literal["token_limit", "reject_lines", "bisect", "dead_letter"]
    summary: str
    lines: dict[int, dict[str, Any]] = field(default_factory=dict)
    reason: ReasonCode = "batch_failed"


def lines_named(errors: list[dict[str, Any]], count: int) -> dict[int, dict[str, Any]]:
    """Errors naming a line of the file (1-based), by request index; {} unless every such line is in range."""
    named: dict[int, dict[str, Any]] = {}
    for error in errors:
        line = error.get("line")
        if isinstance(line, int) and not isinstance(line, bool):
            if not 1 <= line <= count:
                return {}
            named.setdefault(line - 1, error)
    return named


def plan_failed_batch(
    errors: list[dict[str, Any]], count: int, *, failed_before: int, window_size: int, lines_trusted: bool = True
) -> FailedBatch:
    """Decide the fate of a failed batch of ``count`` requests from its ``errors.data``.

    ``lines_trusted=False`` (the requests in hand may not be the file's lines, one for one)
    ignores line numbers: bisection finds the culprits instead.
    """
    summary = "; ".join(str(e.get("message") or e.get("code")) for e in errors) or "batch failed"
    if any(e.get("code") == "token_limit_exceeded" for e in errors):
        return FailedBatch("token_limit", summary)
    named = lines_named(errors, count) if lines_trusted else {}
    if named:
        return FailedBatch("reject_lines", summary, lines=named)
    budget = BISECT_FAILURES_PER_HALVING * math.ceil(math.log2(window_size + 1))
    if count > 1 and failed_before < budget:
        return FailedBatch("bisect", summary)
    return FailedBatch("dead_letter", summary, reason="provider_rejected" if count == 1 else "batch_failed")
