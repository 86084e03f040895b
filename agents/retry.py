"""Retry policy: exponential backoff with jitter, and the one retry-forever loop.

Some steps must eventually succeed or the event they carry would be lost: writing a record
before its event is finished, serving a flex event, moving a window to its next state.
They go through :func:`retry_forever`, which backs off on any error and gives up only when
cancelled (a revocation or a stop, after which the state in Kafka says where to resume).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from streams.errors import ProviderError, redact

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Backoff of the retry-forever loops: from one second up to a minute between tries.
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0


def backoff(attempt: int, *, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: uniform in [c/2, c], c = min(max, initial * 2**(attempt-1))."""
    ceiling = min(maximum, initial * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


def describe(exc: BaseException) -> str:
    """An error for a log line: provider errors as they are, others with their type."""
    if isinstance(exc, ProviderError):
        return str(exc)
    return redact(f"{type(exc).__name__}: {exc}")


async def retry_forever(
    step: Callable[[], Awaitable[T]],
    *,
    what: str,
    initial: float = RETRY_INITIAL,
    maximum: float = RETRY_MAX,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T:
    """Await ``step()`` until it returns, backing off after each failure; only cancellation stops it."""
    failures = 0
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller's event or window must never be dropped
            failures += 1
            delay = backoff(failures, initial=initial, maximum=maximum)
            log.warning("%s: %s; retrying in %.1fs", what, describe(exc), delay)
            if on_failure is not None:
                on_failure(exc)
            await asyncio.sleep(delay)
