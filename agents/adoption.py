"""Finding the batch an earlier create call made for a window round (crash point 3 of
``agents/inflight.py``), so that it is adopted rather than submitted twice."""

from __future__ import annotations

import asyncio
import logging
import time

from providers import Job, Provider
from providers.base import Lookup
from streams.provider_config import ProviderSettings
from streams.records import WindowRecord

log = logging.getLogger(__name__)

#: How far before a window was sealed to look for its batch when adopting one.
ADOPTION_LOOKBACK = 300.0


async def find_created(record: WindowRecord, client: Provider, provider: ProviderSettings, count: int) -> Job | None:
    """The batch of this window round (of ``count`` requests), if a create call (ours or a
    previous owner's) made it.

    A create call recorded as started may still be in flight at the provider (its owner
    crashed or lost the partition mid-call): until ``create_timeout`` after it started,
    keep looking before concluding that no batch exists; and while the provider holds
    batches that may be the round's but cannot be told apart yet (``undecided``), wait for
    them. Where batches cannot be looked up at all (a server that cannot list), the round is
    submitted again.
    """

    async def look() -> Lookup:
        return await client.find(record.tag, created_after=record.sealed_at - ADOPTION_LOOKBACK,
                                 create_started=record.create_started_at, count=count)  # fmt: skip

    found = await look()
    if found.job is not None or record.create_started_at is None:
        return found.job
    if not client.can_find:
        log.warning("%s: a create call started before a restart may have made a batch, which %s cannot look "
                    "up; submitting again (such an orphan batch runs unobserved and is billed)",
                    record.window_id, client.name)  # fmt: skip
        return None
    settle_at = record.create_started_at + provider.create_timeout
    if found.undecided or time.time() < settle_at:
        log.info("%s: a create call may have made a batch; looking for it before submitting again "
                 "(%d candidates still running)", record.window_id, found.undecided)  # fmt: skip
    while found.job is None and (found.undecided or time.time() < settle_at):
        pause = provider.poll_interval
        await asyncio.sleep(pause if found.undecided else min(pause, max(0.05, settle_at - time.time())))
        found = await look()
    return found.job
