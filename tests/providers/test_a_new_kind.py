"""A provider kind is one folder plus one registry line: a kind built here, known to this test
only, goes through configuration, rendering, local validation, its result line, the output,
usage and price, without any other file naming it. And a kind nobody registered is refused at
start-up, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from agents.metrics import PipelineMetrics
from agents.outbox import Outbox, stamps
from providers import FACTS, Kind, LineOutcome, parse_settings
from providers.base import MISSING
from sinks import MemorySink
from streams.config import Settings
from streams.errors import ConfigError
from streams.kinds import KindFacts, Prompt, RequestFormat, UsageKeys, text_output
from streams.letters import DeadLetter
from streams.loading import parse_settings as parse_with
from streams.models import Rejection, Request, Result, Source, Tokens, decode_event
from streams.pricing import Pricing


class Say(RequestFormat):
    """A made-up endpoint: ``say`` is the prompt, ``limit`` the output tokens (required)."""

    endpoint = "/echo/v1/say"
    max_tokens_field = "limit"
    flex = False

    def render(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {"model": prompt.model, "say": prompt.user, "limit": prompt.max_tokens}
        if (system := prompt.system()) is not None:
            body["preamble"] = system
        if prompt.response_format:
            body["format"] = "json"
        return {**body, **prompt.parameters}

    def check(self, body: dict[str, Any], *, types: bool) -> str | None:
        return None if isinstance(body.get("say"), str) and body["say"] else "'say' must be a non-empty string"

    def wants_json(self, body: dict[str, Any]) -> bool:
        return body.get("format") == "json"

    def output(self, body: dict[str, Any], wants_json: bool) -> Any:
        return text_output(body.get("said"), wants_json)


#: What the folder's ``__init__.py`` would declare.
ECHO = KindFacts(
    name="echo",
    endpoints=(Say(),),
    limits=(10, 10_000),
    usage=UsageKeys(input=("heard",), output=("spoken",)),
    batch_metadata=False,
    batches="Echo batches",
    settings=frozenset({"inline_bytes"}),
    requires=(("base_url", "base_url (the echo server)"),),
    prices={"echo-1": (2.0, 4.0)},
)
KIND = Kind(
    ECHO,
    open=lambda name, settings: pytest.fail("no provider is opened here"),
    classify=lambda line: MISSING if line is None else LineOutcome("ok", body=line["answer"]),
)
#: The registry with the new kind's line.
KINDS = {**FACTS, KIND.name: KIND.facts}
ENV = {"ECHO_KEY": "k"}


def _document(**pipeline: Any) -> dict[str, Any]:
    return {
        "providers": {"e": {"kind": "echo", "api_key": "${ECHO_KEY}", "base_url": "http://echo",
                            **pipeline.pop("provider", {})}},
        "pipelines": [{"name": "t", "input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq",
                       "model": "echo-1", **pipeline}],
    }  # fmt: skip


def _settings(**pipeline: Any) -> Settings:
    return parse_with(_document(**pipeline), env=ENV, kinds=KINDS)


async def test_a_kind_registered_here_goes_from_configuration_to_a_priced_result() -> None:
    settings = _settings(template={"system": "Be brief.", "user": "{text}", "response_format": {"type": "json_object"}})
    cfg = settings.pipelines[0]
    name, provider = settings.provider_of(cfg)
    assert (name, provider.kind, cfg.endpoint) == ("e", "echo", "/echo/v1/say"), "the kind's first endpoint by default"
    assert (provider.batch_limits, provider.offers_flex, cfg.kind_facts) == ((10, 10_000), False, ECHO)

    request = decode_event(cfg, Source("in", 0, 3, 1_700_000_000_000), b"k", b'{"id": "a", "text": "hi"}')
    assert isinstance(request, Request) and request.wants_json
    assert request.body == {"model": "echo-1", "say": "hi", "limit": 1024, "preamble": "Be brief.", "format": "json"}
    own = decode_event(cfg, Source("in", 0, 4), None, b'{"body": {"say": "yo"}}')
    assert isinstance(own, Request), own
    assert own.body == {"say": "yo", "model": "echo-1", "limit": 1024}, "a request event's body gets the limit"
    refused = decode_event(cfg, Source("in", 0, 5), None, b'{"body": {"say": ""}}')
    assert refused == Rejection("invalid_request", "the request would be refused: 'say' must be a non-empty string")

    line = KIND.classify({"answer": {"said": '{"label": "ok"}', "usage": {"heard": 3, "spoken": 5}}})
    assert line.kind == "ok" and line.body is not None and KIND.classify(None) == MISSING
    results, dead = MemorySink(Result), MemorySink(DeadLetter)
    pricing = Pricing(settings.pricing, kinds=settings.kinds.values())
    outbox = Outbox(cfg, results, dead, PipelineMetrics("new-kind"), provider=name, pricing=pricing)
    outbox.result(request, line.body, attempts=1, batch_id="b1", timestamps=stamps(request, submitted=1, completed=2))
    await outbox.flush()
    [result] = [v for v in results.values if isinstance(v, Result)]
    assert (result.output, result.provider, result.tokens) == ({"label": "ok"}, "e", Tokens(input=3, output=5))
    assert result.cost is not None and result.cost.realtime == pytest.approx((3 * 2.0 + 5 * 4.0) / 1_000_000)
    assert result.cost.paid == pytest.approx(result.cost.realtime / 2), "a batch pays half"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_document(metadata={"team": "x"}), r"pipelines\.0\.metadata: Echo batches carry no metadata"),
        (_document(provider={"base_url": None}), r"providers\.e: base_url \(the echo server\) is required with kind"),
        (_document(provider={"organization": "o"}), r"organization is an openai setting; this provider is kind: echo"),
        (_document(mode="flex"), r"pipelines\.0: flex processing \(mode flex/auto, max_batch_latency\) is not offered "
                                 r"for /echo/v1/say"),
        (_document(endpoint="/v1/messages"), r"pipelines\.0\.endpoint: provider 'e' \(kind: echo\) serves "
                                             r"/echo/v1/say, not /v1/messages"),
    ],
)  # fmt: skip
def test_the_new_kinds_facts_are_checked_at_start_up_naming_the_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_with(document, env=ENV, kinds=KINDS)
    parse_with(_document(provider={"inline_bytes": "1MB"}), env=ENV, kinds=KINDS)  # its own setting


@pytest.mark.parametrize(
    ("section", "field"),
    [({"provider": {"kind": "echo", "api_key": "k"}}, "provider.kind"),
     ({"providers": {"e": {"kind": "echo", "api_key": "k"}}}, "providers.e.kind")],
)  # fmt: skip
def test_a_kind_nobody_registered_is_refused_naming_the_field(section: dict[str, Any], field: str) -> None:
    pipelines = [{"name": "t", "input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "model": "m"}]
    with pytest.raises(ConfigError) as caught:
        parse_settings({**section, "pipelines": pipelines}, env={})
    registered = "anthropic, azure, gemini, openai"
    assert f"  {field}: no provider kind 'echo' (registered: {registered})" in str(caught.value).splitlines()


def test_settings_validated_without_the_kinds_say_how_to_read_them() -> None:
    with pytest.raises(TypeError, match=r"providers\.parse_settings"):
        Settings.model_validate(_document())
