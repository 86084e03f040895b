import random

import pytest

from agents.outcomes import extract_output
from agents.retry import backoff
from providers import FORMATS
from providers.openai import classify
from streams.errors import InvalidOutputError


def test_both_error_shapes_and_retriability() -> None:
    assert classify({"error": {"code": "server_error"}, "response": None}).kind == "retry"
    assert classify({"error": {"code": "batch_expired"}, "response": None}).kind == "retry"
    assert classify({"error": {"code": "invalid_request"}, "response": None}).kind == "fail"
    assert classify({"error": None, "response": {"status_code": 503, "body": {}}}).kind == "retry"
    assert classify({"error": None, "response": {"status_code": 429, "body": {}}}).kind == "retry"
    failed = classify({"error": None, "response": {"status_code": 400, "body": {"error": {"message": "bad"}}}})
    assert (failed.kind, failed.message, failed.error["status_code"]) == ("fail", "bad", 400)  # type: ignore[index]
    assert classify(None).kind == "retry"
    assert classify({"error": None, "response": {"status_code": 200, "body": {"a": 1}}}).body == {"a": 1}


def test_extract_output_per_endpoint() -> None:
    chat = {"choices": [{"message": {"content": '{"x": 1}'}}]}
    assert extract_output(FORMATS["/v1/chat/completions"], chat, True) == {"x": 1}
    assert extract_output(FORMATS["/v1/chat/completions"], chat, False) == '{"x": 1}'
    responses = {"output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]}
    assert extract_output(FORMATS["/v1/responses"], responses, False) == "hi"
    assert extract_output(FORMATS["/v1/embeddings"], {"data": [{"embedding": [0.1]}]}, False) == [0.1]
    with pytest.raises(InvalidOutputError):
        extract_output(FORMATS["/v1/chat/completions"], {"choices": [{"message": {"content": "{broken"}}]}, True)


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    assert 0.5 <= backoff(1, initial=1, maximum=10, rng=rng) <= 1
    assert 4 <= backoff(4, initial=1, maximum=10, rng=rng) <= 8
    assert 5 <= backoff(30, initial=1, maximum=10, rng=rng) <= 10
