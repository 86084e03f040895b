"""Three providers in one worker, end to end: an Anthropic, a Gemini and an OpenAI pipeline on
the real broker, each through its official SDK to the emulator, with provider faults and a
SIGKILL; and flex on the providers that have it and on one that has not."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tests.support import TopicReader, pipeline, produce, wait_committed, wait_every_id, wait_until

pytestmark = pytest.mark.kafka

#: Events per pipeline: the short form (CI) 1,000; ``BATCHSTREAM_SOAK=long`` 5,000 (15,000 in all).
PER_PIPELINE = 5_000 if os.environ.get("BATCHSTREAM_SOAK") == "long" else 1_000
#: The long form runs it under exactly_once too.
GUARANTEES = ["at_least_once", "exactly_once"] if os.environ.get("BATCHSTREAM_SOAK") == "long" else ["at_least_once"]
RETRY = {"attempts": 4, "backoff_initial": "100ms", "backoff_max": "500ms"}


@pytest.mark.soak
@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_anthropic_gemini_and_openai_pipelines_in_one_worker_survive_faults_and_a_sigkill(
    bootstrap, emulator, make_topic, configure, start_worker, guarantee
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
    gemini_topic = await make_topic("gemini", partitions=4)
    # About one window kept in memory per pipeline: the others read their events back when their batch ends.
    window, held = {"max_requests": 250, "max_wait": "1s"}, 300
    config, group = configure(
        pipeline("claude", claude_topic, provider="claude", model="claude-haiku-4-5", window=window, retry=RETRY,
                 template={"system": "Triage.", "user": "{text}"}, validate_requests=False, max_held_requests=held),
        pipeline("gpt", gpt_topic, window=window, retry=RETRY, validate_requests=False, max_held_requests=held),
        # Full windows go up as files (over inline_bytes), smaller rounds inline.
        pipeline("gemini", gemini_topic, provider="gem", model="gemini-2.5-flash", window=window, retry=RETRY,
                 template={"system": "Triage.", "user": "{text}"}, validate_requests=False, max_held_requests=held),
        providers={"claude": {"kind": "anthropic", "base_url": emulator.root_url, "api_key": "sk-ant-test",
                              "poll_interval": 0.2, "max_retries": 0, "create_timeout": 5},
                   "gem": {"kind": "gemini", "base_url": emulator.root_url, "api_key": "AIza-test",
                           "poll_interval": 0.2, "max_retries": 0, "create_timeout": 5, "inline_bytes": "20kB"}},
        processing_guarantee=guarantee,
    )  # fmt: skip
    poisoned = {17, PER_PIPELINE // 2 + 3}

    def values(prefix: str) -> list[dict[str, str]]:
        return [
            {"id": f"{prefix}{i}", "text": "POISON" if i in poisoned else f"ticket {i}"} for i in range(PER_PIPELINE)
        ]

    claude, gpt, gemini = values("a"), values("o"), values("g")
    keys = [f"k{i}".encode() for i in range(PER_PIPELINE)]
    for topic, events in ((claude_topic, claude), (gpt_topic, gpt), (gemini_topic, gemini)):
        await produce(bootstrap, topic, events, keys=keys)
    topics = (claude_topic, gpt_topic, gemini_topic)
    readers = [TopicReader(bootstrap, f"{t}.{s}") for t in topics for s in ("results", "dlq")]
    worker = start_worker(config, "first")
    async with readers[0], readers[1], readers[2], readers[3], readers[4], readers[5]:

        async def all_emitting() -> bool:
            enough = PER_PIPELINE // 10
            return all([len(await readers[i].poll()) >= enough for i in (0, 2, 4)])

        await wait_until(all_emitting, timeout=180, what="results of every pipeline")
        worker.kill()
        second = start_worker(config, "second")
        for i, (topic, events) in enumerate(zip(topics, (claude, gpt, gemini), strict=True)):
            await wait_every_id(readers[2 * i : 2 * i + 2], {v["id"] for v in events}, timeout=300)
            await wait_committed(bootstrap, group, topic, PER_PIPELINE)
    assert second.terminate() == 0, second.log()

    for prefix, results, dead, provider in (("a", readers[0], readers[1], "claude"),
                                            ("o", readers[2], readers[3], "default"),
                                            ("g", readers[4], readers[5], "gem")):  # fmt: skip
        ids = {f"{prefix}{i}" for i in range(PER_PIPELINE)}
        fates = Counter(r["id"] for r in results.values + dead.values)
        assert set(fates) == ids, f"{provider}: every event ends as a result or a dead letter"
        rejected = {d["id"]: d["reason"] for d in dead.values}
        assert rejected == {f"{prefix}{i}": "provider_rejected" for i in poisoned}, f"{provider}: {rejected}"
        assert {r["provider"] for r in results.values} == {provider}
        assert all(r["tokens"]["input"] > 0 and r["tokens"]["output"] > 0 for r in results.values)
        duplicates = sum(n - 1 for n in fates.values())
        print(f"{provider} ({guarantee}): {len(ids)} ids, {duplicates} duplicates after the SIGKILL")
        if guarantee == "exactly_once":
            assert duplicates == 0, f"{provider}: read_committed sees each event once"
    assert {r["output"][:6] for r in readers[0].values + readers[4].values} == {"Echo: "}
    assert all(r["output"] == f"Echo: {r['id'].replace('g', 'ticket ')}" for r in readers[4].values), "keyed"
    assert emu.stats["message_batches_created"] > 0 and emu.stats["downloads_cut_off"] == 2
    assert emu.stats["gemini_batches_created"] > 0 and emu.stats["files_uploaded"] > 0
    gpt_tags = {k: n for k, n in emu.stats.items() if k.startswith("tag:")}
    assert gpt_tags and all(n == 1 for n in gpt_tags.values()), "no OpenAI or Gemini window round submitted twice"


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


async def test_flex_on_gemini_is_served_at_the_flex_tier_and_falls_back_when_refused(emulator, run_pipeline):
    emu = emulator.emulator
    emu.faults.flex_429_rate = 0.3
    emu.faults.retry_after = 0.01
    fates = await run_pipeline(
        [{"id": f"f{i}", "text": f"ticket {i}"} for i in range(40)],
        provider="gem", model="gemini-2.5-flash", mode="flex", template={"user": "{text}"},
        flex={"fallback": "standard", "concurrency": 8, "attempts": 2, "backoff_initial": "10ms"},
        settings={"providers": {"gem": {"kind": "gemini", "base_url": emulator.root_url, "api_key": "k"}}},
    )  # fmt: skip
    assert sorted(r["id"] for r in fates.results) == sorted(f"f{i}" for i in range(40)) and fates.dead == []
    served = {(r["mode"], r["service_tier"]) for r in fates.results}
    assert ("flex", "flex") in served and served <= {("flex", "flex"), ("standard", "standard")}, served
    assert sum(r["mode"] == "standard" for r in fates.results) == emu.stats["standard_requests"] > 0
    assert all(r["output"] == f"Echo: ticket {r['id'][1:]}" and r["tokens"]["output"] > 0 for r in fates.results)
