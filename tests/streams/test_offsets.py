"""The commit frontier: never past an event whose fate is not durable, whatever the order."""

from __future__ import annotations

import random

import pytest

from streams.offsets import Frontier


def test_a_fresh_partition_commits_nothing_while_its_first_event_is_open():
    frontier = Frontier()
    assert frontier.position is None
    frontier.received(0)  # a good event waiting in an open window
    frontier.received(1)  # a malformed one, dead-lettered at once
    frontier.finished(1)
    assert frontier.position == 0
    frontier.finished(0)
    assert frontier.position == 2


def test_a_resumed_partition_does_not_skip_its_first_event():
    frontier = Frontier()
    for offset in (10, 11, 12):
        frontier.received(offset)
    frontier.finished(11)
    assert frontier.position == 10
    frontier.finished(12)
    assert frontier.position == 10
    frontier.finished(10)
    assert frontier.position == 13


def test_offset_gaps_are_not_events():
    frontier = Frontier()
    for offset in (3, 7, 8):  # 4-6: compacted away or transaction markers
        frontier.received(offset)
    frontier.finished(3)
    assert frontier.position == 7
    frontier.finished(8)
    frontier.finished(7)
    assert frontier.position == 9


def test_unknown_repeated_and_redelivered_offsets_change_nothing():
    frontier = Frontier()
    frontier.received(5)
    frontier.finished(6)  # never received: must not count as finished when it arrives
    assert frontier.received(6)
    assert frontier.position == 5
    frontier.finished(5)
    frontier.finished(5)
    assert frontier.position == 6
    assert not frontier.received(6), "a second delivery within an assignment is ignored"
    assert frontier.pending == 1


def test_a_closed_frontier_commits_nothing_and_ignores_late_answers():
    frontier = Frontier()
    frontier.received(0)
    frontier.close()
    frontier.finished(0)
    assert frontier.position is None
    assert not frontier.received(1)


@pytest.mark.parametrize("seed", range(20))
def test_position_is_the_oldest_unfinished_offset_for_any_order(seed: int):
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(500), 120))
    frontier = Frontier()
    finished: set[int] = set()
    received: list[int] = []
    queue = list(offsets)
    while queue or len(finished) < len(offsets):
        if queue and (rng.random() < 0.5 or len(finished) == len(received)):
            offset = queue.pop(0)
            frontier.received(offset)
            received.append(offset)
        else:
            offset = rng.choice([o for o in received if o not in finished])
            frontier.finished(offset)
            finished.add(offset)
        open_ = [o for o in received if o not in finished]
        expected = open_[0] if open_ else received[-1] + 1
        assert frontier.position == expected
        assert frontier.pending == len(open_)
