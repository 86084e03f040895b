"""A worker started before its broker waits for it (``startup_timeout``), alive on ``/healthz``
and not ready on ``/readyz`` meanwhile, then serves every event without being restarted.

``BATCHSTREAM_SOAK=long`` brings the broker up a minute after the worker; the short form as
soon as the worker has logged two waits.

The worker is given the address of a forwarder to the broker, opened once the broker is up and
the input topic made: a worker that reached the broker before its input topic existed would
stop on a configuration error, as it should (the topic is named wrong, as far as it can tell).
Clients reach the broker itself after the first metadata answer (its advertised listener)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devkafka import KafkaBroker
from tests.support import (
    TopicReader,
    events,
    free_port,
    pipeline,
    probe,
    produce,
    wait_committed,
    wait_every_id,
    wait_log,
    write_config,
)

pytestmark = pytest.mark.kafka


async def _forward(listen: int, target: int) -> asyncio.Server:
    """A TCP forwarder from 127.0.0.1:``listen`` to 127.0.0.1:``target``."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    return await asyncio.start_server(handle, "127.0.0.1", listen)


BROKER_LATE = 60.0 if os.environ.get("BATCHSTREAM_SOAK") == "long" else 0.0


@pytest.mark.timeout(600)
async def test_a_worker_started_before_its_broker_waits_and_then_serves_every_event(
    emulator, tmp_path, start_worker, unique
):  # fmt: skip
    port, broker_port, metrics = free_port(), free_port(), free_port()
    bootstrap, topic, group = f"127.0.0.1:{port}", f"late-{unique}", f"g-{unique}"
    config = write_config(tmp_path / "c.yaml", bootstrap=bootstrap, base_url=emulator.base_url, group=group,
                          pipelines=[pipeline("late", topic)], startup_timeout="10m",
                          metrics_port=metrics)  # fmt: skip
    worker = start_worker(config, "late")
    started = time.monotonic()
    await wait_log(worker, "waiting for Kafka: cannot reach Kafka at " + bootstrap, count=2)
    assert (await asyncio.to_thread(probe, metrics, "/healthz"))[0] == 200, "alive while it waits"
    status, body = await asyncio.to_thread(probe, metrics, "/readyz")
    assert status == 503 and "waiting for Kafka" in body["checks"]["starting"], body

    await asyncio.sleep(max(0.0, BROKER_LATE - (time.monotonic() - started)))  # the scenario: a late broker
    broker = KafkaBroker(port=broker_port)
    broker_address = await asyncio.to_thread(broker.start)
    forwarder = None
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker_address)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        finally:
            await admin.close()
        forwarder = await _forward(port, broker_port)  # the broker appears at the worker's address
        values = events(40)
        await produce(bootstrap, topic, values)
        async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:
            await wait_every_id([results, dlq], {v["id"] for v in values}, timeout=180)
            await wait_committed(bootstrap, group, topic, len(values), timeout=60)
            assert sorted(r["id"] for r in results.values) == sorted(v["id"] for v in values)
            assert dlq.values == []
        assert worker.proc.poll() is None, "the same process served them: it was never restarted"
        assert worker.log().count("waiting for Kafka") >= 2
    finally:
        worker.terminate()
        if forwarder is not None:
            forwarder.close()
        await asyncio.to_thread(broker.stop)
