from streams.config import parse_settings
from streams.models import Rejection, Request, Source, decode_event
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
