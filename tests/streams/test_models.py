import orjson

from agents.outcomes import extract_output
from providers import FACTS, FORMATS, parse_settings
from streams.config import PipelineSettings
from streams.models import Rejection, Request, Source, Tokens, decode_event
from tests.support import settings_document

SETTINGS = parse_settings(
    settings_document(
        api_key="k",
        max_event_bytes=200,
        template={"system": "Classify.", "user": "Subject: {subject}", "response_format": {"type": "json_object"}},
    ),
    env={},
)
PIPE = SETTINGS.pipelines[0]
SRC = Source("in", 2, 41)


def test_request_event_is_sent_as_is_with_default_model() -> None:
    got = decode_event(PIPE, SRC, b"k", b'{"id": "a", "body": {"messages": [{"role": "user", "content": "hi"}]}}')
    assert isinstance(got, Request)
    assert got.body["model"] == "gpt-5-mini" and got.id == "a" and got.custom_id == "2-41"
    assert not got.wants_json


def test_plain_event_is_rendered_by_template_and_id_defaults_to_coordinates() -> None:
    got = decode_event(PIPE, SRC, None, b'{"subject": "refund", "body": "text field, not a request"}')
    assert isinstance(got, Request)
    assert got.id == "in/2/41"
    assert got.body["messages"] == [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "Subject: refund"},
    ]
    assert got.wants_json


def test_rejections_say_why() -> None:
    cases = {
        b"\xff": "undecodable",
        b"{": "invalid_json",
        b"[]": "wrong_shape",
        b'{"x": 1}': "template_error",
        b'{"subject": "' + b"x" * 300 + b'"}': "oversized",
        b'{"id": true, "subject": "s"}': "wrong_shape",
    }
    for raw, reason in cases.items():
        got = decode_event(PIPE, SRC, None, raw)
        assert isinstance(got, Rejection) and got.reason == reason, raw


def _anthropic_pipeline(**overrides: object) -> PipelineSettings:
    return PipelineSettings.model_validate(
        dict(
            name="t",
            input_topic="in",
            output_topic="out",
            dead_letter_topic="dlq",
            model="claude-sonnet-4-5",
            endpoint="/v1/messages",
            **overrides,
        ),
        context={"kinds": FACTS},
    )


def test_anthropic_templates_put_system_apart_require_max_tokens_and_ask_json_through_a_forced_tool() -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    cfg = _anthropic_pipeline(max_tokens=300, template={
        "system": "Triage {team}.", "user": "{subject}",
        "response_format": {"type": "json_schema", "json_schema": {"name": "triage", "schema": schema}},
    })  # fmt: skip
    request = decode_event(cfg, Source("in", 0, 5), None, b'{"team": "ops", "subject": "printer on fire"}')
    assert isinstance(request, Request)
    assert request.body == {
        "model": "claude-sonnet-4-5", "max_tokens": 300, "system": "Triage ops.",
        "messages": [{"role": "user", "content": "printer on fire"}],
        "tools": [{"name": "triage", "description": "Give the answer as this tool's input.", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": "triage"},
    }  # fmt: skip
    assert request.wants_json
    answer = {"content": [{"type": "tool_use", "id": "t", "name": "triage", "input": {"label": "bug"}}]}
    assert extract_output(FORMATS["/v1/messages"], answer, True) == {"label": "bug"}
    assert extract_output(FORMATS["/v1/messages"], {"content": [{"type": "text", "text": "hi"}]}, False) == "hi"


def test_anthropic_structured_outputs_in_a_request_event_are_parsed_as_json() -> None:
    body = {"messages": [{"role": "user", "content": "x"}],
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}  # fmt: skip
    request = decode_event(_anthropic_pipeline(), Source("in", 0, 1), None, orjson.dumps({"body": body}))
    assert isinstance(request, Request) and request.wants_json
    assert extract_output(FORMATS["/v1/messages"], {"content": [{"type": "text", "text": '{"a": 1}'}]}, True) == {
        "a": 1
    }


def test_an_anthropic_request_event_gets_the_default_max_tokens_and_is_validated() -> None:
    cfg = _anthropic_pipeline()
    ok = decode_event(cfg, Source("in", 0, 1), None, b'{"body": {"messages": [{"role": "user", "content": "x"}]}}')
    assert isinstance(ok, Request) and ok.body["max_tokens"] == 1024 and ok.body["model"] == "claude-sonnet-4-5"
    bad = decode_event(cfg, Source("in", 0, 2), None, b'{"body": {"messages": [{"role": "system", "content": "x"}]}}')
    assert isinstance(bad, Rejection) and bad.reason == "invalid_request" and "messages.0.role" in bad.message


def test_tokens_are_normalized_from_every_provider_usage() -> None:
    openai, claude = FACTS["openai"].usage, FACTS["anthropic"].usage
    assert Tokens.of({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}, openai) == Tokens(
        input=10, output=3
    )
    assert Tokens.of({"input_tokens": 7, "output_tokens": 2}, openai) == Tokens(input=7, output=2)
    anthropic = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 20,
        "output_tokens": 9,
    }
    assert Tokens.of(anthropic, claude) == Tokens(input=125, output=9)
    assert Tokens.of({"prompt_tokens": 4, "total_tokens": 4}, openai) == Tokens(input=4, output=0)
    assert Tokens.of(None, openai) is None


def _gemini_pipeline(**overrides: object) -> PipelineSettings:
    return PipelineSettings.model_validate(
        dict(
            name="g",
            input_topic="in",
            output_topic="out",
            dead_letter_topic="dlq",
            model="gemini-2.5-flash",
            endpoint="generateContent",
            **overrides,
        ),
        context={"kinds": FACTS},
    )


def test_gemini_templates_render_contents_system_instruction_and_json_through_response_schema() -> None:
    schema = {"type": "object", "properties": {"label": {"type": ["string", "null"], "enum": ["bug", None]}},
              "required": ["label"], "additionalProperties": False, "$schema": "x"}  # fmt: skip
    cfg = _gemini_pipeline(template={
        "system": "Triage {team}.", "user": "{subject}",
        "response_format": {"type": "json_schema", "json_schema": {"name": "triage", "strict": True, "schema": schema}},
        "parameters": {"temperature": 0, "safetySettings": [], "generationConfig": {"topK": 3}},
    })  # fmt: skip
    request = decode_event(cfg, Source("in", 0, 5), None, b'{"team": "ops", "subject": "printer on fire"}')
    assert isinstance(request, Request)
    assert request.body == {
        "model": "gemini-2.5-flash",
        "contents": [{"role": "user", "parts": [{"text": "printer on fire"}]}],
        "systemInstruction": {"parts": [{"text": "Triage ops."}]},
        "safetySettings": [],
        "generationConfig": {
            "responseMimeType": "application/json", "temperature": 0, "topK": 3,
            "responseSchema": {"type": "object", "required": ["label"], "properties": {
                "label": {"type": "string", "nullable": True, "enum": ["bug", None]}}},
        },
    }  # fmt: skip
    assert request.wants_json
    answer = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "thinking...", "thought": True}, {"text": '{"label": '}, {"text": '"bug"}'}]}}]}  # fmt: skip
    assert extract_output(FORMATS["generateContent"], answer, True) == {"label": "bug"}
    assert extract_output(FORMATS["generateContent"], {"candidates": []}, False) is None


def test_a_gemini_request_event_is_validated_with_the_sdk_types() -> None:
    cfg = _gemini_pipeline()
    ok = decode_event(cfg, SRC, None, b'{"body": {"contents": [{"parts": [{"text": "x"}], "futureField": 1}]}}')
    assert isinstance(ok, Request) and ok.body["model"] == "gemini-2.5-flash" and not ok.wants_json
    cases = (
        (b'{"contents": []}', "'contents' must be a non-empty list"),
        (b'{"contents": [{"role": 3, "parts": [{"text": "x"}]}]}', "'contents.0.role'"),
        (b'{"contents": [{"parts": "x"}]}', "'contents.0.parts' must be a non-empty list"),
    )
    for body, problem in cases:
        bad = decode_event(cfg, SRC, None, b'{"body": ' + body + b"}")
        assert isinstance(bad, Rejection) and bad.reason == "invalid_request" and problem in bad.message, bad


def test_gemini_usage_metadata_counts_cached_and_tool_prompts_as_input_and_thoughts_as_output() -> None:
    usage = {"promptTokenCount": 12, "cachedContentTokenCount": 4, "toolUsePromptTokenCount": 3,
             "candidatesTokenCount": 5, "thoughtsTokenCount": 7, "totalTokenCount": 27}  # fmt: skip
    assert Tokens.of(usage, FACTS["gemini"].usage) == Tokens(input=15, output=12)
