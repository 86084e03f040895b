"""Watching many batches: one listing per poll interval tells every waiting window how its batch
stands, so status reads do not grow with the batches in flight; a server that cannot list is
polled batch by batch, as before."""

from __future__ import annotations

import asyncio

import pytest

from agents.metrics import PipelineMetrics
from agents.polling import BatchWatch
from providers import make_provider, parse_settings
from streams.models import Request, Source, decode_event

KINDS = {"openai": "gpt-5-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


async def _watch_batches(emulator, tmp_path, kind: str, count: int, **faults) -> tuple[list, dict[str, int]]:
    emu = emulator.emulator
    emu.faults.batch_seconds = 1.0
    for name, value in faults.items():
        setattr(emu.faults, name, value)
    base = emulator.base_url if kind == "openai" else emulator.root_url
    settings = parse_settings({
        "providers": {"p": {"kind": kind, "base_url": base, "api_key": "k", "poll_interval": 0.1, "max_retries": 0}},
        "pipelines": [{"name": "w", "input_topic": "i", "output_topic": "o", "dead_letter_topic": "d",
                       "model": KINDS[kind]}],
    })  # fmt: skip
    cfg = settings.pipelines[0]
    client = make_provider(*settings.provider_of(cfg))
    ids = []
    try:
        for n in range(count):
            requests = []
            for offset in range(2):
                decoded = decode_event(cfg, Source("i", n, offset), None, b'{"text": "x"}')
                assert isinstance(decoded, Request)
                requests.append(decoded)
            staged = await client.stage(requests, tmp_path / f"{n}.jsonl")
            job = await client.create(requests, staged=staged, endpoint=cfg.endpoint, tag=f"t{n}", metadata={})
            ids.append(job.id)
        before = dict(emu.stats)
        watch = BatchWatch(client, client.settings, cfg.retry, PipelineMetrics(f"polling-{kind}-{count}"))
        ended = await asyncio.gather(*(watch.wait(f"w{n}", batch_id, None) for n, batch_id in enumerate(ids)))
    finally:
        await client.close()
    calls = {name: emu.stats[name] - before.get(name, 0) for name in ("status_reads", "status_lists")}
    return ended, calls


@pytest.mark.parametrize("kind", list(KINDS))
async def test_batches_in_flight_are_watched_through_one_listing_per_interval(emulator, tmp_path, kind):
    ended, calls = await _watch_batches(emulator, tmp_path, kind, 40)
    assert all(job is not None and job.terminal and not hedged for job, hedged in ended)
    # Each batch is read once (its first look); then only the listing: about ten intervals of 0.1 s
    # while the batches run 1 s. Polled one by one, 40 batches would have taken some 400 reads.
    assert calls["status_reads"] <= 40, calls
    assert 0 < calls["status_lists"] < 60, calls


async def test_a_server_that_cannot_list_is_polled_batch_by_batch(emulator, tmp_path):
    ended, calls = await _watch_batches(emulator, tmp_path, "openai", 5, minimal=True)
    assert all(job is not None and job.terminal for job, _ in ended)
    assert calls["status_reads"] > 5 * 3, "several reads of each batch while it runs"
