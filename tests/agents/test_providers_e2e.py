"""Two providers in one worker, end to end: an Anthropic pipeline and an OpenAI pipeline on the
real broker, each through its official SDK to the emulator, with provider faults and a SIGKILL."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tests.support import TopicReader, pipeline, produce, wait_committed, wait_every_id, wait_until

pytestmark = pytest.mark.kafka

#: Events per pipeline: the short form (CI) 1,000; ``BATCHSTREAM_SOAK=long`` 5,000 (10,000 in all).
PER_PIPELINE = 5_000 if os.environ.get("BATCHSTREAM_SOAK") == "long" else 1_000
RETRY = {"attempts": 4, "backoff_initial": "100ms", "backoff_max": "500ms"}


@pytest.mark.soak
async def test_an_anthropic_and_an_openai_pipeline_in_one_worker_survive_faults_and_a_sigkill(
    bootstrap, emulator, make_topic, configure, start_worker
):
    emu = emulator.emulator
    emu.faults.batch_seconds = 1.0
    emu.faults.item_error_rate = 0.02  # 5xx / api_error items: retry rounds
    emu.faults.batch_outcomes = ["expired", "cancelled"]  # the first two batches end part-way
    emu.faults.create_fail_500 = 1
    emu.faults.cut_off_downloads = 2
    emu.faults.reject_lines_containing = "POISON"  # invalid requests only the provider can judge
    claude_topic = await make_topic("claude", partitions=4)
    gpt_topic = await make_topic("gpt", partitions=4)
    window = {"max_requests": 250, "max_wait": "1s"}
    config, group = configure(
        pipeline("claude", claude_topic, provider="claude", model="claude-haiku-4-5", window=window, retry=RETRY,
                 template={"system": "Triage.", "user": "{text}"}, validate_requests=False),
        pipeline("gpt", gpt_topic, window=window, retry=RETRY, validate_requests=False),
        providers={"claude": {"kind": "anthropic", "base_url": emulator.root_url, "api_key": "sk-ant-test",
                              "poll_interval": 0.2, "max_retries": 0, "create_timeout": 5}},
    )  # fmt: skip
    poisoned = {17, PER_PIPELINE // 2 + 3}

    def values(prefix: str) -> list[dict[str, str]]:
        return [
            {"id": f"{prefix}{i}", "text": "POISON" if i in poisoned else f"ticket {i}"} for i in range(PER_PIPELINE)
        ]

    claude, gpt = values("a"), values("o")
    await produce(bootstrap, claude_topic, claude, keys=[f"k{i}".encode() for i in range(PER_PIPELINE)])
    await produce(bootstrap, gpt_topic, gpt, keys=[f"k{i}".encode() for i in range(PER_PIPELINE)])
    readers = [TopicReader(bootstrap, f"{t}.{s}") for t in (claude_topic, gpt_topic) for s in ("results", "dlq")]
    worker = start_worker(config, "first")
    async with readers[0], readers[1], readers[2], readers[3]:

        async def both_emitting() -> bool:
            enough = PER_PIPELINE // 10
            return len(await readers[0].poll()) >= enough and len(await readers[2].poll()) >= enough

        await wait_until(both_emitting, timeout=180, what="results of both pipelines")
        worker.kill()
        second = start_worker(config, "second")
        await wait_every_id(readers[:2], {v["id"] for v in claude}, timeout=300)
        await wait_every_id(readers[2:], {v["id"] for v in gpt}, timeout=300)
        await wait_committed(bootstrap, group, claude_topic, PER_PIPELINE)
        await wait_committed(bootstrap, group, gpt_topic, PER_PIPELINE)
    assert second.terminate() == 0, second.log()

    for prefix, results, dead, provider in (("a", readers[0], readers[1], "claude"), ("o", readers[2], readers[3],
                                                                                       "default")):  # fmt: skip
        ids = {f"{prefix}{i}" for i in range(PER_PIPELINE)}
        fates = Counter(r["id"] for r in results.values + dead.values)
        assert set(fates) == ids, f"{provider}: every event ends as a result or a dead letter"
        rejected = {d["id"]: d["reason"] for d in dead.values}
        assert rejected == {f"{prefix}{i}": "provider_rejected" for i in poisoned}, f"{provider}: {rejected}"
        assert {r["provider"] for r in results.values} == {provider}
        assert all(r["tokens"]["input"] > 0 and r["tokens"]["output"] > 0 for r in results.values)
        print(f"{provider}: {len(ids)} ids, {sum(n - 1 for n in fates.values())} duplicates after the SIGKILL")
    assert {r["output"][:6] for r in readers[0].values} == {"Echo: "}
    assert emu.stats["message_batches_created"] > 0 and emu.stats["downloads_cut_off"] == 2
    gpt_tags = {k: n for k, n in emu.stats.items() if k.startswith("tag:")}
    assert gpt_tags and all(n == 1 for n in gpt_tags.values()), "no OpenAI window round submitted twice"


async def test_flex_on_anthropic_runs_as_standard_calls_and_says_so_at_start_up(emulator, run_pipeline):
    emulator.emulator.faults.standard_latency = 0.05
    fates = await run_pipeline(
        [{"id": f"f{i}", "text": f"ticket {i}"} for i in range(40)],
        provider="claude", model="claude-haiku-4-5", mode="flex", flex={"fallback": "standard", "concurrency": 8},
        settings={"providers": {"claude": {"kind": "anthropic", "base_url": emulator.root_url, "api_key": "k"}}},
    )  # fmt: skip
    assert sorted(r["id"] for r in fates.results) == sorted(f"f{i}" for i in range(40)) and fates.dead == []
    assert {(r["mode"], r["service_tier"], r["provider"]) for r in fates.results} == {
        ("standard", "standard", "claude")
    }
    assert "has no flex tier: events routed to flex are served by standard calls" in fates.worker.log()
    assert emulator.emulator.stats["standard_requests"] == 40
