"""``batchstream webhooks`` on the real broker: a good, a bad and a stale signature, and a worker
whose poll interval is ten minutes reading a batch as soon as its completion webhook arrives."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest

from tests.support import ROOT, TopicReader, free_port, pipeline, produce, wait_until

pytestmark = pytest.mark.kafka

SECRET = "whsec_" + base64.b64encode(b"a signing secret of 32 bytes ok!").decode()


def deliver(port: int, event: dict, *, secret: str = SECRET, age: float = 0.0) -> int:
    """POST a delivery signed as OpenAI signs them (Standard Webhooks); the HTTP status."""
    body = orjson.dumps(event)
    webhook_id, stamp = f"wh_{time.time_ns()}", str(int(time.time() - age))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST", headers={
        "content-type": "application/json", "webhook-id": webhook_id, "webhook-timestamp": stamp,
        "webhook-signature": f"v1,{signature.decode()}"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return 0  # not listening (yet)


def completed(batch_id: str) -> dict:
    return {"id": f"evt_{batch_id}", "object": "event", "type": "batch.completed", "created_at": int(time.time()),
            "data": {"id": batch_id}}  # fmt: skip


@pytest.fixture
def receiver(tmp_path):
    processes = []

    def start(config, port):
        log = (tmp_path / "webhooks.log").open("wb")
        env = {**os.environ, "OPENAI_API_KEY": "sk-test-secret-key"}
        proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "webhooks", "-c", str(config), "--port",
                                 str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        processes.append((proc, log))
        return proc

    yield start
    for proc, log in processes:
        proc.terminate()
        proc.wait(30)
        log.close()


async def test_a_completion_webhook_is_verified_published_and_read_at_once_by_a_worker(
    bootstrap, emulator, make_topic, configure, start_worker, receiver, unique
):
    emu = emulator.emulator
    emu.faults.batch_seconds = 0.3
    topic, hooks_topic, port = await make_topic("in", partitions=1), f"webhooks-{unique}", free_port()
    config, _ = configure(pipeline("p", topic, window={"max_requests": 10, "max_wait": "200ms"}),
                          poll_interval=600, webhooks={"secret": SECRET, "topic": hooks_topic})  # fmt: skip
    proc = receiver(config, port)

    async def listening() -> bool:
        assert proc.poll() is None, "the receiver exited"
        return deliver(port, {"type": "ping"}, secret="whsec_" + base64.b64encode(b"x" * 32).decode()) == 400

    await wait_until(listening, timeout=60, what="the webhook receiver")
    async with TopicReader(bootstrap, hooks_topic) as published:
        assert deliver(port, completed("batch_other"), secret="whsec_" + base64.b64encode(b"y" * 32).decode()) == 400
        assert deliver(port, completed("batch_stale"), age=600) == 400, "older than five minutes"
        assert deliver(port, completed("batch_good")) == 200
        assert [v["batch_id"] for v in await published.until(1, timeout=30)] == ["batch_good"], "only the verified one"

        worker = start_worker(config)
        await produce(bootstrap, topic, [{"id": f"e{i}", "text": f"ticket {i}"} for i in range(10)])

        async def ended() -> bool:
            assert worker.proc.poll() is None, worker.log()
            return any(b.status == "completed" for b in list(emu.batches.values()))

        await wait_until(ended, timeout=120, what="the batch to complete at the provider")
        [batch_id] = [b.id for b in emu.batches.values()]
        reads = emu.stats["status_reads"]
        async with TopicReader(bootstrap, f"{topic}.results") as results:
            assert await results.poll() == [], "ended at the provider, but not read yet (next poll in 600 s)"
            assert deliver(port, completed(batch_id)) == 200
            await results.until(10, timeout=60)  # only the webhook can wake the watch this soon
        assert emu.stats["status_reads"] > reads
        assert [v["batch_id"] for v in await published.until(2, timeout=30)] == ["batch_good", batch_id]
    assert worker.terminate() == 0, worker.log()
