"""Window records: which replayed events a record covers (pure), and what a load from the state topic restores."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ProducerFenced

from agents.partitions import PartitionState
from agents.store import StateStore, TransactionalStore
from sinks.transactions import Transactions
from streams.models import Request, Source
from streams.records import WindowRecord, runs
from tests.support import produce


def req(offset: int, model: str = "m") -> Request:
    return Request(id=str(offset), key=None, source=Source("in", 0, offset), endpoint="/v1/chat/completions",
                   model=model, body={}, wants_json=False, event={})  # fmt: skip


def test_runs_compress_sorted_offsets() -> None:
    assert runs([7, 1, 3, 2, 9, 8]) == [(1, 3), (7, 9)]
    assert runs([]) == []


@pytest.mark.parametrize(("members", "covered"), [(None, {3, 4, 5, 6, 7}), ([(3, 4), (7, 7)], {3, 4, 7})])
def test_a_window_covers_only_its_members(members: list[tuple[int, int]] | None, covered: set[int]) -> None:
    record = WindowRecord(window_id="w", pipeline="p", partition=0, endpoint="/v1/chat/completions", model="m",
                          first_offset=3, last_offset=7, count=len(covered), status="done", members=members,
                          sealed_at=0.0)  # fmt: skip
    assert {o for o in range(10) if record.holds(o)} == covered
    assert {o for o in range(10) if record.round_filter()(o)} == covered
    assert WindowRecord.model_validate_json(record.dumps()) == record


def record(first: int, last: int, status: str = "done") -> WindowRecord:
    return WindowRecord(window_id=f"w{first}", pipeline="p", partition=0, endpoint="/v1/chat/completions", model="m",
                        first_offset=first, last_offset=last, count=last - first + 1, status=status,  # type: ignore[arg-type]
                        sealed_at=0.0)  # fmt: skip


def test_only_loaded_windows_are_replay_candidates_and_finished_new_ones_are_forgotten() -> None:
    state = PartitionState(0, [record(0, 9), record(10, 19, "submitted")])
    state.loaded()
    assert state.horizon == 19
    assert state.covers(5) and state.covers(15) and not state.covers(20)
    state.put(record(20, 29, "sealed"))
    assert "w20" in state.records and [r.window_id for r in state.unfinished()] == ["w10", "w20"]
    state.put(record(20, 29, "done"))
    assert "w20" not in state.records, "a window finished above the horizon needs no memory"
    state.put(record(10, 19, "done"))
    assert state.covers(15), "a loaded window still recognises its replayed events"


def test_each_queued_group_keeps_its_own_attempt_number() -> None:
    window = record(0, 9, "submitted")
    halves = window.bisected(range(0, 5), range(5, 10), now=1.0)
    assert (halves.offsets, halves.attempts, halves.deferred) == ([0, 1, 2, 3, 4], 1, [([5, 6, 7, 8, 9], 1)])
    second_half = halves.after_round([1, 2], now=2.0)  # {1, 2} failed retriably in the first half
    assert (second_half.offsets, second_half.attempts) == ([5, 6, 7, 8, 9], 1), "a half is not an attempt"
    retry_12 = second_half.after_round([7], now=3.0)
    assert (retry_12.offsets, retry_12.attempts) == ([1, 2], 2)
    retry_7 = retry_12.after_round([], now=4.0)
    assert (retry_7.offsets, retry_7.attempts) == ([7], 2), "offset 7 is on its second try, not its third"
    assert retry_7.after_round([], now=5.0).status == "done"


def test_lines_rejected_leave_the_rest_on_the_same_attempt_and_a_hedge_takes_every_group() -> None:
    window = record(0, 9, "submitted").bisected(range(0, 5), range(5, 10), now=1.0)
    rest = window.resubmitted([0, 1, 3, 4], now=2.0)
    assert (rest.offsets, rest.attempts, rest.failed_batches) == ([0, 1, 3, 4], 1, 2)
    hedged = rest.hedged([0, 1])
    assert (hedged.status, hedged.offsets, hedged.deferred) == ("hedged", [0, 1, 5, 6, 7, 8, 9], [])


def test_a_record_written_before_attempts_existed_counts_them_in_its_round() -> None:
    old = orjson.loads(record(0, 9, "sealed").dumps())
    del old["attempts"]
    old["round"] = 3
    assert WindowRecord.model_validate(old).attempts == 3


@pytest.mark.kafka
async def test_a_load_keeps_done_windows_so_their_replayed_events_are_recognised(bootstrap: str, make_topic: Any,
                                                                                unique: str) -> None:  # fmt: skip
    # The group has committed nothing (a commit held back while the broker was away): the
    # events of the done window will be read again and must be skipped, not windowed anew.
    topic = await make_topic("state")
    group = f"g-{unique}"
    mine = {"input_topic": "in", "group_id": group}
    done, submitted = record(0, 9).model_copy(update=mine), record(10, 19, "submitted").model_copy(update=mine)
    await produce(bootstrap, topic, [done.dumps(), submitted.dumps()], keys=[b"w0", b"w10"], partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:  # the group exists (as a worker's would), with no offset of the input topic
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.commit({TopicPartition(topic, 0): 0})
    finally:
        await consumer.stop()
    store = StateStore(topic, pipeline="p", input_topic="in", bootstrap=bootstrap, group_id=group)
    state = (await store.load([0]))[0]
    assert state.horizon == 19
    assert state.covers(5), "a done window not yet passed by the committed offset recognises its events"
    assert [r.window_id for r in state.unfinished()] == ["w10"]


def test_served_marks_are_replays_up_to_the_horizon_and_go_once_the_committed_offset_passes() -> None:
    state = PartitionState(0, [record(0, 9)])
    state.served = {12: b"m12", 30: b"m30"}
    state.loaded()
    assert state.horizon == 30, "a mark beyond every window still bounds what can be a replay"
    assert state.was_served(12) and state.was_served(30) and not state.was_served(11)
    assert state.forget_done_before(20) == [b"w0", b"m12"]
    assert not state.was_served(12) and state.was_served(30)


def test_a_mark_inside_a_window_not_done_stays_however_far_the_committed_offset_is() -> None:
    # A read-back's dead letter: its window reads its events back after a restart and must see it.
    state = PartitionState(0, [record(10, 19, "submitted")])
    state.served = {15: b"m15", 25: b"m25"}
    state.loaded()
    assert state.forget_done_before(100) == [b"m25"]
    assert state.was_served(15)


@pytest.mark.kafka
async def test_a_transactional_load_sees_committed_marks_only_and_fences_their_previous_writer(
    bootstrap: str, make_topic: Any, unique: str
) -> None:  # fmt: skip
    topic = await make_topic("state")
    group, prefix = f"g-{unique}", f"t-{unique}"

    def store(txns: Transactions) -> TransactionalStore:
        return TransactionalStore(topic, pipeline="p", txns=txns, input_topic="in",
                                  bootstrap=bootstrap, group_id=group)  # fmt: skip

    before = Transactions(prefix, bootstrap, on_fenced=lambda _: None)
    first = store(before)
    await first.load([0])
    await first.mark(0, [3, 7], [])
    producer = before.of(0)._producer  # a mark written but never committed: its worker dies
    await producer.begin_transaction()
    await (await producer.send(topic, orjson.dumps({"served": 9, "partition": 0, "pipeline": "p",
                                                    "input_topic": "in", "group_id": group}),
                               key=first.mark_key(0, 9), partition=0))  # fmt: skip
    after = Transactions(prefix, bootstrap, on_fenced=lambda _: None)
    try:
        state = (await store(after).load([0]))[0]
        assert {o for o in range(10) if state.was_served(o)} == {3, 7}, "the aborted mark is not seen"
        with pytest.raises(ProducerFenced):  # the previous writer can no longer commit it
            await producer.commit_transaction()
    finally:
        await after.close()
        before.partitions.clear()
        await producer.stop()
