"""``batchstream dev kafka``: the first stdout line, a usable broker, a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.kafka
async def test_dev_kafka_prints_bootstrap_and_serves_plain_clients(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "dev", "kafka", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("bootstrap=127.0.0.1:"), first
        bootstrap = first.removeprefix("bootstrap=")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("hello", num_partitions=1, replication_factor=1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        await producer.send_and_wait("hello", b"world")
        await producer.stop()
        consumer = AIOKafkaConsumer("hello", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        message = await consumer.getone()
        await consumer.stop()
        assert message.value == b"world"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        proc.stdout.close()
    assert (tmp_path / "data" / "devkafka.json").exists()


def test_missing_java_and_maven_fail_at_once_with_what_to_install(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bare)}
    assert shutil.which("java", path=str(bare)) is None
    proc = subprocess.run(
        [sys.executable, "-m", "agents.cli", "dev", "kafka"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "java and mvn not found on PATH" in proc.stderr
    assert "openjdk" in proc.stderr and "maven" in proc.stderr and "docker compose" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.kafka
def test_a_broker_that_cannot_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "agents.cli", "dev", "kafka", "--port", str(taken.getsockname()[1])],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("batchstream: dev kafka: Kafka "), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_the_set_up_scripts_name_java_and_maven_when_they_are_missing(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "sed", "head", "cat"):
        found = shutil.which(tool)
        assert found is not None
        (bare / tool).symlink_to(found)
    proc = subprocess.run([str(ROOT / "scripts" / "need-java")], env={**os.environ, "PATH": str(bare)},
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 1
    assert "java mvn not found on PATH" in proc.stderr and "openjdk-17-jre-headless maven" in proc.stderr
