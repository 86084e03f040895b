"""The command line as an operator meets it: every command against a broker that is not there,
bad arguments and files, ``--version`` and ``--help``: one line naming what failed, the
documented exit code (1 the run failed, 2 usage, 3 configuration), never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, free_port, settings_document

SECRET = "sk-cli-never-printed-0123456789"
WEBHOOK_SECRET = "whsec_bmV2ZXItcHJpbnRlZA=="


def batchstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OPENAI_API_KEY": SECRET}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def assert_one_line_failure(proc: subprocess.CompletedProcess[str], code: int, said: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}:\n{out}"
    assert "Traceback" not in out and "Unclosed" not in out and "Task was destroyed" not in out, out
    assert said in proc.stderr, out
    assert SECRET not in out and "bmV2ZXItcHJpbnRlZA" not in out


@pytest.fixture
def away(tmp_path: Path) -> Iterator[Path]:
    """A configuration whose broker is a closed port on this machine (nothing listens there)."""
    document = settings_document()
    document["kafka"] = {"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    document["startup_timeout"] = "2s"
    document["webhooks"] = {"secret": "${BATCHSTREAM_TEST_WEBHOOK_SECRET}"}
    path = tmp_path / "away.yaml"
    path.write_text(yaml.safe_dump(document))
    os.environ["BATCHSTREAM_TEST_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    yield path
    os.environ.pop("BATCHSTREAM_TEST_WEBHOOK_SECRET", None)


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["dlq", "inspect", "--pipeline", "t"],
        ["dlq", "replay", "--pipeline", "t"],
        ["dlq", "replay", "--pipeline", "t", "--dry-run"],
        ["backfill", "--pipeline", "t", "--task-version", "v2", "--topic", "in", "--to", "out.v2"],
        ["webhooks"],
    ],
    ids=lambda c: " ".join(c),
)
def test_operator_commands_against_an_unreachable_broker_say_so_in_one_line(away: Path, command: list[str]) -> None:
    config = ["-c", str(away)]
    args = [*command[:2], *config, *command[2:]] if command[0] == "dlq" else [command[0], *config, *command[1:]]
    proc = batchstream(*args)
    assert_one_line_failure(proc, 1, "batchstream: cannot reach Kafka at 127.0.0.1:")


def test_a_worker_waits_for_its_broker_then_exits_as_a_runtime_failure(away: Path) -> None:
    proc = batchstream("worker", "-c", str(away))
    assert proc.returncode == 1, proc.stderr
    assert "waiting for Kafka: cannot reach Kafka at 127.0.0.1:" in proc.stderr, "each wait is logged with its cause"
    assert "gave up after startup_timeout=2s" in proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["backfill", "--pipeline", "t", "--task-version", "v", "--file", "missing.jsonl", "--to", "o"],
            "--file: missing.jsonl: no such file",
        ),
        (["status", "--watch", "--interval=-1s"], "argument --interval: invalid"),
        (["status", "--watch", "--interval", "0s"], "must be more than 0"),
        (["dlq", "replay", "--pipeline", "t", "--max-replays", "-1"], "must be 0 or more"),
        (["dlq", "inspect", "--pipeline", "nope"], "--pipeline: no pipeline named 'nope'"),
        (["status", "--json", "--watch"], "--json and --watch: choose one"),
        (["dlq", "replay", "--pipeline", "t", "--since", "yesterday"], "--since:"),
        (["status", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "",
)
def test_bad_arguments_are_usage_errors(away: Path, args: list[str], said: str) -> None:
    where = 2 if args[0] == "dlq" else 1
    proc = batchstream(*args[:where], "-c", str(away), *args[where:])
    assert_one_line_failure(proc, 2, said)


def test_a_bad_configuration_is_a_configuration_error(tmp_path: Path) -> None:
    missing = batchstream("status", "-c", str(tmp_path / "nowhere.yaml"))
    assert_one_line_failure(missing, 3, "cannot read configuration")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**settings_document(), "startup_timeout": "-5s"}))
    assert_one_line_failure(batchstream("worker", "-c", str(path)), 3, "startup_timeout")


def test_the_emulator_on_a_port_in_use_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = batchstream("emulator", "--port", str(taken.getsockname()[1]), timeout=60)
    assert_one_line_failure(proc, 1, "batchstream: cannot serve on 127.0.0.1:")


def test_version_and_help_show_defaults() -> None:
    version = batchstream("--version")
    assert version.returncode == 0 and version.stdout.startswith("batchstream "), version
    assert version.stdout.split()[1][0].isdigit(), version.stdout
    status = batchstream("status", "--help")
    assert status.returncode == 0
    assert "(default: 2s)" in " ".join(status.stdout.split()), status.stdout
    worker = batchstream("worker", "--help")
    assert "--log-level" in worker.stdout and "(default: info)" in worker.stdout
    top = batchstream("--help")
    assert "exit codes: 0 done, 1 the run failed, 2 usage, 3 configuration" in top.stdout
