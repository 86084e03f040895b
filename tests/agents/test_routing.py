"""The auto-routing rule and deadline parsing: pure, no broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.routing import route
from providers import parse_settings
from streams.models import Rejection, Request, Source, decode_event, parse_deadline
from tests.support import settings_document

NOW = 1_800_000_000.0


def pipeline(**overrides: Any) -> Any:
    return parse_settings(settings_document(api_key="k", **overrides), env={}).pipelines[0]


def request(pipe: Any, event: dict[str, Any], headers: Any = None, received: float = NOW) -> Request:
    decoded = decode_event(pipe, Source("in", 0, 7, int(received * 1000)), None, orjson.dumps(event), headers)
    assert isinstance(decoded, Request), decoded
    return decoded


AUTO = {"mode": "auto", "max_batch_latency": "1h", "window": {"max_wait": "5s"}, "flex": {"fallback": "standard"}}


@pytest.mark.parametrize(
    ("deadline_in", "expected"),
    [(3605, "batch"), (3604, "flex"), (60, "flex"), (-10, "flex"), (86400, "batch")],
)
def test_auto_sends_batch_only_what_the_batch_bound_can_meet(deadline_in: float, expected: str) -> None:
    pipe = pipeline(**AUTO)
    assert route(pipe, request(pipe, {"text": "x", "deadline": NOW + deadline_in}), now=NOW) == expected


def test_without_max_batch_latency_the_bound_is_the_24h_completion_window() -> None:
    pipe = pipeline(mode="auto")
    assert route(pipe, request(pipe, {"text": "x", "deadline": NOW + 23 * 3600}), now=NOW) == "flex"
    assert route(pipe, request(pipe, {"text": "x", "deadline": NOW + 25 * 3600}), now=NOW) == "batch"


def test_no_deadline_uses_the_latency_objective_from_receipt_or_goes_batch() -> None:
    assert route(pipeline(**AUTO), request(pipeline(**AUTO), {"text": "x"}), now=NOW) == "batch"
    pipe = pipeline(**AUTO, latency_objective="2h")
    assert route(pipe, request(pipe, {"text": "x"}, received=NOW), now=NOW) == "batch"
    # received 90 minutes ago: 30 minutes left, less than the 1 h + 5 s bound
    assert route(pipe, request(pipe, {"text": "x"}, received=NOW - 5400), now=NOW) == "flex"


def test_header_deadline_and_fixed_modes() -> None:
    pipe = pipeline(**AUTO)
    assert route(pipe, request(pipe, {"text": "x"}, [("deadline", str(NOW + 30).encode())]), now=NOW) == "flex"
    assert route(pipe, request(pipe, {"text": "x"}, {"Deadline": str(NOW + 30).encode()}), now=NOW) == "flex"
    for mode in ("batch", "flex"):
        fixed = pipeline(mode=mode, flex={"fallback": "standard"})
        assert route(fixed, request(fixed, {"text": "x", "deadline": NOW}), now=NOW) == mode


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_800_000_000, 1_800_000_000.0),
        (1_800_000_000_500, 1_800_000_000.5),
        ("1800000000", 1_800_000_000.0),
        ("2027-01-15T08:00:00Z", 1_800_000_000.0),
        ("2027-01-15T09:00:00+01:00", 1_800_000_000.0),
    ],
)
def test_deadline_formats(value: object, expected: float) -> None:
    assert parse_deadline(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["tomorrow", "2027-01-15T08:00:00", True, [1]])
def test_bad_deadline_is_a_dead_letter_reason(value: object) -> None:
    pipe = pipeline(**AUTO)
    decoded = decode_event(pipe, Source("in", 0, 1), None, orjson.dumps({"text": "x", "deadline": value}))
    assert isinstance(decoded, Rejection) and decoded.reason == "wrong_shape" and "deadline" in decoded.message
