"""``batchstream backfill`` on the real broker: a file run to completion as a named task version,
the same version again adding nothing, and a range of a topic by offsets."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from tests.support import TopicReader, end_offsets, pipeline, produce, run_cli

pytestmark = pytest.mark.kafka


def backfill(config: Path, *args: str) -> tuple[int, str]:
    proc = run_cli("backfill", "-c", str(config), "--pipeline", "p", *args, timeout=300, columns=120)
    return proc.returncode, proc.stdout + proc.stderr


def row(output: str, label: str) -> str:
    match = re.search(rf"│ {re.escape(label)}\s+│ ([^│]*?)\s+│", output)
    assert match, f"no {label!r} row in:\n{output}"
    return match.group(1)


async def test_a_file_is_backfilled_as_a_task_version_once_and_a_topic_range_by_offsets(
    bootstrap, emulator, make_topic, configure, tmp_path, unique
):
    emulator.emulator.faults.reject_lines_containing = "POISON"
    topic = await make_topic("in", partitions=1)
    config, _ = configure(pipeline("p", topic, template={"user": "{text}"}, validate_requests=False,
                                   window={"max_requests": 10, "max_wait": "300ms"}))  # fmt: skip
    events = [{"id": f"f{i}", "text": "POISON" if i in (4, 9) else f"ticket {i}"} for i in range(30)]
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join([*map(orjson.dumps, events), b"{not json"]) + b"\n")
    output = f"backfill-{unique}"

    code, shown = backfill(config, "--task-version", "v1", "--file", str(source), "--to", output)
    assert code == 0, shown
    assert (row(shown, "events"), row(shown, "results"), row(shown, "missing")) == ("31", "28", "0"), shown
    assert row(shown, "dead letters").startswith("3 "), shown
    async with TopicReader(bootstrap, output) as results:
        written = await results.until(28, timeout=30)
    assert {r["task_version"] for r in written} == {"v1"} and {r["id"] for r in written} == {
        f"f{i}" for i in range(30) if i not in (4, 9)}  # fmt: skip
    before = await end_offsets(bootstrap, output, 1)

    code, shown = backfill(config, "--task-version", "v1", "--file", str(source), "--to", output)
    assert code == 0 and row(shown, "missing") == "0", shown
    assert await end_offsets(bootstrap, output, 1) == before, "the same version again adds nothing"

    await produce(bootstrap, topic, [{"id": f"t{i}", "text": f"ticket {i}"} for i in range(20)])
    code, shown = backfill(config, "--task-version", "v2", "--topic", topic, "--offsets", "0:5-14",
                           "--to", output)  # fmt: skip
    assert code == 0 and (row(shown, "events"), row(shown, "results")) == ("10", "10"), shown
    async with TopicReader(bootstrap, output) as results:
        second = [r for r in await results.until(38, timeout=30) if r["task_version"] == "v2"]
    assert sorted(r["id"] for r in second) == sorted(f"t{i}" for i in range(5, 15))
