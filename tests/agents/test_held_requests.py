"""Requests in memory: a window waiting on the provider keeps its requests only within the
pipeline's budget (``max_held_requests``) and otherwise reads them back when its batch ends.

Provider calls go through the openai SDK to the in-process emulator; the input topic is a list
read by offset, so each test counts the read-backs.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from agents.inflight import InFlightWindow
from agents.rounds import HeldRequests, ResultBudget
from emulator import Faults
from tests.agents.lanes import Lane, ListReader

N = 20


class CountingReader(ListReader):
    def __init__(self, values: list[bytes]) -> None:
        super().__init__(values)
        self.reads = 0

    async def read(self, partition: int, first: int, last: int) -> list[tuple[int, int | None, None, bytes]]:
        self.reads += 1
        return await super().read(partition, first, last)


def _values(n: int) -> list[bytes]:
    return [f'{{"id": "e{o}", "text": "event {o}"}}'.encode() for o in range(n)]


def _with(lane: Lane, held: HeldRequests) -> CountingReader:
    reader = CountingReader(_values(N))
    lane.services = dataclasses.replace(lane.services, reader=reader, held=held)
    return reader


@pytest.mark.parametrize(
    ("budget", "budget_bytes", "reads"),
    [(0, 10**9, 1), (N, 10**9, 0), (N, 500, 1)],
    ids=["beyond-the-budget", "within-it", "within-the-count-beyond-the-bytes"],
)
async def test_a_window_beyond_the_budget_reads_its_requests_back_when_its_batch_ends(
    emulator, make_lane, budget: int, budget_bytes: int, reads: int
):
    lane = make_lane()
    held = HeldRequests(budget, window_size=N, limit_bytes=budget_bytes)
    reader = _with(lane, held)
    record, requests = await lane.run(N)
    results, dead = lane.fates()
    assert record.status == "done" and dead == []
    assert sorted(r.id for r in results) == sorted(r.id for r in requests), "every event has its result"
    assert [r.source.offset for r in results] == sorted(r.source.offset for r in results)
    assert reader.reads == reads
    assert held.held == 0, "a finished window counts nothing in the budget"


def test_read_backs_at_once_are_bounded_by_count_and_by_bytes() -> None:
    """As many windows read back at once as fit the budget whole, by count and by bytes, at least one."""
    assert HeldRequests(50_000, 5_000, limit_bytes=10**9, window_bytes=10**7)._slots == 10
    assert HeldRequests(50_000, 5_000, limit_bytes=2 * 10**7, window_bytes=10**7)._slots == 2
    assert HeldRequests(50_000, 5_000, limit_bytes=10**6, window_bytes=10**7)._slots == 1
    held = HeldRequests(100, 10, limit_bytes=1000, window_bytes=100)
    assert held.keep(50, 900) and not held.keep(1, 101), "the bytes refuse what the count would take"
    held.release(50, 900)
    assert (held.held, held.held_bytes) == (0, 0)


async def test_windows_waiting_on_the_provider_hold_no_more_than_the_budget(emulator, make_lane):
    """Three windows of N events, a budget of one window: while their batches run, one window
    keeps its requests and the other two let theirs go; all three end with every result."""
    emulator.emulator.clear(Faults(batch_seconds=0.5))
    lane = make_lane()
    held = HeldRequests(N, window_size=N)
    reader = _with(lane, held)
    await lane.services.ledger.load([0])
    windows = []
    for w in range(3):
        record = lane.sealed(N).model_copy(update={"window_id": f"unit.p0.w{w}"})
        windows.append(InFlightWindow(await lane.services.ledger.save(record), lane.requests(N), lane.services))
    runs = [asyncio.create_task(w.run()) for w in windows]
    while sum(1 for w in windows if w.record.status == "submitted") < 3:  # until every batch is submitted
        done, _ = await asyncio.wait(runs, timeout=0.01)
        assert not done, "no window ends before all three batches are submitted (0.5 s each)"
    in_memory = [w.requests is not None for w in windows]
    await asyncio.gather(*runs)
    await lane.client.close()
    assert sorted(in_memory) == [False, False, True] and held.held == 0
    assert reader.reads == 2, "the two windows beyond the budget read their requests back"
    results, dead = lane.fates()
    assert len(results) == 3 * N and dead == []


class GappyReader(CountingReader):
    """The input topic after retention or compaction removed some of a window's records."""

    def __init__(self, values: list[bytes], gone: set[int]) -> None:
        super().__init__(values)
        self.gone = gone

    async def read(self, partition: int, first: int, last: int) -> list[tuple[int, int | None, None, bytes]]:
        return [row for row in await super().read(partition, first, last) if row[0] not in self.gone]


async def test_events_gone_from_the_input_topic_at_read_back_are_dead_lettered_once(emulator, make_lane):
    """A window restored from state reads its events back to submit them and again when its batch
    ends (a budget of 0 lets them go while it waits): the events no longer in the topic are
    ``input_gone`` dead letters, once each; every other event has its result."""
    lane = make_lane()
    held = HeldRequests(0, window_size=N)
    reader = GappyReader(_values(N), gone={3, 11})
    lane.services = dataclasses.replace(lane.services, reader=reader, held=held)
    await lane.services.ledger.load([0])
    record = await lane.services.ledger.save(lane.sealed(N))
    window = InFlightWindow(record, None, lane.services)
    await window.run()
    await lane.client.close()
    results, dead = lane.fates()
    assert reader.reads == 2, "read back to submit, and again when the batch ended"
    assert sorted(d.source.offset for d in dead) == [3, 11] and {d.reason for d in dead} == {"input_gone"}
    assert "retention or compaction" in dead[0].message
    assert sorted(r.source.offset for r in results) == [o for o in range(N) if o not in (3, 11)]
    assert window.record.status == "done"


async def test_result_files_read_at_once_are_bounded_by_bytes_without_deadlock() -> None:
    budget = ResultBudget(100)
    first, second, third = budget.grant(), budget.grant(), budget.grant()
    await first.admit(60)
    waiting = asyncio.ensure_future(second.admit(60))  # 60 more would pass 100: waits
    while not budget._waiters:  # until it is seen waiting
        await asyncio.sleep(0)
    assert not waiting.done() and budget.held == 60
    await first.admit(70)  # a later file of a window already reading: never waits (no deadlock)
    assert budget.held == 130
    first.release()
    await asyncio.wait_for(waiting, 5)
    assert budget.held == 60
    second.release()
    await asyncio.wait_for(third.admit(10**9), 5)  # larger than the budget: read alone, counted as all of it
    assert budget.held == 100
    third.release()
    assert budget.held == 0
