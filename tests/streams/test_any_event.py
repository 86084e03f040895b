"""Whatever a producer sends and however a template is written, decoding an event never raises,
and its dead letter always fits the dead-letter topic's records (generated inputs)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import parse_settings
from streams.config import PipelineSettings
from streams.letters import DeadLetter, dead_letter_for, encode_dead_letter
from streams.models import Rejection, Request, Source, decode_event
from tests.support import settings_document

SRC = Source("in", 0, 7)

#: Fields a template may name, each with odd format specs and indexing.
TEMPLATES = [
    "Amount {amount:>8} for {subject}",
    "{amount:.2f} {amount:,}",
    "{tags[0]} / {tags[1]:^5}",
    "{subject!r:>10}",
    "{nested[a][b]}",
    "{subject.upper}",
    "{amount:%}",
    "{subject:{width}}",
    "",  # the whole event as JSON
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
field_names = st.sampled_from(["amount", "subject", "tags", "nested", "width", "id", "body", "deadline"])
events = st.dictionaries(field_names, json_values, max_size=8)


def deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"d": [value]}
    return value


def pipeline(template: str, endpoint: str = "/v1/chat/completions", mode: str = "batch") -> PipelineSettings:
    doc = settings_document(api_key="k", template={"user": template} if template else {}, endpoint=endpoint, mode=mode)
    return parse_settings(doc, env={}).pipelines[0]


PIPES = [pipeline(t) for t in TEMPLATES] + [
    pipeline("Amount {amount:>8}", "/v1/embeddings"), pipeline("{subject}", mode="auto"),
]  # fmt: skip


def encodings(event: Any) -> list[bytes]:
    raw = json.dumps(event).encode()  # a producer may write integers beyond 64 bits
    return [raw, raw[: len(raw) // 2], b"\xff" + raw, raw.decode().encode("utf-16")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events, which=st.integers(min_value=0, max_value=len(PIPES) - 1), enc=st.integers(0, 3))
def test_decoding_any_event_never_raises_and_its_dead_letter_always_fits(event, which, enc) -> None:
    cfg = PIPES[which]
    value = encodings(event)[enc]
    got = decode_event(cfg, SRC, b"k", value)
    assert isinstance(got, Request | Rejection)
    if isinstance(got, Request):
        assert orjson.loads(got.jsonl_line())["custom_id"] == "0-7"
        return
    assert got.message, "a rejection says why"
    for limit in (4_096, 50_000, 1_000_000):  # 4,096: the least a size refusal lowers a topic to
        out = encode_dead_letter(dead_letter_for(cfg, SRC, value, got), value, limit)
        assert len(out) <= limit
        letter = DeadLetter.model_validate_json(out)
        assert letter.reason == got.reason


def test_a_format_spec_on_null_is_a_template_error_not_a_crash() -> None:
    got = decode_event(pipeline(TEMPLATES[0]), SRC, None, b'{"amount": null, "subject": "s"}')
    assert isinstance(got, Rejection) and got.reason == "template_error"
    assert "NoneType" in got.message


def test_indexing_a_null_is_a_template_error() -> None:
    got = decode_event(pipeline(TEMPLATES[2]), SRC, None, b'{"tags": null}')
    assert isinstance(got, Rejection) and got.reason == "template_error"


def test_json_nested_deeper_than_it_can_be_written_back_is_a_dead_letter_with_its_original() -> None:
    value = orjson.dumps({"id": "deep", "body": {"messages": [], "extra": deep(100)}}).replace(
        b'"leaf"', b"[" * 400 + b"]" * 400
    )
    got = decode_event(pipeline(""), SRC, None, value)
    assert isinstance(got, Rejection) and got.reason == "invalid_request"
    out = encode_dead_letter(dead_letter_for(pipeline(""), SRC, value, got), value, 1_000_000)
    letter = DeadLetter.model_validate_json(out)
    assert letter.event is None and letter.original_ref is not None
    assert letter.original_ref.sha256 == hashlib.sha256(value).hexdigest() and letter.original_ref.size == len(value)
    assert base64.b64decode(letter.original_head_base64 or "") == value[:1024]


def test_a_rendered_event_nested_too_deep_for_the_whole_event_template_is_rejected() -> None:
    value = b'{"x": ' + b"[" * 300 + b"]" * 300 + b"}"
    got = decode_event(pipeline(""), SRC, None, value)
    assert isinstance(got, Rejection) and got.reason == "template_error"


def test_a_dead_letter_keeps_the_original_when_it_fits_and_a_reference_when_not() -> None:
    cfg = pipeline("{subject}")
    small = b"\xff" * 100
    letter = dead_letter_for(cfg, SRC, small, Rejection("undecodable", "not UTF-8"))
    kept = DeadLetter.model_validate_json(encode_dead_letter(letter, small, 1_000_000))
    assert base64.b64decode(kept.original_base64 or "") == small and kept.original_ref is None
    big = b"\xff" * 900_000  # base64 makes it 1.2 MB: over the default topic limit
    letter = dead_letter_for(cfg, SRC, big, Rejection("undecodable", "not UTF-8"))
    out = encode_dead_letter(letter, big, 1_000_000)
    ref = DeadLetter.model_validate_json(out)
    assert len(out) < 4_000 and ref.original_base64 is None
    assert ref.original_ref is not None and ref.original_ref.model_dump() == {
        "topic": "in", "partition": 0, "offset": 7, "size": 900_000, "sha256": hashlib.sha256(big).hexdigest(),
    }  # fmt: skip
    assert base64.b64decode(ref.original_head_base64 or "") == big[:1024]


@given(message=st.text(min_size=0, max_size=20_000), size=st.integers(min_value=0, max_value=3_000_000))
@settings(max_examples=60, deadline=None)
def test_any_message_and_original_size_fits_the_limit(message: str, size: int) -> None:
    cfg = pipeline("{subject}")
    original = b"x" * size
    letter = dead_letter_for(cfg, SRC, original, Rejection("oversized", message))
    out = encode_dead_letter(letter, original, 8_000)
    assert len(out) <= 8_000
    assert DeadLetter.model_validate_json(out).reason == "oversized"


def test_a_request_event_outside_the_pipelines_models_or_token_limit_is_an_invalid_request() -> None:
    doc = settings_document(api_key="k", models=["gpt-5-nano"], max_output_tokens=500)
    cfg = parse_settings(doc, env={}).pipelines[0]

    def body(**fields: Any) -> bytes:
        return orjson.dumps({"id": "r", "body": {"messages": [{"role": "user", "content": "hi"}], **fields}})

    assert isinstance(decode_event(cfg, SRC, None, body()), Request), "the pipeline's model"
    assert isinstance(decode_event(cfg, SRC, None, body(model="gpt-5-nano", max_tokens=500)), Request)
    dearer = decode_event(cfg, SRC, None, body(model="gpt-5"))
    assert isinstance(dearer, Rejection) and dearer.reason == "invalid_request"
    assert "'gpt-5' is not one of the pipeline's models (gpt-5-mini, gpt-5-nano)" in dearer.message
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        longer = decode_event(cfg, SRC, None, body(**{name: 501}))
        assert isinstance(longer, Rejection) and longer.reason == "invalid_request", name
    gemini = decode_event(cfg, SRC, None, body(generationConfig={"maxOutputTokens": 9000}))
    assert isinstance(gemini, Rejection) and "9000 output tokens" in gemini.message
    open_cfg = parse_settings(settings_document(api_key="k"), env={}).pipelines[0]
    assert isinstance(decode_event(open_cfg, SRC, None, body(model="gpt-5", max_tokens=10**6)), Request), "unset: open"
