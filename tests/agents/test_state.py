"""Window records: which replayed events a record covers. Pure, no broker."""

from __future__ import annotations

import pytest

from agents.state import WindowRecord, runs
from streams.models import Request, Source


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
    assert {o for o in range(10) if record.covers(req(o))} == covered
    assert not record.covers(req(3, model="other"))
    assert WindowRecord.model_validate_json(record.dumps()) == record
