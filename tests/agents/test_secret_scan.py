"""No key leaves the worker: a provider whose error texts quote the key (whole, and shaped as
other providers' keys), then refuses it, and every place an operator or consumer looks (dead
letters, the worker's log, ``/readyz``, ``batchstream status``, ``/metrics``) is scanned."""

from __future__ import annotations

import urllib.request

import orjson
import pytest

from tests.support import (
    TopicReader,
    events,
    free_port,
    pipeline,
    probe,
    produce,
    run_cli,
    wait_every_id,
    wait_until,
)

pytestmark = pytest.mark.kafka

KEY = "sk-test-secret-key"  # the worker's key (tests/conftest.py)
QUOTED = f" Request made with key {KEY}; keys sk-proj-Zx81kLmq0981 and AIzaSyA1b2C3d4E5f6G7h8I9j0 were tried."
#: What must appear nowhere: the worker's key, its telling part, and the other key-shaped texts.
SECRETS = (KEY, "secret-key", "sk-proj-Zx81kLmq0981", "AIzaSyA1b2C3d4E5f6G7h8I9j0")


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


async def test_a_provider_quoting_the_key_leaks_it_nowhere(bootstrap, emulator, make_topic, configure, start_worker):
    faults = emulator.emulator.faults
    faults.item_error_rate, faults.item_error_status, faults.item_error_text = 0.3, 400, QUOTED
    topic = await make_topic("scan", partitions=2)
    port = free_port()
    config, _ = configure(pipeline("p", topic, window={"max_requests": 10, "max_wait": "200ms"}), metrics_port=port)
    values = events(40)
    await produce(bootstrap, topic, values)
    worker = start_worker(config)
    async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
        await wait_every_id([results, dlq], {e["id"] for e in values}, timeout=120)
        rejected = list(dlq.values)
    raw_letters = [orjson.dumps(d).decode() for d in rejected]
    assert rejected and {d["reason"] for d in rejected} == {"provider_rejected"}, rejected
    quoted = [d for d in raw_letters if "Request made with key [redacted]" in d]
    assert quoted, "the provider's text reaches the dead letter, its keys masked"

    faults.refused_keys = [KEY]  # then the key is revoked: readiness fails with a 401 quoting it

    async def not_ready() -> bool:
        assert worker.proc.poll() is None, worker.log()
        return probe(port, "/readyz")[0] == 503

    await wait_until(not_ready, timeout=60, what="/readyz failing on the revoked key")
    ready = orjson.dumps(probe(port, "/readyz")[1]).decode()
    shown = run_cli("status", "-c", str(config), "--json").stdout + run_cli("status", "-c", str(config)).stdout
    exposed = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    places = {"dead letters": "\n".join(raw_letters), "log": worker.log(), "/readyz": ready, "status": shown,
              "/metrics": exposed}  # fmt: skip
    assert {place: leaks(text) for place, text in places.items() if leaks(text)} == {}
    assert "batchstream_results_total" in exposed and '"p"' in shown, "each place was read, not empty"
