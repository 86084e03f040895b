"""Gemini through the google-genai SDK against the emulator: a window's life inline and as a
file, its per-request outcomes, faults, adoption by display name, and one-off flex calls."""

from __future__ import annotations

import pytest

from providers import make_provider, parse_settings
from providers.gemini import classify
from providers.gemini.client import GeminiProvider
from streams.errors import ProviderBackpressure, ProviderRejected

JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "triage", "strict": True, "schema": {
    "type": "object", "properties": {"label": {"type": "string", "enum": ["bug", "billing"]}},
    "required": ["label"], "additionalProperties": False,
}}}  # fmt: skip
GEMINI = {"kind": "gemini"}


def _ids(records) -> list[str]:
    return sorted(r.id for r in records)


def _echoes(results) -> dict[str, str]:
    return {r.id: r.output for r in results}


def _expected_echoes(requests) -> dict[str, str]:
    return {r.id: f"Echo: {r.body['contents'][0]['parts'][0]['text']}" for r in requests}


async def test_an_inline_gemini_window_keeps_results_rejects_invalid_requests_and_retries_the_rest(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.failing_custom_ids = ["0-3"]  # INTERNAL every time: another round, then retries_exhausted
    emu.faults.reject_lines_containing = "POISON"  # INVALID_ARGUMENT: rejected at once
    emu.faults.item_error_rate = 0.2  # INTERNAL now and then: retried
    lane = make_lane(provider=GEMINI, template={"system": "Triage.", "response_format": JSON_FORMAT})
    record, requests = await lane.run(30, poison={7})
    results, dead = lane.fates()
    assert sorted(_ids(results) + _ids(dead)) == _ids(requests), "every event once"
    assert [(d.id, d.reason) for d in dead if d.reason == "provider_rejected"] == [("e7", "provider_rejected")]
    assert [(d.id, d.reason, d.attempts) for d in dead if d.id == "e3"] == [("e3", "retries_exhausted", 3)]
    assert all(r.output["label"] in ("bug", "billing") for r in results), "JSON through responseSchema"
    assert all(r.tokens and r.tokens.input > 0 and r.tokens.output > 0 for r in results)
    assert all(r.usage and "promptTokenCount" in r.usage for r in results), "usageMetadata kept as sent"
    assert {r.service_tier for r in results} == {"batch"} and {r.provider for r in results} == {"default"}
    assert record.status == "done" and record.round > 1
    assert emu.stats["files_uploaded"] == 0, "a small window travels inline"
    assert emu.gemini_batches == {}, "ended batches are deleted once their results are written"


async def test_inline_results_are_matched_by_their_key_not_their_order(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.gemini_inline_reversed = True
    lane = make_lane(provider=GEMINI)
    _, requests = await lane.run(10)
    results, dead = lane.fates()
    assert dead == [] and _echoes(results) == _expected_echoes(requests), "each result is its own request's"


async def test_unkeyed_inline_results_are_not_trusted_and_go_again_as_a_file(emulator, make_lane, caplog):
    emu = emulator.emulator
    emu.faults.gemini_inline_unkeyed = True
    lane = make_lane(provider=GEMINI)
    record, requests = await lane.run(10)
    results, dead = lane.fates()
    assert dead == [] and _echoes(results) == _expected_echoes(requests)
    assert record.round == 2, "the unmatched results' requests went another round"
    assert emu.stats["files_uploaded"] == 1 and emu.stats["gemini_batches_created"] == 2, "the second as a file"
    assert "carry no key" in caplog.text
    assert isinstance(lane.client, GeminiProvider) and not lane.client.inline_trusted


async def test_a_window_above_inline_bytes_goes_as_a_file_whose_download_is_retried_and_deleted(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.cut_off_downloads = 1
    emu.faults.reject_lines_containing = "POISON"
    lane = make_lane(provider={**GEMINI, "inline_bytes": 0})
    _, requests = await lane.run(12, poison={4})
    results, dead = lane.fates()
    assert [(d.id, d.reason) for d in dead] == [("e4", "provider_rejected")]
    assert _echoes(results) == {k: v for k, v in _expected_echoes(requests).items() if k != "e4"}
    assert emu.stats["files_uploaded"] == 1 and emu.stats["downloads_cut_off"] == 1 and emu.stats["downloads"] == 2
    assert emu.gemini_files == {} and emu.gemini_batches == {}, "input file, result file and batch deleted"


@pytest.mark.parametrize("outcome", ["expired", "cancelled"])
async def test_gemini_expired_or_cancelled_batches_send_the_rest_another_round(emulator, make_lane, outcome):
    emu = emulator.emulator
    emu.faults.batch_outcomes = [outcome]
    lane = make_lane(provider=GEMINI)
    record, requests = await lane.run(20)
    results, dead = lane.fates()
    assert (_ids(results), dead) == (_ids(requests), [])
    assert record.round == 2 and emu.stats["gemini_batches_created"] == 2


@pytest.mark.parametrize("inline_bytes", [20_000_000, 0], ids=["inline", "file"])
async def test_a_gemini_create_refused_or_batch_failed_is_handled_per_shape(emulator, make_lane, inline_bytes):
    emu = emulator.emulator
    emu.faults.batch_outcomes = ["failed"]  # inline: a 400 naming requests[0]; a file: the batch fails whole
    lane = make_lane(provider={**GEMINI, "inline_bytes": inline_bytes})
    _, requests = await lane.run(16)
    results, dead = lane.fates()
    if inline_bytes:
        assert [(d.id, d.reason) for d in dead] == [("e0", "provider_rejected")]
        assert "requests[0]" in dead[0].message
        assert _ids(results) == sorted(r.id for r in requests if r.id != "e0")
    else:
        assert (_ids(results), dead) == (_ids(requests), []), "a failed batch's requests are submitted again"
        assert emu.stats["gemini_batches_created"] == 3, "bisected (no request named): two halves"
        assert emu.gemini_files == {}, "every round's input file and result file deleted"


async def test_a_gemini_batch_whose_create_answer_was_lost_is_adopted_by_its_display_name(emulator, make_lane, caplog):
    emu = emulator.emulator
    emu.faults.batch_seconds = 0.3
    emu.faults.create_500 = 1  # our create makes the batch, then answers 500: its outcome is unknown
    emu.faults.create_429 = 1  # and first, one refusal with a RetryInfo delay
    emu.faults.retry_after = 0.05
    lane = make_lane(provider=GEMINI)
    caplog.set_level("INFO")
    _, requests = await lane.run(12)
    results, dead = lane.fates()
    assert (_ids(results), dead) == (_ids(requests), [])
    assert emu.stats["create_500"] == 1 and emu.stats["create_429"] == 1
    assert emu.stats["gemini_batches_created"] == 1, "adopted, not created again"
    assert "adopted batch batches/" in caplog.text


def _provider(emulator, **extra) -> GeminiProvider:
    entry = {"kind": "gemini", "base_url": emulator.root_url, "api_key": "AIza-test", "max_retries": 0, **extra}
    settings = parse_settings({"providers": {"g": entry}, "pipelines": [
        {"name": "p", "input_topic": "i", "output_topic": "o", "dead_letter_topic": "d", "model": "m"}]})  # fmt: skip
    provider = make_provider("g", settings.named_providers()["g"])
    assert isinstance(provider, GeminiProvider)
    return provider


BODY = {"model": "gemini-2.5-flash", "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"temperature": 0.2, "futureKnob": {"kept": True}}}  # fmt: skip


async def test_one_off_gemini_calls_send_the_body_as_is_and_report_the_tier(emulator):
    emu = emulator.emulator
    provider = _provider(emulator)
    try:
        flex = await provider.call("generateContent", BODY, flex=True, timeout=10)
        standard = await provider.call("generateContent", BODY, flex=False, timeout=10)
        sent = emu.gemini_last_body
        emu.faults.flex_unsupported_models = ["gemini-2.5-flash"]
        with pytest.raises(ProviderRejected) as refused:
            await provider.call("generateContent", BODY, flex=True, timeout=10)
        emu.faults.flex_unsupported_models = []
        emu.faults.flex_429_rate = 1.0
        emu.faults.retry_after = 7
        with pytest.raises(ProviderBackpressure) as busy:
            await provider.call("generateContent", BODY, flex=True, timeout=10)
    finally:
        await provider.close()
    assert sent == {k: v for k, v in BODY.items() if k != "model"}, "as is: a field the SDK does not know kept"
    assert (flex.tier, standard.tier) == ("flex", "standard")
    assert flex.body["candidates"][0]["content"]["parts"][0]["text"] == "Echo: hi"
    assert provider.refuses_flex(refused.value) and refused.value.status_code == 400
    assert busy.value.retry_after == 7, "the RetryInfo delay"
    assert (emu.stats["flex_served"], emu.stats["standard_requests"], emu.stats["flex_429"]) == (1, 1, 1)


async def test_a_gemini_key_is_never_in_an_error(emulator):
    provider = _provider(emulator, api_key="AIza-secret-value")
    try:
        with pytest.raises(ProviderRejected) as refused:
            await provider.call("generateContent", {**BODY, "contents": []}, flex=False, timeout=10)
    finally:
        await provider.close()
    assert "contents is not specified" in str(refused.value) and "AIza-secret-value" not in str(refused.value)


def test_gemini_results_map_to_ok_reject_or_retry():
    ok = {"key": "0-1", "response": {"candidates": [{"content": {"parts": [{"text": "x"}]}}]}}
    assert classify(ok).kind == "ok"
    blocked = {"key": "0-1", "response": {"promptFeedback": {"blockReason": "SAFETY"}}}
    assert (classify(blocked).kind, classify(blocked).message) == ("fail", "the prompt was blocked: SAFETY")
    assert classify({"key": "0-1", "error": {"code": 3, "message": "bad"}}).kind == "fail"
    assert classify({"key": "0-1", "error": {"code": 400, "message": "bad"}}).kind == "fail"
    assert classify({"key": "0-1", "error": {"status": "PERMISSION_DENIED"}}).kind == "fail"
    for transient in ({"code": 13}, {"code": 14}, {"code": 8}, {"code": 4}, {"code": 429}, {"code": 503}):
        assert classify({"key": "0-1", "error": transient}).kind == "retry", transient
    assert classify(None).kind == classify({"key": "0-1"}).kind == "retry"
