"""The emulator through the official openai SDK over HTTP."""

from __future__ import annotations

import asyncio
import io
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
    served = await client.chat.completions.create(model="m", messages=messages, service_tier="flex")
    assert served.service_tier == "flex"
    standard = await client.chat.completions.create(model="m", messages=messages)
    assert standard.service_tier == "default"
    emulator.emulator.faults.flex_429_rate = 1.0
    with pytest.raises(openai.RateLimitError) as refused:
        await client.responses.create(model="m", input="hello", service_tier="flex")
    assert refused.value.code == "resource_unavailable"
    emulator.emulator.faults.flex_unsupported_models = ["old-model"]
    with pytest.raises(openai.BadRequestError) as rejected:
        await client.chat.completions.create(model="old-model", messages=messages, service_tier="flex")
    assert rejected.value.param == "service_tier"
    stats = emulator.emulator.stats
    counts = [stats[k] for k in ("flex_served", "flex_429", "flex_unsupported", "standard_requests")]
    assert counts == [1, 1, 1, 1]
