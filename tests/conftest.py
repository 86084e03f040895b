"""Shared fixtures: one real Kafka broker and one emulator per session, unique names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devkafka import KafkaBroker
from emulator import EmulatorThread
from tests.support import WorkerProcess


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


@pytest.fixture(autouse=True)
def _no_proxy() -> None:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
