"""Shared fixtures: one real Kafka broker and one emulator per session, unique names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import hypothesis  # noqa: F401 - imported (and its modules compiled) before any test recurses deeply
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devkafka import KafkaBroker
from emulator import EmulatorThread
from tests.support import TopicReader, WorkerProcess, pipeline, produce, wait_committed, wait_until, write_config


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    broker = KafkaBroker()
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: KafkaBroker) -> str:
    return kafka_broker.bootstrap


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the broker's log tail to a failed test that used the broker."""
    report = yield
    if report.failed and call.when == "call" and "kafka_broker" in getattr(item, "fixturenames", ()):
        broker = item.funcargs.get("kafka_broker")  # type: ignore[attr-defined]
        if broker is None:
            broker = item._request.getfixturevalue("kafka_broker")  # type: ignore[attr-defined]
        report.sections.append(("kafka broker log (tail)", broker.log_tail(80)))
    return report


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorThread]:
    server = EmulatorThread()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def emulator(emulator_server: EmulatorThread) -> Iterator[EmulatorThread]:
    """The session's emulator with fresh state and no faults for this test."""
    emulator_server.emulator.clear()
    yield emulator_server


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def make_topic(bootstrap: str) -> AsyncIterator[object]:
    """Factory: ``await make_topic("name", partitions=3)`` creates a uniquely named topic."""
    created: list[str] = []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()

    async def make(prefix: str, partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        return name

    yield make
    try:
        await admin.delete_topics(created)
    except Exception:
        pass
    await admin.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Worker subprocesses started by a test; all are killed at teardown."""
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        proc.kill()


@pytest.fixture
def configure(bootstrap: str, emulator: EmulatorThread, tmp_path: Path, unique: str) -> Callable[..., tuple[Path, str]]:
    """Factory: ``configure(pipeline(...), ...)`` writes a worker config; returns (path, group id)."""

    def make(*pipelines: dict[str, Any], poll_interval: float = 0.2, **top_level: Any) -> tuple[Path, str]:
        group = f"g-{unique}"
        path = write_config(tmp_path / "c.yaml", bootstrap=bootstrap, base_url=emulator.base_url, group=group,
                            pipelines=list(pipelines), poll_interval=poll_interval, **top_level)  # fmt: skip
        return path, group

    return make


@pytest.fixture
def start_worker(workers: list[WorkerProcess], tmp_path: Path) -> Callable[[Path, str], WorkerProcess]:
    """Factory: ``start_worker(config, "name")`` runs a worker, logging to ``<tmp>/<name>.log``."""

    def start(config: Path, name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(config, tmp_path / f"{name}.log")
        workers.append(worker)
        return worker

    return start


class Fates(NamedTuple):
    results: list[dict[str, Any]]
    dead: list[dict[str, Any]]
    worker: WorkerProcess


@pytest.fixture
def run_pipeline(bootstrap: str, make_topic: Any, configure: Any, start_worker: Any) -> Callable[..., Awaitable[Fates]]:
    """Produce ``values`` to a new topic, run one worker with pipeline ``p`` (``overrides``
    applied) until results + dead letters reach ``expect`` (default: one per value) and every
    input offset is committed; return what the output and dead-letter topics hold."""

    async def run(values: list[Any], *, partitions: int = 2, expect: int | None = None,
                  keys: list[bytes | None] | None = None, headers: list[list[tuple[str, bytes]]] | None = None,
                  settings: dict[str, Any] | None = None, **overrides: Any) -> Fates:  # fmt: skip
        topic = await make_topic("in", partitions=partitions)
        config, group = configure(pipeline("p", topic, **overrides), **(settings or {}))
        await produce(bootstrap, topic, values, keys=keys, headers=headers)
        worker = start_worker(config)
        total = len(values) if expect is None else expect
        async with TopicReader(bootstrap, f"{topic}.results") as results, TopicReader(bootstrap, f"{topic}.dlq") as dlq:

            async def all_fates() -> bool:
                assert worker.proc.poll() is None, worker.log()
                return len(await results.poll()) + len(await dlq.poll()) >= total

            await wait_until(all_fates, timeout=120, what=f"{total} results and dead letters")

            await wait_committed(bootstrap, group, topic, len(values))
            return Fates(results.values, dlq.values, worker)

    return run


@pytest.fixture(autouse=True)
def _no_proxy() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
