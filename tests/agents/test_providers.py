"""Each kind of provider through its official SDK against the emulator: one window's life
(``tests/agents/lanes.py``), the provider's own result shapes, faults and clean-up."""

from __future__ import annotations

import asyncio

import pytest

from providers import make_provider, parse_settings
from providers.anthropic import classify
from streams.errors import ProviderUnavailable

JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "triage", "strict": True, "schema": {
    "type": "object", "properties": {"label": {"type": "string", "enum": ["bug", "billing"]}},
    "required": ["label"], "additionalProperties": False,
}}}  # fmt: skip


def _ids(records) -> list[str]:
    return sorted(r.id for r in records)


async def test_an_anthropic_window_keeps_results_rejects_invalid_requests_and_retries_the_rest(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.failing_custom_ids = ["0-3"]  # errored with a 5xx: another round, then retries_exhausted
    emu.faults.reject_lines_containing = "POISON"  # errored as invalid_request_error: rejected at once
    emu.faults.item_error_rate = 0.2  # errored with api_error now and then: retried
    lane = make_lane(provider={"kind": "anthropic"}, template={"system": "Triage.", "response_format": JSON_FORMAT})
    record, requests = await lane.run(30, poison={7})
    results, dead = lane.fates()
    assert sorted(_ids(results) + _ids(dead)) == _ids(requests), "every event once"
    assert [(d.id, d.reason) for d in dead if d.reason == "provider_rejected"] == [("e7", "provider_rejected")]
    assert [(d.id, d.reason, d.attempts) for d in dead if d.id == "e3"] == [("e3", "retries_exhausted", 3)]
    assert all(r.output["label"] in ("bug", "billing") for r in results), "JSON output is the forced tool's input"
    assert {r.provider for r in results} == {"default"}
    assert all(r.tokens and r.tokens.input > 0 and r.tokens.output > 0 for r in results)
    assert all(r.usage and "input_tokens" in r.usage for r in results), "usage kept as the provider sent it"
    assert record.status == "done" and record.round > 1
    assert emu.message_batches == {}, "ended batches are deleted once their results are written"


@pytest.mark.parametrize("url", ["absolute", "relative", "none"], ids=lambda u: f"{u}-results-url")
async def test_anthropic_results_are_read_from_a_relative_absolute_or_missing_url_and_downloads_retried(
    emulator, make_lane, url
):
    emu = emulator.emulator
    emu.faults.anthropic_relative_results_url = url == "relative"
    emu.faults.anthropic_no_results_url = url == "none"  # read at the documented path
    emu.faults.cut_off_downloads = 1
    lane = make_lane(provider={"kind": "anthropic"})
    _, requests = await lane.run(12)
    results, dead = lane.fates()
    assert (_ids(results), dead) == (_ids(requests), [])
    assert emu.stats["downloads_cut_off"] == 1 and emu.stats["downloads"] == 2


@pytest.mark.parametrize("outcome", ["expired", "cancelled"])
async def test_anthropic_expired_or_canceled_requests_go_another_round(emulator, make_lane, outcome):
    emu = emulator.emulator
    emu.faults.batch_outcomes = [outcome]
    lane = make_lane(provider={"kind": "anthropic"})
    record, requests = await lane.run(20)
    results, dead = lane.fates()
    assert (_ids(results), dead) == (_ids(requests), [])
    assert record.round == 2 and emu.stats["message_batches_created"] == 2


async def test_an_anthropic_create_refused_naming_a_request_rejects_it_and_resubmits_the_rest(emulator, make_lane):
    emu = emulator.emulator
    emu.faults.batch_outcomes = ["failed"]  # the first create answers 400 naming requests.0
    lane = make_lane(provider={"kind": "anthropic"})
    _, requests = await lane.run(16)
    results, dead = lane.fates()
    assert [(d.id, d.reason) for d in dead] == [("e0", "provider_rejected")]
    assert "requests.0.params.max_tokens" in dead[0].message
    assert _ids(results) == sorted(r.id for r in requests if r.id != "e0")
    assert emu.stats["message_batches_created"] == 1


async def test_an_anthropic_create_refused_for_the_account_is_retried_not_dead_lettered(emulator, make_lane, caplog):
    emu = emulator.emulator
    emu.faults.create_400 = 2  # "credit balance too low": names no request
    lane = make_lane(provider={"kind": "anthropic"})
    _, requests = await lane.run(8)
    results, dead = lane.fates()
    assert (_ids(results), dead) == (_ids(requests), [])
    assert emu.stats["create_400"] == 2 and emu.stats["message_batches_created"] == 1
    assert "credit balance is too low" in caplog.text, "the refusal is logged while the window waits"


@pytest.mark.parametrize("url", ["given", "none"], ids=lambda u: f"{u}-results-url")
async def test_an_anthropic_batch_whose_create_answer_was_lost_is_adopted_by_its_mark(emulator, make_lane, caplog, url):
    import anthropic

    emu = emulator.emulator
    emu.faults.batch_seconds = 0.5
    emu.faults.anthropic_no_results_url = url == "none"
    async with anthropic.AsyncAnthropic(base_url=emulator.root_url, api_key="k", max_retries=0) as sdk:
        params = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        await sdk.messages.batches.create(requests=[{"custom_id": f"other_0-{i}", "params": params} for i in range(12)])
    emu.faults.create_500 = 1  # our create makes the batch, then answers 500: its outcome is unknown
    lane = make_lane(provider={"kind": "anthropic"})
    caplog.set_level("INFO")
    _, requests = await lane.run(12)
    results, dead = lane.fates()
    assert (_ids(results), dead) == (_ids(requests), [])
    assert emu.stats["create_500"] == 1
    assert emu.stats["message_batches_created"] == 2, "ours adopted, not created again; the other one left alone"
    assert "adopted batch msgbatch_" in caplog.text


async def test_an_azure_window_uses_deployment_lines_and_reads_an_empty_error_file_as_no_errors(emulator, make_lane):
    emu = emulator.emulator
    lane = make_lane(provider={"kind": "azure"})
    _, requests = await lane.run(15)
    results, dead = lane.fates()
    assert (_ids(results), dead) == (_ids(requests), [])
    batch = next(iter(emu.batches.values()))
    assert batch.azure and batch.line_url == "/chat/completions" and batch.error_file_id is not None
    assert {line["url"] for line in batch.lines} == {"/chat/completions"}
    assert {line["body"]["model"] for line in batch.lines} == {"gpt-4o-batch"}, "the deployment name is the model"
    assert emu.files == {}, "input, output and the empty error file are deleted"


async def test_one_off_calls_of_each_kind_report_the_tier_that_served_them(emulator):
    def provider(kind: str):
        base = {"openai": emulator.base_url}.get(kind, emulator.root_url)
        entry = {"kind": kind, "base_url": base, "api_key": "k", **({"api_version": "v"} if kind == "azure" else {})}
        return make_provider(kind, parse_settings({"providers": {kind: entry}, "pipelines": [
            {"name": "p", "input_topic": "i", "output_topic": "o", "dead_letter_topic": "d", "model": "m"}]}
        ).named_providers()[kind])  # fmt: skip

    anthropic, openai, azure = provider("anthropic"), provider("openai"), provider("azure")
    try:
        claude = await anthropic.call(
            "/v1/messages",
            {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
            flex=False,
            timeout=10,
        )
        gpt = await openai.call("/v1/chat/completions", {"model": "gpt-5-mini", "messages": [
            {"role": "user", "content": "hi"}]}, flex=True, timeout=10)  # fmt: skip
        deployed = await azure.call("/v1/chat/completions", {"model": "my-deployment", "messages": [
            {"role": "user", "content": "hi"}]}, flex=False, timeout=10)  # fmt: skip
    finally:
        for p in (anthropic, openai, azure):
            await p.close()
    assert (claude.tier, claude.body["content"][0]["text"]) == ("standard", "Echo: hi")
    assert gpt.tier == "flex"
    assert deployed.body["model"] == "my-deployment"


def test_anthropic_result_lines_map_to_ok_reject_or_retry():
    def line(result):
        return {"custom_id": "0-1", "result": result}

    assert classify(line({"type": "succeeded", "message": {"content": []}})).kind == "ok"
    invalid = {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}},
    }
    assert (classify(line(invalid)).kind, classify(line(invalid)).message) == ("fail", "max_tokens: Field required")
    overloaded = {"type": "errored", "error": {"type": "error", "error": {"type": "overloaded_error"}}}
    assert classify(line(overloaded)).kind == "retry"
    assert classify(line({"type": "errored", "error": {"type": "api_error", "message": "x"}})).kind == "retry"
    assert [classify(line({"type": t})).error["code"] for t in ("canceled", "expired")] == [
        "batch_cancelled", "batch_expired"]  # fmt: skip
    assert classify(None).kind == classify(line({"type": "new_kind"})).kind == "retry"


@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")  # aiohttp's, on a bytes body over 1 MiB
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_call_whose_body_the_server_never_reads_fails_within_its_timeout(tmp_path, kind):
    """A peer that accepts the connection and stops reading (a stalled proxy or load balancer)
    leaves a large request half written; the SDK's timeouts bound each phase but not writing the
    body, so the call is cut at its own time limit and reported as a transient failure."""
    held: list[asyncio.StreamWriter] = []

    async def accept_and_never_read(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept_and_never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    settings = parse_settings({"providers": {kind: {"kind": kind, "base_url": base, "api_key": "k", "timeout": "1s",
                                                    "create_timeout": "1s", "max_retries": 0}},
                               "pipelines": [{"name": "p", "input_topic": "i", "output_topic": "o",
                                              "dead_letter_topic": "d", "model": "m"}]})  # fmt: skip
    provider = make_provider(kind, settings.named_providers()[kind])
    big = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 20_000_000}]}
    try:
        with pytest.raises(ProviderUnavailable, match="no answer within 1s"):
            await asyncio.wait_for(provider.call("/v1/chat/completions" if kind == "openai" else "/v1/messages", big,
                                                 flex=False, timeout=1.0), 60)  # fmt: skip
    finally:
        await provider.close()
        for writer in held:
            writer.close()
        server.close()


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic", "gemini"])
async def test_result_urls_on_another_origin_are_never_fetched_with_the_key(emulator, make_lane, kind: str):
    """A gateway names a batch's results by a URL on another origin (Anthropic's ``results_url``,
    OpenAI's and Azure's result file ids, Gemini's result file URI): nothing is sent there (the key
    least of all), and the results are read from the configured origin."""
    from aiohttp import web

    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    faults = emulator.emulator.faults
    try:
        if kind == "anthropic":
            faults.anthropic_results_origin = f"http://127.0.0.1:{port}"
        else:
            faults.foreign_file_origin = f"http://127.0.0.1:{port}"
        options = {"inline_bytes": 0} if kind == "gemini" else {}  # its results as a file, not inline
        lane = make_lane(provider={"kind": kind, "api_key": "sk-secret-of-the-test-0123456789", **options})
        _, requests = await lane.run(12)
        results, dead = lane.fates()
    finally:
        await runner.cleanup()
    assert (_ids(results), dead) == (_ids(requests), [])
    assert seen == [], "no request of any kind reached the other origin"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "http://elsewhere/v1/files/f", "files/a/../../b"])
def test_a_name_the_provider_hands_back_never_names_a_file_outside_the_work_folder(tmp_path, name: str) -> None:
    from providers.downloads import local_file

    path = local_file(tmp_path, name, ".jsonl")
    assert path.parent == tmp_path and path.name.endswith(".jsonl") and "/" not in path.name
    assert local_file(tmp_path, name, ".jsonl") == path and local_file(tmp_path, name + "x", ".jsonl") != path


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic", "gemini"])
async def test_results_larger_than_max_result_bytes_end_the_round_as_dead_letters_naming_the_setting(
    emulator, make_lane, tmp_path, kind: str
):
    options = {"inline_bytes": 0} if kind == "gemini" else {}  # its results as a file, not inline
    lane = make_lane(provider={"kind": kind, "max_result_bytes": 1024, **options})
    record, requests = await lane.run(12)
    results, dead = lane.fates()
    assert results == [] and _ids(dead) == _ids(requests)
    assert {d.reason for d in dead} == {"batch_results_too_large"}
    assert all("max_result_bytes (1024)" in d.message for d in dead), dead[0].message
    assert record.status == "done"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".jsonl" and "result" in p.name] == []


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_results_within_max_result_bytes_are_read(emulator, make_lane, kind: str):
    options = {"inline_bytes": 0} if kind == "gemini" else {}
    lane = make_lane(provider={"kind": kind, "max_result_bytes": "1MB", **options})
    _, requests = await lane.run(12)
    results, dead = lane.fates()
    assert (_ids(results), dead) == (_ids(requests), [])
