"""Helpers for integration tests: produce, read topics, committed offsets, worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

ROOT = Path(__file__).resolve().parents[1]


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.25, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def produce(
    bootstrap: str, topic: str, values: Iterable[bytes | dict[str, Any]], *, keys: Iterable[bytes | None] | None = None,
    partition: int | None = None, headers: Iterable[list[tuple[str, bytes]]] | None = None,
) -> int:  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    count = 0
    try:
        key_iter = iter(keys) if keys is not None else None
        header_iter = iter(headers) if headers is not None else None
        futures = []
        for value in values:
            raw = value if isinstance(value, bytes) else orjson.dumps(value)
            key = next(key_iter) if key_iter is not None else None
            extra = next(header_iter) if header_iter is not None else None
            futures.append(await producer.send(topic, raw, key=key, partition=partition, headers=extra))
            count += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


class TopicReader:
    """Reads a whole topic from the beginning, keeping every record seen so far.

    It reads as a downstream consumer should (``read_committed``): records of transactions a
    worker aborted (``exactly_once``) are never seen; under ``at_least_once`` nothing changes.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.records: list[tuple[bytes | None, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        await wait_for_topic(self.bootstrap, self.topic)
        self._consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None, isolation_level="read_committed",
        )  # fmt: skip
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def poll(self) -> list[tuple[bytes | None, Any]]:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=200)
        for messages in batch.values():
            for message in messages:
                value = orjson.loads(message.value) if message.value is not None else None
                self.records.append((message.key, value))
        return self.records

    async def to_end(self, *, timeout: float = 30) -> list[tuple[bytes | None, Any]]:
        """Read up to the topic's end as it is now (its last stable offset: a transaction under way
        is waited for), so a record written before this call is certain to be among ``records``."""
        consumer = self._consumer
        assert consumer is not None
        partitions = consumer.partitions_for_topic(self.topic) or set()
        ends = await consumer.end_offsets([TopicPartition(self.topic, p) for p in partitions])

        async def read() -> bool:
            await self.poll()
            positions = {tp: await consumer.position(tp) for tp in ends}
            return all(positions[tp] >= end for tp, end in ends.items())

        await wait_until(read, timeout=timeout, interval=0, what=f"the end of {self.topic} ({ends})")
        return self.records

    async def until(self, count: int, *, timeout: float) -> list[Any]:
        async def enough() -> bool:
            return len(await self.poll()) >= count

        await wait_until(enough, timeout=timeout, interval=0, what=f"{count} records on {self.topic}")
        return [v for _, v in self.records]

    @property
    def values(self) -> list[Any]:
        return [v for _, v in self.records]


async def wait_for_topic(bootstrap: str, topic: str, timeout: float = 60) -> None:
    """Wait until the topic exists (the worker creates its output topics at start-up)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:

        async def exists() -> bool:
            return topic in await admin.list_topics()

        await wait_until(exists, timeout=timeout, what=f"topic {topic}")
    finally:
        await admin.close()


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    return sum((await committed_offsets(bootstrap, group, topic)).values())


async def wait_committed(bootstrap: str, group: str, topic: str, total: int, timeout: float = 30) -> None:
    """Wait until the group's committed offsets of ``topic`` add up to ``total``."""

    async def committed() -> bool:
        return await committed_total(bootstrap, group, topic) == total

    await wait_until(committed, timeout=timeout, what=f"{total} input offsets committed")


async def wait_every_id(readers: list[TopicReader], ids: set[str], timeout: float = 120) -> None:
    """Wait until every id appears in the records of ``readers`` (results, dead letters)."""

    async def complete() -> bool:
        seen = set()
        for reader in readers:
            seen |= {v["id"] for _, v in await reader.poll()}
        return ids <= seen

    await wait_until(complete, timeout=timeout, what="every id in results or dead letters")


def assert_each_window_submitted_once(stats: dict[str, int]) -> None:
    """The emulator counts batches per window round (metadata tag): each must be 1."""
    tags = {k: n for k, n in stats.items() if k.startswith("tag:")}
    assert tags and all(n == 1 for n in tags.values()), f"a window round was submitted twice: {tags}"


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


def write_config(path: Path, *, bootstrap: str, base_url: str, group: str, pipelines: list[dict[str, Any]],
                 poll_interval: float = 0.2, provider: dict[str, Any] | None = None,
                 **top_level: Any) -> Path:  # fmt: skip
    document = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "commit_interval": 0.5,
            "session_timeout": 6,
            "heartbeat_interval": 1,
        },
        "provider": {
            "base_url": base_url,
            "api_key": "${OPENAI_API_KEY}",
            "poll_interval": poll_interval,
            "max_retries": 0,
            "timeout": 30,
            # a window whose owner died mid-create waits this long for the batch to show up
            "create_timeout": 10,
            **(provider or {}),
        },
        "pipelines": pipelines,
        **top_level,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def settings_document(api_key: str = "${OPENAI_API_KEY}", **pipeline_overrides: Any) -> dict[str, Any]:
    """The smallest valid configuration document, with one pipeline ``t`` (overrides applied)."""
    base: dict[str, Any] = {
        "name": "t", "input_topic": "in", "output_topic": "out", "dead_letter_topic": "dlq", "model": "gpt-5-mini",
    }  # fmt: skip
    return {"provider": {"api_key": api_key}, "pipelines": [{**base, **pipeline_overrides}]}


def pipeline(name: str, input_topic: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "input_topic": input_topic,
        "output_topic": f"{input_topic}.results",
        "dead_letter_topic": f"{input_topic}.dlq",
        "state_topic": f"{input_topic}.state",
        "model": "gpt-5-mini",
        "window": {"max_requests": 100, "max_bytes": "1MB", "max_wait": "500ms"},
        "retry": {"attempts": 3, "backoff_initial": "100ms", "backoff_max": "500ms"},
    }
    base.update(overrides)
    return base


def events(n: int) -> list[dict[str, Any]]:
    return [{"id": f"e{i}", "text": f"event {i}"} for i in range(n)]


def assert_exactly_once(results: list[dict[str, Any]], dead: list[dict[str, Any]], ids: set[str]) -> None:
    seen = [r["id"] for r in results] + [d["id"] for d in dead]
    assert sorted(seen) == sorted(ids), "every id exactly once across results and dead letters"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of the worker's Prometheus endpoint, as a user's scraper would read it."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in the metrics")


def probe(port: int, path: str) -> tuple[int, Any]:
    """(status, body) of a worker health endpoint, as a probe sees it; (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return 0, str(exc)
    try:
        return status, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return status, raw.decode(errors="replace")


class WorkerProcess:
    """``batchstream worker -c FILE`` as a subprocess, logging to a file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        full_env = {**os.environ, "OPENAI_API_KEY": "sk-test-secret-key", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "worker", "-c", str(config)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def produce_placed(
    bootstrap: str, topic: str, values: Iterable[bytes | dict[str, Any]], *, keys: Iterable[bytes | None] | None = None,
    partition: int | None = None,
) -> list[tuple[int, int]]:  # fmt: skip
    """Like :func:`produce`, but return where each value landed: ``(partition, offset)``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        key_iter = iter(keys) if keys is not None else None
        futures = []
        for value in values:
            raw = value if isinstance(value, bytes) else orjson.dumps(value)
            key = next(key_iter) if key_iter is not None else None
            futures.append(await producer.send(topic, raw, key=key, partition=partition))
        placed = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset) for meta in placed]


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset of each partition of ``topic``; never-committed partitions are absent."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def wait_committed_offsets(
    bootstrap: str, group: str, topic: str, expected: dict[int, int], timeout: float = 30
) -> None:
    """Wait until the group's committed offset of each partition in ``expected`` is exactly that."""
    seen: dict[int, int] = {}

    async def reached() -> bool:
        nonlocal seen
        seen = await committed_offsets(bootstrap, group, topic)
        return all(seen.get(p) == off for p, off in expected.items())

    try:
        await wait_until(reached, timeout=timeout, what=f"committed offsets {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen}") from None


async def wait_log(worker: WorkerProcess, text: str, *, count: int = 1, timeout: float = 60) -> None:
    """Wait until the worker's log holds ``text`` at least ``count`` times (the worker must stay alive)."""

    async def logged() -> bool:
        assert worker.proc.poll() is None, f"worker exited with {worker.proc.returncode}:\n{worker.log()[-4000:]}"
        return worker.log().count(text) >= count

    await wait_until(logged, timeout=timeout, interval=0.1, what=f"{text!r} x{count} in {worker.log_path.name}")


def run_cli(*args: str, timeout: float = 120, columns: int = 160) -> subprocess.CompletedProcess[str]:
    """``batchstream ARGS`` as an operator runs it (the tests' key in the environment)."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-secret-key", "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


async def create_topic(bootstrap: str, name: str, partitions: int, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=configs)]
        )
    finally:
        await admin.close()


async def set_topic_config(bootstrap: str, name: str, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs=configs)])
    finally:
        await admin.close()


async def committed_values(bootstrap: str, topic: str, partitions: int = 1) -> list[bytes | None]:
    """Every record a read_committed consumer sees in the topic, up to its last stable offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        values: list[bytes | None] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(m.value for m in messages)
        return values
    finally:
        await consumer.stop()
