"""Operator commands' memory against the size of the topics they read.

For each size N, a pipeline's dead-letter topic and output topic get N records each (dead
letters of realistic size, 100 of them of a rare reason; results with a cost). Each command
runs as an operator runs it, in its own process, and its peak resident memory (``ru_maxrss``)
is recorded: ``status --json`` (reads the output, dead-letter and state topics), ``dlq
inspect``, and ``dlq replay --reason template_error`` (reads every dead letter, replays the 100
it chose). In the same run, the baseline reads the dead-letter topic whole into a list, as
these commands did before they streamed it.

Usage: ``.venv/bin/python -m bench.ops_memory [--sizes 10000,100000,1000000]
[--write bench/RESULTS.md] [--chart bench/ops_memory.png]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devkafka import KafkaBroker

ROOT = Path(__file__).resolve().parents[1]
RARE = 100
COMMANDS = {
    "status --json": ["status", "--json"],
    "dlq inspect": ["dlq", "inspect", "--pipeline", "p"],
    "dlq replay (100 chosen)": ["dlq", "replay", "--pipeline", "p", "--reason", "template_error"],
}
#: Reads the dead-letter topic whole into a list: what the commands did before they streamed.
BASELINE = """
import asyncio, sys
from ops.topics import TopicReader
async def main():
    async with TopicReader(sys.argv[1], {}) as reader:
        records = await reader.read(sys.argv[2])
    print(len(records))
asyncio.run(main())
"""


def letter(i: int, topic: str) -> bytes:
    reason = "template_error" if i < RARE else ("invalid_json" if i % 3 else "provider_rejected")
    return orjson.dumps({
        "id": f"e{i}", "pipeline": "p", "reason": reason, "attempts": 1,
        "message": "the event's template needs {subject}, which the event does not have " + "x" * 200,
        "source": {"topic": topic, "partition": i % 3, "offset": i // 3, "timestamp": 1_764_000_000_000},
        "event": {"id": f"e{i}", "text": f"ticket {i}: the printer is on fire again"},
        "failed_at": 1_764_000_000.0, "task_version": "v1",
    })  # fmt: skip


def result(i: int, topic: str) -> bytes:
    return orjson.dumps({
        "id": f"r{i}", "pipeline": "p", "task_version": "v1", "mode": "batch", "batch_id": "batch_x",
        "output": {"category": "bug", "urgency": "high"}, "response": {"id": f"chatcmpl-{i}"},
        "usage": {"prompt_tokens": 60, "completion_tokens": 25}, "cost": {"paid": 0.00002, "realtime": 0.00004},
        "source": {"topic": topic, "partition": i % 3, "offset": i // 3, "timestamp": 1_764_000_000_000},
    })  # fmt: skip


async def fill(bootstrap: str, n: int) -> str:
    topic = f"ops-{n}-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1) for name in (topic, f"{topic}.dlq", f"{topic}.results")])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1_000_000, acks=1)
    await producer.start()
    try:
        for make, target in ((letter, f"{topic}.dlq"), (result, f"{topic}.results")):
            for start in range(0, n, 20_000):
                sends = [await producer.send(target, make(i, topic), partition=i % 3)
                         for i in range(start, min(n, start + 20_000))]  # fmt: skip
                await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return topic


def peak_mb(argv: list[str]) -> float:
    """Run ``argv`` to its end; its peak resident memory in MB."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
             "sys.stderr.write(p.stderr.decode()[-2000:]) if p.returncode else None; "
             "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True, text=True, check=True)
    code, kb = out.stdout.split()
    if code != "0":
        raise RuntimeError(f"{argv} exited {code}: {out.stderr}")
    return int(kb) / 1024


def measure(bootstrap: str, topic: str, workdir: Path) -> dict[str, float]:
    config = workdir / f"{topic}.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"g-{topic}"},
        "provider": {"api_key": "sk-bench", "base_url": "http://127.0.0.1:9/v1"},
        "pipelines": [{"name": "p", "input_topic": topic, "output_topic": f"{topic}.results",
                       "dead_letter_topic": f"{topic}.dlq", "model": "gpt-5-mini"}],
    }))  # fmt: skip
    cli = [sys.executable, "-m", "agents.cli"]
    peaks = {"read whole (baseline)": peak_mb([sys.executable, "-c", BASELINE, bootstrap, f"{topic}.dlq"])}
    for name, args in COMMANDS.items():
        where = 2 if args[0] == "dlq" else 1
        peaks[name] = peak_mb([*cli, *args[:where], "-c", str(config), *args[where:]])
    return peaks


def chart(path: Path, sizes: list[int], rows: dict[int, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in rows[sizes[0]]:
        ax.plot(sizes, [rows[n][name] for n in sizes], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("records in the topics read (dead letters; as many results)")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title("operator commands: memory against topic size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(sizes: list[int], rows: dict[int, dict[str, float]], chart_name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = list(rows[sizes[0]])
    lines = [f"### Operator commands' memory, {stamp}: peak RSS MB against records in the topics read", "",
             "| command | " + " | ".join(f"{n:,}" for n in sizes) + f" | {sizes[-1]:,} / {sizes[0]:,} |",
             "|---|" + "---:|" * (len(sizes) + 1)]  # fmt: skip
    for name in names:
        first, last = rows[sizes[0]][name], rows[sizes[-1]][name]
        lines.append(f"| {name} | " + " | ".join(f"{rows[n][name]:.0f}" for n in sizes) + f" | {last / first:.2f}x |")
    lines += ["", f"![operator commands' memory]({chart_name})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=Path("bench/ops_memory.png"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    broker = KafkaBroker(heap="1g")
    workdir = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    rows: dict[int, dict[str, float]] = {}
    try:
        bootstrap = broker.start()
        for n in sizes:
            began = time.monotonic()
            topic = asyncio.run(fill(bootstrap, n))
            filled = time.monotonic() - began
            rows[n] = measure(bootstrap, topic, workdir)
            print(f"{n}: filled in {filled:.0f}s; " + ", ".join(f"{k} {v:.0f} MB" for k, v in rows[n].items()),
                  flush=True)  # fmt: skip
    finally:
        broker.stop()
    table = render(sizes, rows, args.chart.name)
    print(table)
    chart(args.chart, sizes, rows)
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table)
    os.sync()


if __name__ == "__main__":
    main()
