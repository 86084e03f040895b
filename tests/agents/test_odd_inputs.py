"""10,000 generated malformed or odd inputs: every offset ends as one result or one dead letter,
and the worker keeps running. A seeded generator, so a failure can be replayed."""

from __future__ import annotations

import base64
import random
from collections import Counter
from typing import get_args

import orjson
import pytest

from streams.models import ReasonCode

pytestmark = pytest.mark.kafka

SEED = 20261128


def odd_value(rng: random.Random, i: int) -> bytes | None:
    """One input record's value: valid, odd or malformed, in many ways."""
    kind = rng.randrange(16)
    text = rng.choice(["plain", "ünïcödé ✓ 🚀", "{braces} {0} {text}", "\x00nul", '\\n"quoted"', "", " " * 5])
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 40))
    if kind == 1:
        return b"\xff\xfe" + rng.randbytes(5)
    if kind == 2:
        return orjson.dumps(rng.choice([None, 1, 1.5, "s", [1, 2], True, []]))
    if kind == 3:
        return None  # a tombstone
    if kind == 4:
        return orjson.dumps({"id": rng.choice([True, [], {}, "", None, 1.5]), "text": text})
    if kind == 5:
        return orjson.dumps({"id": f"o{i}", "other": text})  # the template's field is missing
    if kind == 6:
        return orjson.dumps({"id": f"o{i}", "text": "x" * rng.randrange(2_000, 4_000)})  # oversized
    if kind == 7:
        return orjson.dumps({"id": f"o{i}", "body": rng.choice([
            {"messages": []}, {"messages": "hi"}, {"messages": [{"role": "user"}]},
            {"messages": [{"role": "wizard", "content": "x"}]},
            {"model": 5, "messages": [{"role": "user", "content": "x"}]},
            {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        ])})  # fmt: skip
    if kind == 8:
        return orjson.dumps({"id": f"o{i}", "body": "not an object", "text": text})
    if kind == 9:
        return orjson.dumps({"id": rng.randrange(-(2**62), 2**62), "text": text})
    if kind == 10:
        return b'{"id": "o%d", "text": "cut off' % i
    if kind == 11:
        return orjson.dumps({"id": f"o{i}", "text": text, "deadline": rng.choice(["soon", -1, None, 1e20])})
    if kind == 12:
        return orjson.dumps({"id": f"o{i}", "body": {"messages": [{"role": "user", "content": text or "x"}],
                                                     "unknown_param": {"nested": [1, 2]}}})  # fmt: skip
    return orjson.dumps({"id": f"o{i}", "text": text, "extra": {"deep": [[[]]]}})


async def test_ten_thousand_odd_inputs_each_end_once(emulator, run_pipeline):
    rng = random.Random(SEED)
    count = 10_000
    values = [odd_value(rng, i) for i in range(count)]
    keys = [rng.choice([None, b"", rng.randbytes(8), b"k%d" % (i % 7)]) for i in range(count)]
    results, dead, worker = await run_pipeline(
        values, keys=keys, partitions=1, max_event_bytes=2000, template={"user": "Text: {text}"},
        window={"max_requests": 2000, "max_wait": "1s"},
    )  # fmt: skip
    fates = Counter(r["source"]["offset"] for r in results + dead)
    assert sorted(fates) == list(range(count)) and set(fates.values()) == {1}, "one fate per input offset"
    assert worker.proc.poll() is None, "the worker is still running"
    reasons = Counter(d["reason"] for d in dead)
    assert set(reasons) <= set(get_args(ReasonCode))
    local = {"invalid_json", "undecodable", "wrong_shape", "template_error", "oversized", "invalid_request"}
    assert local <= set(reasons), "each kind of malformed input was generated and judged locally"
    for d in dead:
        original = values[d["source"]["offset"]]
        assert d["message"], "every dead letter says why"
        if d["original_base64"] is not None:
            assert base64.b64decode(d["original_base64"]) == (original or b""), "the original bytes travel with it"
        else:
            assert d["event"] == orjson.loads(original or b"null")
    for r in results:
        assert r["source"]["offset"] not in {d["source"]["offset"] for d in dead}
    assert len(results) > count // 3
