"""The state topic's schema: a window record's status is an enum in memory and its bare value on the wire."""

from __future__ import annotations

import orjson
import pytest

from streams.records import Status, WindowRecord

#: A record as the state topic held it when ``status`` was a ``Literal`` of strings (bytes as written).
OLD = (
    b'{"window_id":"p-0-10","pipeline":"p","input_topic":"in","group_id":"g","partition":0,'
    b'"endpoint":"/v1/chat/completions","model":"m","first_offset":10,"last_offset":12,"count":3,'
    b'"status":"hedged","round":2,"offsets":[11,12],"members":null,"batch_id":"batch_1","sealed_at":1.5,'
    b'"submitted_at":2.5,"first_submitted_at":2.0,"create_started_at":null,"input_file_id":null,'
    b'"attempts":2,"failed_batches":0,"deferred":[],"nbytes":300,"task":null}'
)


def test_an_old_record_reads_as_an_enum_and_writes_back_byte_identical() -> None:
    record = WindowRecord.model_validate(orjson.loads(OLD))
    assert record.status is Status.HEDGED
    assert record.dumps() == OLD


@pytest.mark.parametrize("status", list(Status))
def test_every_status_is_written_as_its_bare_value(status: Status) -> None:
    record = WindowRecord.model_validate({**orjson.loads(OLD), "status": status.value})
    assert orjson.loads(record.dumps())["status"] == status.value
    assert f'"status":"{status.value}"'.encode() in record.dumps()
    assert WindowRecord.model_validate(orjson.loads(record.dumps())) == record


def test_each_transition_writes_the_same_bytes_as_its_string_status() -> None:
    record = WindowRecord.model_validate({**orjson.loads(OLD), "status": "sealed", "offsets": None})
    for moved, value in ((record.submitted("b", 3.0), "submitted"), (record.hedged([10]), "hedged"),
                         (record.done(), "done"), (record.after_round([11], 4.0), "sealed")):  # fmt: skip
        assert orjson.loads(moved.dumps())["status"] == value
        assert moved.status == value  # a StrEnum compares equal to its value, as the old strings did
        # written from a transition (no validation) or read back: the same bytes
        assert WindowRecord.model_validate(orjson.loads(moved.dumps())).dumps() == moved.dumps()


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        WindowRecord.model_validate({**orjson.loads(OLD), "status": "late"})
