"""``/healthz`` and ``/readyz`` of a running worker on the real broker, read as a probe reads them.

(The broker gone and back is checked in ``test_broker_restart.py``.)
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from emulator import EmulatorThread
from tests.support import ROOT, free_port, pipeline, probe, wait_log, wait_until

pytestmark = pytest.mark.kafka


async def test_ready_only_once_assigned_and_every_provider_answers(emulator, make_topic, configure, start_worker):
    first, second = await make_topic("ready", partitions=2), await make_topic("spare", partitions=1)
    port, spare_port = free_port(), free_port()  # nothing listens on spare_port yet
    config, _ = configure(
        pipeline("ready", first), pipeline("spare", second, provider="spare"),
        metrics_port=port,
        providers={"spare": {"base_url": f"http://127.0.0.1:{spare_port}/v1", "api_key": "sk-spare", "max_retries": 0}},
    )  # fmt: skip
    worker = start_worker(config)

    async def alive() -> bool:
        assert worker.proc.poll() is None, worker.log()
        return (await asyncio.to_thread(probe, port, "/healthz"))[0] == 200

    await wait_until(alive, timeout=60, interval=0.02, what="/healthz")

    async def started() -> bool:  # /healthz answers from the start; /readyz says "starting" until topics are ready
        _, body = await asyncio.to_thread(probe, port, "/readyz")
        return "partitions" in body["checks"]

    await wait_until(started, timeout=60, interval=0.02, what="start-up over")
    status, body = await asyncio.to_thread(probe, port, "/readyz")
    assert status == 503 and "waiting for its assignment" in body["checks"]["partitions"].values(), body

    await wait_log(worker, "loaded state of partitions", timeout=60)

    async def assigned() -> bool:
        _, body = await asyncio.to_thread(probe, port, "/readyz")
        return all(v.startswith("ok") for v in body["checks"]["partitions"].values())

    await wait_until(assigned, timeout=30, what="both pipelines assigned")
    status, body = await asyncio.to_thread(probe, port, "/readyz")
    assert status == 503, body
    assert body["checks"]["partitions"] == {"ready": "ok (2 partitions)", "spare": "ok (1 partitions)"}
    assert body["checks"]["broker"] == "ok" and body["checks"]["providers"]["default"] == "ok"
    # the unreachable provider is named, with the kind of failure, never the provider's own text
    assert body["checks"]["providers"]["spare"] == "ProviderUnavailable (no answer)"
    assert "sk-spare" not in str(body) and "sk-test-secret-key" not in str(body)

    spare = EmulatorThread(port=spare_port)
    spare.start()
    try:

        async def ready() -> bool:
            return (await asyncio.to_thread(probe, port, "/readyz"))[0] == 200

        await wait_until(ready, timeout=30, what="/readyz once the spare provider answers")
    finally:
        spare.stop()
    assert worker.terminate() == 0, worker.log()


async def test_a_metrics_port_in_use_fails_at_start_up_naming_the_field(make_topic, configure):
    topic = await make_topic("busy", partitions=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config, _ = configure(pipeline("busy", topic), metrics_port=taken.getsockname()[1])
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "agents.cli", "worker", "-c", str(config)], cwd=ROOT,
            capture_output=True, text=True, timeout=120, env={**os.environ, "OPENAI_API_KEY": "sk-test-secret-key"},
        )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "batchstream: metrics_port: cannot serve on 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr
