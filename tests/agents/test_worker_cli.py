"""``batchstream worker`` and ``batchstream emulator`` refuse bad configuration at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, free_port, settings_document

SECRET = "sk-do-not-print-me"


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
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_unreachable_kafka_fails_fast_naming_the_setting(tmp_path: Path) -> None:
    proc = batchstream("worker", "-c", config(tmp_path, f"127.0.0.1:{free_port()}"))
    assert proc.returncode == 2, proc.stderr
    assert "kafka.bootstrap_servers: cannot reach Kafka" in proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr


@pytest.mark.kafka
def test_missing_input_topic_fails_fast(tmp_path: Path, bootstrap: str) -> None:
    proc = batchstream("worker", "-c", config(tmp_path, bootstrap, input_topic="no-such-topic"))
    assert proc.returncode == 2, proc.stderr
    assert "pipelines.t.input_topic: topic 'no-such-topic' does not exist" in proc.stderr


def test_emulator_refuses_an_impossible_fault_rate() -> None:
    proc = batchstream("emulator", "--flex-429-rate", "1.5")
    assert proc.returncode == 2
    assert "flex-429-rate: Input should be less than or equal to 1" in proc.stderr
