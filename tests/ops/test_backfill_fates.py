"""``batchstream backfill`` without Kafka: the fates of a backfill topic's records counted by
their position (a bit per offset, duplicates counted once), the input file streamed line by
line as ``bytes.splitlines`` splits it, and the names of backfill topics kept as they were."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from ops.backfill import Bitmap, Fates, file_lines, file_source, source_position, topic_name


def test_a_bitmap_marks_each_offset_of_its_range_once_in_a_bit():
    bitmap = Bitmap(100, 1_000_100)
    assert len(bitmap) == 1_000_000 and len(bitmap.bits) == 125_000
    assert bitmap.add(100) and bitmap.add(1_000_099) and bitmap.add(107) and bitmap.add(108)
    assert not bitmap.add(100) and not bitmap.add(108), "marked already"
    assert not bitmap.add(99) and not bitmap.add(1_000_100), "outside [first, end)"
    assert Bitmap(5, 3).add(4) is False and len(Bitmap(5, 3)) == 0


def test_fates_count_each_position_once_and_the_first_fate_wins():
    fates = Fates.of({0: (0, 4), 1: (10, 13)})  # partition 1 lost offsets 0-9 to retention
    assert (fates.total, fates.covered, fates.missing) == (7, 0, 7)
    cost = {"paid": 0.5, "realtime": 1.0}
    fates.result((0, 0), cost)
    fates.result((0, 0), cost)  # re-emitted (at-least-once): counted once, paid once
    fates.dead_letter((0, 0), "invalid_json")  # the record already has its fate
    fates.dead_letter((0, 1), "invalid_json")
    fates.dead_letter((0, 1), "invalid_json")
    fates.dead_letter((1, 12), "provider_rejected")
    fates.result((1, 12), cost)
    fates.result((1, 5), cost)  # below the partition's first offset: no record of this run
    fates.result((0, 4), cost)  # past the end the follow began with
    fates.result((2, 0), cost)  # a partition the backfill topic does not have
    assert (fates.results, fates.covered, fates.missing) == (1, 3, 4)
    assert dict(fates.reasons) == {"invalid_json": 1, "provider_rejected": 1}
    assert (fates.paid, fates.realtime) == (0.5, 1.0)
    for position in [(0, 2), (0, 3), (1, 10), (1, 11)]:
        fates.result(position, {"paid": None})
    assert (fates.results, fates.missing, fates.paid) == (5, 0, 0.5)


def test_a_fate_is_found_by_its_source_record_in_the_backfill_topic():
    topic = "batchstream.backfill.p.0123456789ab"
    assert source_position({"source": {"topic": topic, "partition": 1, "offset": 7}}, topic) == (1, 7)
    others = [{"topic": "other", "partition": 1, "offset": 7}, {"topic": topic, "partition": 1},
              {"topic": topic, "partition": "1", "offset": 7},
              {"topic": topic, "partition": True, "offset": 7}]  # fmt: skip
    for body in [{}, {"source": None}, *({"source": source} for source in others)]:
        assert source_position(body, topic) is None, body


@given(st.lists(st.sampled_from([b"a", b"{}", b" ", b"\n", b"\r", b"\r\n", b"\t", b"x\x0c"]), max_size=40),
       st.integers(1, 7))  # fmt: skip
def test_a_file_streamed_in_chunks_gives_the_lines_splitlines_gives(pieces, size):
    data = b"".join(pieces)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    assert list(file_lines(chunks)) == [line for line in data.splitlines() if line.strip()]


async def test_a_file_source_is_named_after_its_bytes_and_resumes_at_a_line(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("ops.backfill.CHUNK", 5)
    data = b'{"id": 1}\r\n\n  \n{"id": 2}\r{"id": 3}\n{"id": 4}'
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    source = file_source(path)
    assert source.name == hashlib.sha256(data).hexdigest()[:12] and source.counts == {0: 4}
    rest = [item async for item in source.rest(None, {0: 2})]  # type: ignore[arg-type]
    assert rest == [(0, b'{"id": 3}'), (0, b'{"id": 4}')]


def test_a_topic_range_keeps_the_name_it_had():
    """The name hashes the topic, each partition's first and last chosen offset and the ends, so a
    backfill topic written before keeps serving the same range."""
    spans, ends = {0: (5, 15), 2: (0, 1)}, {0: 20, 1: 0, 2: 1}
    material = {"topic": "in", "spans": {0: [5, 14], 1: None, 2: [0, 0]}, "ends": {0: 20, 1: 0, 2: 1}}
    expected = hashlib.sha256(orjson.dumps(material, option=orjson.OPT_NON_STR_KEYS)).hexdigest()[:12]
    assert topic_name("in", [0, 1, 2], spans, ends) == expected == "58bd5f8ab089"
