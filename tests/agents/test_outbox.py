"""The outbox: one place for results and dead letters, and a flush that only returns once written."""

from __future__ import annotations

import orjson

from agents.metrics import PipelineMetrics
from agents.outbox import Outbox, stamps
from agents.outcomes import Failed, Served
from agents.state import Ledger
from providers import parse_settings
from sinks import MemorySink
from streams.letters import DeadLetter
from streams.models import Request, Result, Source, decode_event
from streams.offsets import Frontier
from tests.agents.lanes import MemoryBackend
from tests.support import settings_document


def _outbox() -> tuple[Outbox, MemorySink, MemorySink, Request]:
    cfg = parse_settings(settings_document(template={"user": "{text}", "response_format": {"type": "json_object"}}),
                         env={"OPENAI_API_KEY": "sk"}).pipelines[0]  # fmt: skip
    results, dead = MemorySink(Result), MemorySink(DeadLetter)
    request = decode_event(cfg, Source("in", 0, 7, 1_700_000_000_000), b"k", b'{"id": "a", "text": "hi"}')
    assert isinstance(request, Request)
    return Outbox(cfg, results, dead, PipelineMetrics("outbox-test")), results, dead, request


def _chat(content: str) -> dict:
    return {"choices": [{"message": {"content": content}}], "usage": {"total_tokens": 3}}


async def test_a_result_whose_output_is_not_the_json_asked_for_is_an_invalid_output_dead_letter():
    outbox, results, dead, request = _outbox()
    served = Served(_chat("not json"), "flex", "flex", attempts=2, started=1.0, finished=2.0)
    outbox.served(request, served, batch_id=None, submitted=None, rounds=1)
    outbox.result(
        request, _chat("{oops"), attempts=3, batch_id="b1", timestamps=stamps(request, submitted=1, completed=2)
    )
    await outbox.flush()
    assert results.values == []
    letters = [v for v in dead.values if isinstance(v, DeadLetter)]
    assert [(d.reason, d.attempts, d.batch_id) for d in letters] == [
        ("invalid_output", 3, None),
        ("invalid_output", 3, "b1"),
    ]
    assert all(d.event == {"id": "a", "text": "hi"} and d.source.offset == 7 for d in letters)


async def test_served_and_failed_outcomes_become_a_result_and_a_dead_letter():
    outbox, results, dead, request = _outbox()
    outbox.served(request, Served(_chat('{"x": 1}'), "standard", None, 1, 10.0, 12.0), batch_id=None, submitted=None,
                  rounds=0)  # fmt: skip
    outbox.served(request, Failed("flex_unavailable", "no capacity", 4), batch_id=None, submitted=None, rounds=0)
    await outbox.flush()
    [result] = [v for v in results.values if isinstance(v, Result)]
    assert (result.output, result.mode, result.service_tier) == ({"x": 1}, "standard", None)
    assert (result.timestamps.received, result.timestamps.submitted, result.timestamps.completed) == (1.7e9, 10.0, 12.0)
    assert results.records[0][0] == b"k", "the Kafka key is kept"
    [letter] = dead.values
    assert isinstance(letter, DeadLetter) and (letter.reason, letter.attempts) == ("flex_unavailable", 4)


async def test_mark_until_written_retries_until_the_sink_takes_the_records():
    outbox, results, _, request = _outbox()
    results.fail_next = 2
    unit = outbox.unit()
    unit.result(request, _chat('{"ok": true}'), attempts=1, batch_id="b", timestamps=stamps(request, submitted=None,
                completed=None))  # fmt: skip
    assert await Ledger(MemoryBackend()).mark_until_written(0, [0], unit, "a", frontier=Frontier())
    assert [v.output for v in results.values if isinstance(v, Result)] == [{"ok": True}]
    assert results.fail_next == 0


async def test_every_result_carries_its_cost_at_the_path_that_served_it():
    outbox, results, _, request = _outbox()
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 100_000}
    body = {"choices": [{"message": {"content": '{"x": 1}'}}], "usage": usage}
    outbox.result(request, body, attempts=1, batch_id="b", timestamps=stamps(request, submitted=1, completed=2))
    outbox.served(request, Served(body, "standard", "default", 1, 1.0, 2.0), batch_id=None, submitted=None, rounds=0)
    await outbox.flush()
    costs = [(r.mode, r.cost.paid, r.cost.realtime) for r in results.values if isinstance(r, Result) and r.cost]
    # gpt-5-mini: 1M input tokens at $0.25, 100k output tokens at $2.00 per million
    assert costs == [("batch", 0.225, 0.45), ("standard", 0.45, 0.45)]


async def test_a_result_record_is_the_result_schema_field_for_field():
    outbox, results, _, request = _outbox()
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    outbox.result(request, {"choices": [{"message": {"content": '{"x": 1}'}}], "usage": usage}, attempts=1,
                  batch_id="b", timestamps=stamps(request, submitted=1.5, completed=2.5))  # fmt: skip
    outbox.result(request, {"choices": [{"message": {"content": "[]"}}], "usage": ["not", "a", "dict"]}, attempts=1,
                  batch_id=None, timestamps=stamps(request, submitted=None, completed=None))  # fmt: skip
    await outbox.flush()
    for _, raw in results.records:
        written = orjson.loads(raw)
        assert Result.model_validate_json(raw).model_dump(mode="json") == written, "no field missing, none extra"
    first, second = (orjson.loads(raw) for _, raw in results.records)
    assert first["tokens"] == {"input": 10, "output": 5} and first["cost"]["paid"] > 0
    assert (second["usage"], second["tokens"], second["cost"]) == (None, None, None), "a usage that is not an object"


async def test_mark_until_written_gives_up_once_the_partition_is_revoked():
    outbox, results, _, request = _outbox()
    results.fail_next = 1_000
    unit, frontier = outbox.unit(), Frontier()
    unit.result(request, _chat('{"ok": true}'), attempts=1, batch_id="b", timestamps=stamps(request, submitted=None,
                completed=None))  # fmt: skip
    frontier.close()  # revoked: the partition's next owner reads the event again
    assert not await Ledger(MemoryBackend()).mark_until_written(0, [0], unit, "a", frontier=frontier)
    assert results.records == []
