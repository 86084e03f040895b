"""Capacity by quota: the tokens a worker has enqueued at a provider, per model, against its limit.

Providers cap the tokens enqueued in running batches per model (OpenAI: from millions to
billions, by usage tier), not the number of batches. With ``max_enqueued_tokens`` set on a
provider, a window round waits before its create call until its estimated tokens fit beside
the rounds already enqueued for that model (a round alone always goes, however large): windows
wait, they do not fail. The tokens are released when the round's batch ends.

Estimates: a round's input tokens are its requests' bytes times a tokens-per-byte ratio, 0.25
at first (about four bytes per token), then learnt per pipeline from the input tokens the
provider reports on results. A ``token_limit_exceeded`` refusal means what fits is less than
assumed: the quota shrinks to what the other rounds hold, so the refused round waits for them;
each create that succeeds shows that what is enqueued then fits, and the quota grows back by a
twentieth of the configured limit per success, up to that limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from providers.base import LineOutcome
from streams.kinds import UsageKeys
from streams.models import token_counts

log = logging.getLogger(__name__)

#: Tokens per byte of request body before any result reports real usage.
INITIAL_TOKENS_PER_BYTE = 0.25


class TokenQuota:
    """Enqueued tokens of one model at one provider, held per window round."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: What is known to fit: the limit, less after a refusal, back up as creates succeed.
        self.fits = limit
        self.held: dict[str, int] = {}
        self._changed = asyncio.Condition()

    @property
    def enqueued(self) -> int:
        return sum(self.held.values())

    def _room_for(self, holder: str, tokens: int) -> bool:
        others = self.enqueued - self.held.get(holder, 0)
        return others == 0 or others + tokens <= self.fits

    async def acquire(self, holder: str, tokens: int | Callable[[], int]) -> float:
        """Wait until ``tokens`` fit beside the others, then hold them; the seconds waited.

        ``tokens`` may be an estimate to evaluate afresh each time room is looked for: results
        that arrive meanwhile (and release what they held) also sharpen it.
        """
        size = tokens if callable(tokens) else lambda: tokens
        started = asyncio.get_running_loop().time()
        async with self._changed:
            if not self._room_for(holder, size()):
                log.info("%s: waiting for %d tokens to fit beside %d enqueued (quota %d)", holder, size(),
                         self.enqueued - self.held.get(holder, 0), self.fits)  # fmt: skip
            await self._changed.wait_for(lambda: self._room_for(holder, size()))
            self.held[holder] = size()
        return asyncio.get_running_loop().time() - started

    def hold(self, holder: str, tokens: int) -> None:
        """Count a round already enqueued (adopted, or resumed after a restart) without waiting."""
        self.held.setdefault(holder, tokens)

    def created(self) -> None:
        """A create call succeeded: what is enqueued now fits, and a little more is tried next
        (a twentieth of the limit per success, so a shrunk quota finds its way back)."""
        self.fits = min(self.limit, max(self.fits, self.enqueued) + max(1, self.limit // 20))

    def refused(self, holder: str) -> None:
        """The provider refused ``holder``'s round for its enqueued-token limit."""
        others = self.enqueued - self.held.get(holder, 0)
        self.fits = max(1, min(self.fits, others))
        log.info("%s: the provider's enqueued-token limit is below what was assumed; quota now %d",
                 holder, self.fits)  # fmt: skip

    async def release(self, holder: str) -> None:
        if holder in self.held:
            async with self._changed:
                self.held.pop(holder, None)
                self._changed.notify_all()


class Quotas:
    """One provider's quotas, by model (shared by every pipeline of the provider in a worker)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._by_model: dict[str, TokenQuota] = {}

    def of(self, model: str) -> TokenQuota | None:
        if self.limit is None:
            return None
        return self._by_model.setdefault(model, TokenQuota(self.limit))


class TokenEstimate:
    """Input tokens per byte of request body, learnt from results (one per pipeline)."""

    def __init__(self) -> None:
        self.tokens_per_byte = INITIAL_TOKENS_PER_BYTE

    def of(self, nbytes: int) -> int:
        return max(1, round(nbytes * self.tokens_per_byte))

    def learn(self, nbytes: int, input_tokens: int) -> None:
        """Results of ``nbytes`` of requests used ``input_tokens``: move the ratio towards that."""
        if nbytes > 0 and input_tokens > 0:
            observed = input_tokens / nbytes
            self.tokens_per_byte += 0.5 * (observed - self.tokens_per_byte)


class RoundQuota:
    """One window's use of its model's quota: the tokens its current round holds (by window id).

    A round is sized by the bytes of its request lines, so it can wait for the quota without
    its requests in memory.
    """

    def __init__(self, quota: TokenQuota | None, estimate: TokenEstimate, holder: str, usage: UsageKeys) -> None:
        self.quota, self.estimate, self.holder = quota, estimate, holder
        #: Where the provider's kind counts tokens in a result's usage.
        self.usage = usage

    @property
    def gated(self) -> bool:
        return self.quota is not None

    async def acquire(self, nbytes: int) -> float:
        """Wait until the round fits (no quota: at once); the seconds waited."""
        if self.quota is None:
            return 0.0
        return await self.quota.acquire(self.holder, lambda: self.estimate.of(nbytes))

    def hold(self, nbytes: int) -> None:
        if self.quota is not None:
            self.quota.hold(self.holder, self.estimate.of(nbytes))

    def created(self) -> None:
        if self.quota is not None:
            self.quota.created()

    def refused(self) -> None:
        if self.quota is not None:
            self.quota.refused(self.holder)

    async def release(self) -> None:
        if self.quota is not None:
            await self.quota.release(self.holder)

    def learn(self, outcomes: Mapping[str, LineOutcome], nbytes: int, count: int) -> None:
        """Real input tokens of a round's results sharpen the pipeline's tokens-per-byte estimate
        (``nbytes``: the round's request bytes, over its ``count`` requests)."""
        if self.quota is None or count <= 0:
            return  # no quota: nothing uses the estimate
        served = tokens = 0
        for outcome in outcomes.values():
            if outcome.kind == "ok" and outcome.body is not None:
                used = token_counts(self.usage.of(outcome.body), self.usage)
                if used is not None and used[0] > 0:
                    served, tokens = served + 1, tokens + used[0]
        self.estimate.learn(nbytes * served // count, tokens)
