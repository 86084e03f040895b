"""The emulator through the official openai SDK over HTTP."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI

from emulator import EmulatorThread

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}, "score": {"type": "integer", "minimum": 1,
          "maximum": 5}}, "required": ["label", "score"]}  # fmt: skip


@pytest.fixture
async def client(emulator: EmulatorThread) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def jsonl(n: int) -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "m", "messages": [{"role": "user", "content": f"q{i}"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}}}) + b"\n"
        for i in range(n))  # fmt: skip


async def run_batch(client: AsyncOpenAI, n: int = 5) -> openai.types.Batch:
    f = await client.files.create(file=("in.jsonl", io.BytesIO(jsonl(n))), purpose="batch")
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"k": "v"})  # fmt: skip
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.05)
        batch = await client.batches.retrieve(batch.id)
    return batch


async def test_batch_roundtrip_json_schema_outputs(client: AsyncOpenAI, emulator: EmulatorThread) -> None:
    emulator.emulator.faults.batch_seconds = 0.2
    batch = await run_batch(client)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == 5
    lines = [orjson.loads(x) for x in (await client.files.content(batch.output_file_id or "")).content.splitlines()]
    assert {x["custom_id"] for x in lines} == {f"c{i}" for i in range(5)}
    for line in lines:
        out = orjson.loads(line["response"]["body"]["choices"][0]["message"]["content"])
        assert out["label"] in ("a", "b") and 1 <= out["score"] <= 5
        assert line["response"]["body"]["usage"]["total_tokens"] > 0
    again = await run_batch(client)
    second = (await client.files.content(again.output_file_id or "")).content.splitlines()
    assert sorted(orjson.loads(x)["response"]["body"]["choices"][0]["message"]["content"] for x in second) == sorted(
        x["response"]["body"]["choices"][0]["message"]["content"] for x in lines
    ), "deterministic"


async def test_list_paginates_and_cancel_keeps_finished_part(client: AsyncOpenAI, emulator: EmulatorThread) -> None:
    emulator.emulator.faults.batch_seconds = 0.01
    for _ in range(3):
        await run_batch(client, 1)
    page = await client.batches.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert len([b async for b in client.batches.list(limit=2)]) == 3
    emulator.emulator.faults.batch_seconds = 2.0
    f = await client.files.create(file=("in.jsonl", io.BytesIO(jsonl(40))), purpose="batch")
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while (batch := await client.batches.retrieve(batch.id)).request_counts.completed < 5:  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    await client.batches.cancel(batch.id)
    while (batch := await client.batches.retrieve(batch.id)).status != "cancelled":
        await asyncio.sleep(0.05)
    errors = (await client.files.content(batch.error_file_id or "")).content.splitlines()
    assert {orjson.loads(x)["error"]["code"] for x in errors} == {"batch_cancelled"}
    done = (await client.files.content(batch.output_file_id or "")).content.splitlines()
    assert len(done) + len(errors) == 40 and len(done) >= 5


async def test_sync_endpoints_and_errors(client: AsyncOpenAI, emulator: EmulatorThread) -> None:
    chat = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
    assert chat.choices[0].message.content == "Echo: hello"
    resp = await client.responses.create(model="m", input="hi")
    assert resp.output_text == "Echo: hi"
    emb = await client.embeddings.create(model="e", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    emulator.emulator.faults.create_429 = 1
    with pytest.raises(openai.RateLimitError):
        await client.batches.create(input_file_id="file_x", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_missing")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{emulator.base_url}/batches")).status_code == 401


async def test_cut_off_download_breaks_the_transfer(client: AsyncOpenAI, emulator: EmulatorThread) -> None:
    emulator.emulator.faults.batch_seconds = 0.01
    batch = await run_batch(client, 20)
    emulator.emulator.faults.cut_off_downloads = 1
    with pytest.raises(openai.APIConnectionError):
        await client.files.content(batch.output_file_id or "")
    assert len((await client.files.content(batch.output_file_id or "")).content.splitlines()) == 20


async def test_flex_calls_report_their_tier_and_can_be_refused(emulator: EmulatorThread, client: AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "hello"}]
    served = await client.chat.completions.create(model="gpt-5-mini", messages=messages, service_tier="flex")
    assert served.service_tier == "flex"
    snapshot = await client.chat.completions.create(model="o3-2025-04-16", messages=messages, service_tier="flex")
    assert snapshot.service_tier == "flex", "a dated snapshot of a flex model offers flex"
    standard = await client.chat.completions.create(model="gpt-5-mini", messages=messages)
    assert standard.service_tier == "default"
    emulator.emulator.faults.flex_429_rate = 1.0
    with pytest.raises(openai.RateLimitError) as refused:
        await client.responses.create(model="gpt-5-mini", input="hello", service_tier="flex")
    assert refused.value.code == "resource_unavailable"
    assert refused.value.response.headers["retry-after"] == "1", "429s say when to come back"
    with pytest.raises(openai.BadRequestError) as rejected:
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages, service_tier="flex")
    assert rejected.value.param == "service_tier", "models outside the flex set refuse it by default"
    stats = emulator.emulator.stats
    counts = [stats[k] for k in ("flex_served", "flex_429", "flex_unsupported", "standard_requests")]
    assert counts == [2, 1, 1, 1]


def lines_of(bodies: list[Any], url: str = "/v1/chat/completions") -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": url, "body": body}) + b"\n"
                    for i, body in enumerate(bodies))  # fmt: skip


async def create(client: AsyncOpenAI, data: bytes) -> openai.types.Batch:
    f = await client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


async def ended(client: AsyncOpenAI, batch: openai.types.Batch) -> openai.types.Batch:
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.02)
        batch = await client.batches.retrieve(batch.id)
    return batch


async def test_a_file_with_bad_lines_fails_whole_naming_them(client: AsyncOpenAI, emulator: EmulatorThread) -> None:
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    bodies: list[Any] = [
        good,
        {"model": "m", "messages": []},
        good,
        {"model": "m", "messages": [{"content": "x"}]},
        {"messages": [{"role": "user", "content": "x"}]},
        {**good, "temperature": "hot"},
        good,
    ]
    batch = await ended(client, await create(client, lines_of(bodies)))
    assert batch.status == "failed" and batch.errors and batch.errors.data
    named = {(e.line, e.code) for e in batch.errors.data}
    assert named == {(2, "invalid_value"), (4, "invalid_value"), (5, "missing_required_parameter"),
                     (6, "invalid_type")}  # fmt: skip
    assert batch.request_counts and batch.request_counts.completed == 0, "nothing ran"
    emulator.emulator.faults.line_numbers = False
    emulator.emulator.faults.reject_lines_containing = "POISON"
    poisoned = [good, {"model": "m", "messages": [{"role": "user", "content": "POISON"}]}]
    batch = await ended(client, await create(client, lines_of(poisoned)))
    assert batch.status == "failed" and batch.errors and batch.errors.data
    assert [(e.line, e.code) for e in batch.errors.data] == [(None, "invalid_request")]


async def test_knobs_for_unreadable_batches_and_failing_calls(client: AsyncOpenAI, emulator: EmulatorThread) -> None:
    faults = emulator.emulator.faults
    faults.unreadable_next, faults.unreadable_seconds = 1, None
    data = lines_of([{"model": "m", "messages": [{"role": "user", "content": "hi"}]}])
    stuck = await create(client, data)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            await client.batches.retrieve(stuck.id)
    readable = await ended(client, await create(client, data))
    assert readable.status == "completed", "only the next N batches are unreadable"
    faults.list_500 = 1
    with pytest.raises(openai.InternalServerError):
        await client.batches.list()
    faults.list_lag = 60
    assert [b.id async for b in client.batches.list()] == [], "new batches are not listed yet"
    faults.upload_500 = 1
    with pytest.raises(openai.InternalServerError):
        await client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    faults.create_fail_500 = 1
    before = len(emulator.emulator.batches)
    with pytest.raises(openai.InternalServerError):
        await create(client, data)
    assert len(emulator.emulator.batches) == before, "a failed create created nothing"


async def test_cancellation_can_take_its_time(client: AsyncOpenAI, emulator: EmulatorThread) -> None:
    faults = emulator.emulator.faults
    faults.batch_seconds, faults.cancel_seconds = 30, 0.5
    batch = await create(client, lines_of([{"model": "m", "messages": [{"role": "user", "content": "hi"}]}] * 3))
    asked = time.monotonic()
    batch = await client.batches.cancel(batch.id)
    assert batch.status == "cancelling"
    assert (await ended(client, batch)).status == "cancelled"
    assert time.monotonic() - asked >= 0.5, "it stayed cancelling for cancel_seconds"


async def test_too_many_requests_fail_the_batch(client: AsyncOpenAI, emulator: EmulatorThread) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    batch = await ended(client, await create(client, lines_of([body] * 50_001)))
    assert batch.status == "failed" and batch.errors and batch.errors.data
    assert [e.code for e in batch.errors.data] == ["too_many_tasks"]


async def test_the_anthropic_sdk_runs_message_batches_against_the_emulator_unchanged(emulator: EmulatorThread) -> None:
    import anthropic

    async with anthropic.AsyncAnthropic(base_url=emulator.root_url, api_key="sk-ant-test", max_retries=0) as sdk:
        params = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "q"}]}
        requests: list[Any] = [{"custom_id": f"c{i}", "params": params} for i in range(4)]
        requests.append({"custom_id": "bad", "params": {"model": "claude-haiku-4-5", "messages": []}})
        batch = await sdk.messages.batches.create(requests=requests)
        assert batch.processing_status == "in_progress" and batch.request_counts.processing == 5
        assert [b.id async for b in sdk.messages.batches.list()] == [batch.id]
        while batch.processing_status != "ended":
            await asyncio.sleep(0.05)
            batch = await sdk.messages.batches.retrieve(batch.id)
        assert (batch.request_counts.succeeded, batch.request_counts.errored) == (4, 1)
        results = {r.custom_id: r.result async for r in await sdk.messages.batches.results(batch.id)}
        assert results["bad"].type == "errored" and results["c0"].type == "succeeded"
        await sdk.messages.batches.delete(batch.id)
        with pytest.raises(anthropic.NotFoundError):
            await sdk.messages.batches.retrieve(batch.id)
        with pytest.raises(anthropic.BadRequestError, match=r"requests\.0\.custom_id"):
            await sdk.messages.batches.create(requests=[{"custom_id": "no spaces", "params": params}])  # type: ignore[list-item]
