"""``batchstream worker`` and ``batchstream emulator`` refuse bad configuration at start-up (exit 3;
bad emulator options are usage errors, exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, settings_document

SECRET = "sk-do-not-print-me"
#: "Fails fast": well within a start-up probe's patience (the interpreter's start-up included),
#: far below the minutes a worker retrying forever, or the subprocess timeout (120 s), would take.
FAST = 30.0


def batchstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OPENAI_API_KEY": SECRET},
    )  # fmt: skip


def config(tmp_path: Path, bootstrap: str, **pipeline: object) -> str:
    document = settings_document(**pipeline)
    document["kafka"] = {"bootstrap_servers": bootstrap}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


@pytest.mark.parametrize(
    ("pipeline", "field"),
    [
        ({"mode": "flex", "flex": {"concurrency": 0}}, "pipelines.0.flex.concurrency"),
        ({"max_batch_latency": "2h"}, "flex.fallback: 'batch' cannot be combined with max_batch_latency"),
        ({"window": {"max_wait": "soon"}}, "pipelines.0.window.max_wait"),
    ],
)
def test_invalid_configuration_names_the_field_and_hides_the_key(tmp_path: Path, pipeline: dict, field: str) -> None:
    proc = batchstream("worker", "-c", config(tmp_path, "127.0.0.1:9092", **pipeline))
    assert proc.returncode == 3, proc.stderr
    assert field in proc.stderr
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.kafka
def test_missing_input_topic_fails_fast(tmp_path: Path, bootstrap: str) -> None:
    started = time.monotonic()
    proc = batchstream("worker", "-c", config(tmp_path, bootstrap, input_topic="no-such-topic"))
    took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert took < FAST, f"took {took:.1f}s to refuse a missing input topic"
    assert "pipelines.t.input_topic: topic 'no-such-topic' does not exist" in proc.stderr


def test_emulator_refuses_an_impossible_fault_rate() -> None:
    proc = batchstream("emulator", "--flex-429-rate", "1.5")
    assert proc.returncode == 2
    assert "flex-429-rate: Input should be less than or equal to 1" in proc.stderr


async def _topic(bootstrap: str, name: str, **configs: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1, topic_configs=configs)])
    finally:
        await admin.close()


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("configs", "said"),
    [
        ({"cleanup.policy": "delete"}, "has cleanup.policy=delete; it must be compact"),
        (
            {"cleanup.policy": "compact,delete", "retention.ms": "60000"},
            "has cleanup.policy=compact,delete with retention.ms=60000",
        ),
    ],
)
async def test_a_state_topic_that_can_lose_records_is_refused_naming_topic_and_setting(
    tmp_path: Path, bootstrap: str, unique: str, configs: dict[str, str], said: str
) -> None:
    await _topic(bootstrap, f"in-{unique}")
    await _topic(bootstrap, f"state-{unique}", **configs)
    path = config(tmp_path, bootstrap, input_topic=f"in-{unique}", state_topic=f"state-{unique}",
                  output_topic=f"out-{unique}", dead_letter_topic=f"dlq-{unique}")  # fmt: skip
    proc = batchstream("worker", "-c", path)
    assert proc.returncode == 3, proc.stderr
    assert f"pipelines.t.state_topic: topic 'state-{unique}' {said}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.kafka
async def test_a_dead_letter_topic_too_small_for_a_dead_letter_is_refused(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    await _topic(bootstrap, f"in-{unique}")
    await _topic(bootstrap, f"dlq-{unique}", **{"max.message.bytes": "1000"})
    path = config(tmp_path, bootstrap, input_topic=f"in-{unique}", state_topic=f"state-{unique}",
                  output_topic=f"out-{unique}", dead_letter_topic=f"dlq-{unique}")  # fmt: skip
    proc = batchstream("worker", "-c", path)
    assert proc.returncode == 3, proc.stderr
    assert f"pipelines.t.dead_letter_topic: topic 'dlq-{unique}' has max.message.bytes=1000" in proc.stderr


@pytest.mark.kafka
def test_topics_the_broker_refuses_to_create_are_waited_for_then_named(
    tmp_path: Path, bootstrap: str, unique: str
) -> None:
    """A CreateTopics refusal (here a replication factor the one-broker cluster cannot meet; also
    what a broker that has just restarted answers) is not taken for success: the worker waits for
    it like an unreachable broker, then exits naming the topic and the error."""
    import asyncio

    asyncio.run(_topic(bootstrap, f"in-{unique}"))
    path = config(tmp_path, bootstrap, input_topic=f"in-{unique}", state_topic=f"state-{unique}",
                  output_topic=f"out-{unique}", dead_letter_topic=f"dlq-{unique}")  # fmt: skip
    document = yaml.safe_load(Path(path).read_text())
    document["kafka"]["replication_factor"] = 3
    document["startup_timeout"] = "3s"
    Path(path).write_text(yaml.safe_dump(document))
    proc = batchstream("worker", "-c", path)
    assert proc.returncode == 1, proc.stderr
    assert "did not create" in proc.stderr and "InvalidReplicationFactorError" in proc.stderr, proc.stderr
    assert f"out-{unique}" in proc.stderr and "waiting for Kafka" in proc.stderr
    assert "Traceback" not in proc.stderr
