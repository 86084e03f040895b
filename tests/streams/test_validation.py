"""Local request validation: what is refused before it joins a window, and the message."""

from __future__ import annotations

from typing import Any

import pytest

from providers import FORMATS, parse_settings
from streams.models import Rejection, Request, Source, decode_event
from streams.validation import check_body

CHAT = "/v1/chat/completions"
OK: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
IMAGE = {"type": "input_image", "image_url": "u"}  # no "detail": the API defaults it
OUTPUT_TEXT = {"type": "output_text", "text": "t"}  # an assistant turn replayed without id or status
TOOL_CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (CHAT, {"messages": OK["messages"]}, "'model' must be a non-empty string"),
        (CHAT, {**OK, "model": 3}, "'model' must be a non-empty string"),
        (CHAT, {"model": "m"}, "'messages' must be a non-empty list"),
        (CHAT, {"model": "m", "messages": []}, "'messages' must be a non-empty list"),
        (CHAT, {"model": "m", "messages": ["hi"]}, "'messages.0' must be an object"),
        (CHAT, {"model": "m", "messages": [{"content": "x"}]}, "'messages.0.role' must be one of"),
        (CHAT, {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "got 'wizard'"),
        (CHAT, {"model": "m", "messages": [{"role": "user"}]}, "'messages.0.content': Field required"),
        (CHAT, {"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "'messages.0.tool_call_id'"),
        (CHAT, {**OK, "temperature": "hot"}, "'temperature': Input should be a valid number"),
        ("/v1/responses", {"model": "m"}, "'input' is required"),
        ("/v1/responses", {"model": "m", "input": []}, "'input' must not be empty"),
        ("/v1/embeddings", {"model": "m", "input": {"a": 1}}, "'input' must be a string or a list"),
    ],
)
def test_bodies_a_provider_would_refuse_are_named(endpoint: str, body: dict[str, Any], expected: str) -> None:
    problem = check_body(FORMATS[endpoint], body)
    assert problem is not None and expected in problem


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        (CHAT, OK),
        (CHAT, {**OK, "messages": [{"role": "system", "content": "s"}, *OK["messages"]], "unknown_new_param": 1}),
        (CHAT, {**OK, "messages": [{"role": "assistant", "tool_calls": [TOOL_CALL]}]}),
        ("/v1/responses", {"model": "m", "input": "hi", "text": {"format": {"type": "text"}}}),
        ("/v1/embeddings", {"model": "m", "input": ["a", "b"]}),
        ("/v1/embeddings", {"model": "m", "input": [[1, 2, 3]]}),
        (CHAT, {**OK, "reasoning_effort": "ultra", "service_tier": "turbo"}),  # values newer than the SDK
        (CHAT, {**OK, "response_format": {"type": "a_new_format"}, "tool_choice": "a_new_choice"}),
        (CHAT, {**OK, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}),
        (CHAT, {**OK, "messages": [{"role": "assistant", "content": None, "refusal": "no"}]}),
        ("/v1/responses", {"model": "m", "input": [{"role": "user", "content": [IMAGE]}]}),
        ("/v1/responses", {"model": "m", "input": [{"role": "assistant", "content": [OUTPUT_TEXT]}]}),
        ("/v1/responses", {"model": "m", "previous_response_id": "resp_1"}),
        ("/v1/responses", {"model": "m", "prompt": {"id": "pmpt_1"}}),
    ],
)
def test_valid_bodies_pass_including_parameters_newer_than_the_sdk(endpoint: str, body: dict[str, Any]) -> None:
    assert check_body(FORMATS[endpoint], body) is None


def _cfg(**pipeline: Any) -> Any:
    return parse_settings({"provider": {"api_key": "k"}, "pipelines": [{
        "name": "p", "input_topic": "i", "output_topic": "o", "dead_letter_topic": "d", "model": "m", **pipeline,
    }]}).pipelines[0]  # fmt: skip


def test_an_invalid_request_event_is_rejected_at_once_unless_validation_is_off() -> None:
    value = b'{"id": "x", "body": {"messages": []}}'
    got = decode_event(_cfg(), Source("i", 0, 0, None), None, value)
    assert isinstance(got, Rejection) and got.reason == "invalid_request"
    assert got.message == "the request would be refused: 'messages' must be a non-empty list"
    assert isinstance(decode_event(_cfg(validate_requests=False), Source("i", 0, 0, None), None, value), Request)


def test_a_template_is_checked_against_the_sdk_types_once_and_every_event_for_the_rest() -> None:
    """The types of a rendered body are the template's: checked on its first rendering only.
    What depends on the event (an empty embeddings input) is judged for every event, and request
    events (whose bodies the events carry) are always checked in full."""
    embeddings = _cfg(endpoint="/v1/embeddings", model="text-embedding-3-small", template={"user": "{text}"})
    assert not embeddings.rendered_types_checked
    assert isinstance(decode_event(embeddings, Source("i", 0, 0, None), None, b'{"text": "a"}'), Request)
    assert embeddings.rendered_types_checked
    empty = decode_event(embeddings, Source("i", 0, 1, None), None, b'{"text": ""}')
    assert isinstance(empty, Rejection) and empty.message.endswith("'input' must not be empty")
    bad_types = _cfg(template={"user": "{text}", "parameters": {"temperature": "hot"}})
    for offset in range(2):
        got = decode_event(bad_types, Source("i", 0, offset, None), None, b'{"text": "a"}')
        assert isinstance(got, Rejection) and "'temperature'" in got.message, "a template that fails stays checked"
    assert not bad_types.rendered_types_checked
    chat = _cfg(template={"user": "{text}"})
    assert isinstance(decode_event(chat, Source("i", 0, 0, None), None, b'{"text": "a"}'), Request)
    event_body = b'{"body": {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}}'
    got = decode_event(chat, Source("i", 0, 1, None), None, event_body)
    assert isinstance(got, Rejection) and "'temperature'" in got.message
