"""The enqueued-token quota: rounds wait until they fit beside what is enqueued, a refusal for
the provider's token limit shrinks what is assumed to fit, and the estimate learns from results."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agents.inflight import InFlightWindow
from agents.quota import TokenEstimate, TokenQuota
from streams.records import WindowRecord


@pytest.fixture(autouse=True)
def _quota_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agents.quota")


async def parked(caplog: pytest.LogCaptureFixture, holder: str, task: asyncio.Task[float]) -> None:
    """Return once ``holder``'s round (``task``) has looked for room in the quota: it took its
    tokens (done), or it logged that it waits, and waits without yielding in between."""

    async def looked() -> None:
        while not (task.done() or any(r.getMessage().startswith(f"{holder}: waiting for") for r in caplog.records)):
            await asyncio.sleep(0)

    await asyncio.wait_for(looked(), 1)


async def test_a_round_waits_until_it_fits_and_a_round_alone_always_goes(caplog: pytest.LogCaptureFixture):
    quota = TokenQuota(100)
    await quota.acquire("a", 60)
    second = asyncio.create_task(quota.acquire("b", 60))
    await parked(caplog, "b", second)
    assert not second.done() and quota.enqueued == 60, "60 + 60 does not fit in 100"
    await quota.release("a")
    await asyncio.wait_for(second, 1)
    assert quota.held == {"b": 60}
    await quota.release("b")
    await quota.acquire("huge", 1_000)  # alone: it goes, however large
    assert quota.enqueued == 1_000


async def test_a_waiting_round_is_sized_afresh_by_an_estimate_sharpened_meanwhile(caplog: pytest.LogCaptureFixture):
    quota = TokenQuota(100)
    await quota.acquire("a", 60)
    await quota.acquire("c", 10)
    estimate = {"b": 45}
    waiting = asyncio.create_task(quota.acquire("b", lambda: estimate["b"]))
    await parked(caplog, "b", waiting)
    assert not waiting.done(), "45 beside 70 does not fit in 100"
    estimate["b"] = 30  # results of another round showed fewer tokens per byte
    await quota.release("c")
    await asyncio.wait_for(waiting, 1)  # 30 beside 60 fits; the first estimate (45) would not
    assert quota.held == {"a": 60, "b": 30}


async def test_a_token_limit_refusal_shrinks_what_fits_and_creates_let_it_grow_back(
    caplog: pytest.LogCaptureFixture,
):
    quota = TokenQuota(1_000)
    await quota.acquire("a", 300)
    await quota.acquire("b", 300)
    quota.refused("b")  # the provider's real limit is below 600
    assert quota.fits == 300
    waiting = asyncio.create_task(quota.acquire("b", 300))
    await parked(caplog, "b", waiting)
    assert not waiting.done(), "b waits for a to drain"
    await quota.release("a")
    await asyncio.wait_for(waiting, 1)
    quota.created()
    assert quota.fits == 350, "what was enqueued at a successful create fits, and a twentieth more is tried"
    await asyncio.wait_for(quota.acquire("c", 50), 1)
    for _ in range(30):
        quota.created()
    assert quota.fits == 1_000, "back to the configured limit, never above"


def test_the_estimate_learns_tokens_per_byte_from_results():
    estimate = TokenEstimate()
    assert estimate.of(4_000) == 1_000
    for _ in range(6):
        estimate.learn(4_000, 500)
    assert 490 <= estimate.of(4_000) <= 520


def _record(window_id: str, partition: int, n: int, model: str) -> WindowRecord:
    return WindowRecord(window_id=window_id, pipeline="unit", input_topic="in", group_id="g", partition=partition,
                        endpoint="/v1/chat/completions", model=model, first_offset=0, last_offset=n - 1, count=n,
                        status="sealed", sealed_at=1.0)  # fmt: skip


async def _run_windows(lane, count: int) -> list[InFlightWindow]:
    """``count`` windows of 30 requests, one per partition, run together to ``done``."""
    await lane.services.ledger.load(range(count))
    windows = []
    for partition in range(count):
        requests = lane.requests(30, partition=partition)
        record = await lane.services.ledger.save(_record(f"unit.p{partition}.0-29", partition, 30, lane.cfg.model))
        windows.append(InFlightWindow(record, requests, lane.services))
    await asyncio.gather(*(w.run() for w in windows))
    await lane.client.close()
    return windows


async def test_windows_beyond_the_quota_wait_for_running_batches_instead_of_failing(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.batch_seconds = 0.4
    emu.faults.token_limit = 1  # the first batch created is refused for the provider's token limit
    lane = make_lane(provider={"max_enqueued_tokens": 1_500})  # about one window of 30 requests
    client, running_at_create = lane.client, []
    create = client.create

    async def counting_create(*args, **kwargs):
        running_at_create.append(sum(b.status in ("validating", "in_progress") for b in emu.batches.values()))
        return await create(*args, **kwargs)

    client.create = counting_create  # type: ignore[method-assign]
    windows = await _run_windows(lane, 3)
    results, dead = lane.fates()
    assert (len(results), dead) == (90, [])
    assert all(w.record.status == "done" for w in windows)
    assert max(running_at_create) == 0, f"each window waited for the running batch: {running_at_create}"
    assert emu.stats["batches_failed"] == 1 and len(running_at_create) == 4, "one token-limit refusal, resubmitted"
    quota = lane.services.quotas.of(lane.cfg.model)
    assert quota is not None and quota.enqueued == 0, "every round released what it held"


@pytest.mark.parametrize("gated", [True, False], ids=["with-max_enqueued_tokens", "without"])
async def test_a_backlog_beyond_the_providers_token_limit_drains_without_refusals_when_gated(
    emulator, make_lane, gated
):
    emu = emulator.emulator
    emu.faults.batch_seconds = 0.3
    emu.faults.enqueued_token_limit = 1_000  # about two windows' prompt tokens, of six
    lane = make_lane(provider={"max_enqueued_tokens": 1_000} if gated else {})
    await _run_windows(lane, 6)
    results, dead = lane.fates()
    assert (len(results), dead) == (180, []), "every event once, gated or not"
    if gated:
        assert emu.stats["token_limit_exceeded"] == 0, "rounds waited for room instead of being refused"
    else:
        assert emu.stats["token_limit_exceeded"] > 0, "without the gate the provider refuses rounds"
