"""Operator commands' memory against the size of the topics they read.

For each size N, a pipeline's dead-letter topic and output topic get N records each (dead
letters of realistic size, 100 of them of a rare reason; results with a cost). Each command
runs as an operator runs it, in its own process, and its peak resident memory (``ru_maxrss``)
is recorded: ``status --json`` (reads the output, dead-letter and state topics), ``dlq
inspect``, and ``dlq replay --reason template_error`` (reads every dead letter, replays the 100
it chose). In the same run, the baseline reads the dead-letter topic whole into a list, as
these commands did before they streamed it.

``backfill`` (for the sizes of ``--backfill-sizes``: it runs a worker over every event, a few
thousand a second, against the emulator): a JSONL file of N events back-filled to completion,
the same again (nothing to copy or run: it reads the file, the backfill topic's ends and the N
results), and a topic of N events over 3 partitions. Its own peak is measured inside its
process (``RUSAGE_SELF``: the worker it starts is a process of its own, whose peak is shown
apart, for reference). Its baseline reads the file whole into a list of lines and the backfill
topic whole into a set of event ids, as ``backfill`` did before it streamed both.

Usage: ``.venv/bin/python -m bench.ops_memory [--sizes 10000,100000,1000000]
[--backfill-sizes 10000,100000] [--write bench/RESULTS.md] [--chart bench/ops_memory.png]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
from emulator import EmulatorThread, Faults

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
from streams.topics import TopicReader
async def main():
    async with TopicReader(sys.argv[1], {}) as reader:
        records = await reader.read(sys.argv[2])
    print(len(records))
asyncio.run(main())
"""
#: Reads the file whole into lines and the backfill topic whole into event ids: what ``backfill`` did before.
BACKFILL_BASELINE = """
import asyncio, sys
from pathlib import Path
import orjson
from streams.topics import TopicReader
def event_id(record):
    try:
        event = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("id"), str | int):
        return str(event["id"])
    return f"{record.topic}/{record.partition}/{record.offset}"
async def main():
    data = Path(sys.argv[3]).read_bytes()
    lines = [line for line in data.splitlines() if line.strip()]
    async with TopicReader(sys.argv[1], {}) as reader:
        expected = {event_id(r) for r in await reader.read(sys.argv[2])}
    print(len(lines), len(expected))
asyncio.run(main())
"""
#: Runs the CLI in this process; writes its own peak RSS and its children's (the worker's) in KB to argv[1].
#: Its own is its VmHWM: its ``ru_maxrss`` would start at the high-water mark of the process that
#: started it (Linux carries it over ``exec``), here the bench's, which grows with the emulator in it.
CLI_PEAKS = """
import atexit, resource, runpy, sys
out = sys.argv.pop(1)
def peaks():
    with open("/proc/self/status") as status:
        own = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as fh:
        fh.write(f"{own} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
atexit.register(peaks)
runpy.run_module("agents.cli", run_name="__main__", alter_sys=True)
"""
#: The rows of the backfill run, in order.
FILE, AGAIN, TOPIC = "backfill --file", "backfill --file again (nothing to do)", "backfill --topic (3 partitions)"
WORKER, BACKFILL_BASE = "backfill's worker (--file; reference)", "backfill read whole (baseline)"


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


def event(i: int) -> bytes:
    return orjson.dumps({"id": f"b{i}", "text": f"ticket {i}: the printer is on fire again, the third time this week",
                         "customer": {"name": f"customer {i % 997}", "plan": "team"}})  # fmt: skip


def write_events(path: Path, n: int) -> None:
    with path.open("wb") as fh:
        for start in range(0, n, 10_000):
            fh.write(b"".join(event(i) + b"\n" for i in range(start, min(n, start + 10_000))))


async def fill_events(bootstrap: str, topic: str, n: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1_000_000, acks=1)
    await producer.start()
    try:
        for start in range(0, n, 20_000):
            await asyncio.gather(*[await producer.send(topic, event(i), partition=i % 3)
                                   for i in range(start, min(n, start + 20_000))])  # fmt: skip
    finally:
        await producer.stop()


def cli_peaks_mb(args: list[str], workdir: Path) -> tuple[float, float]:
    """Run ``batchstream *args`` to its end; its own peak resident memory and its children's, in MB."""
    out = workdir / f"peaks-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, "-c", CLI_PEAKS, str(out), *args], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"{args} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    own, children = (int(kb) / 1024 for kb in out.read_text().split())
    return own, children


def measure_backfill(bootstrap: str, base_url: str, n: int, workdir: Path) -> dict[str, float]:
    """``backfill`` of N events: a file, the same again, a topic; and the whole-input baseline."""
    name = f"fill-{n}-{uuid.uuid4().hex[:6]}"
    events, config = workdir / f"{name}.jsonl", workdir / f"{name}.yaml"
    write_events(events, n)
    asyncio.run(fill_events(bootstrap, f"{name}.events", n))
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"g-{name}", "commit_interval": 1},
        "provider": {"api_key": "sk-bench", "base_url": base_url, "poll_interval": "200ms"},
        "pipelines": [{"name": "p", "input_topic": f"{name}.events", "output_topic": f"{name}.results",
                       "dead_letter_topic": f"{name}.dlq", "model": "gpt-5-mini", "template": {"user": "{text}"},
                       "mode": "batch", "window": {"max_requests": 5000, "max_bytes": "100MB", "max_wait": "1s"}}],
    }))  # fmt: skip
    run = ["backfill", "-c", str(config), "--pipeline", "p", "--task-version", "v1", "--to", f"{name}.filled"]
    peaks: dict[str, float] = {}
    began = time.monotonic()
    peaks[FILE], peaks[WORKER] = cli_peaks_mb([*run, "--file", str(events)], workdir)
    took = time.monotonic() - began
    peaks[AGAIN], _ = cli_peaks_mb([*run, "--file", str(events)], workdir)
    peaks[TOPIC], _ = cli_peaks_mb([*run, "--topic", f"{name}.events"], workdir)
    with events.open("rb") as fh:
        filled = f"batchstream.backfill.p.{hashlib.file_digest(fh, 'sha256').hexdigest()[:12]}"
    peaks[BACKFILL_BASE] = peak_mb([sys.executable, "-c", BACKFILL_BASELINE, bootstrap, filled, str(events)])
    print(f"{n}: backfill --file ran in {took:.0f}s ({n / took:.0f} events/s)", flush=True)
    return peaks


def names(rows: dict[int, dict[str, float]]) -> list[str]:
    """Every row measured at some size, in the order measured."""
    return list(dict.fromkeys(name for row in rows.values() for name in row))


def chart(path: Path, sizes: list[int], rows: dict[int, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names(rows):
        measured = [n for n in sizes if name in rows[n]]
        ax.plot(measured, [rows[n][name] for n in measured], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("records in the topics read (dead letters; as many results; events back-filled)")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title("operator commands: memory against topic size")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratio(sizes: list[int], values: dict[int, float]) -> str:
    """Largest size's value against the smallest's (the sizes named when not the table's)."""
    measured = [n for n in sizes if n in values]
    first, last = measured[0], measured[-1]
    span = "" if (first, last) == (sizes[0], sizes[-1]) else f" ({last:,} / {first:,})"
    return f"{values[last] / values[first]:.2f}x{span}"


def render(sizes: list[int], rows: dict[int, dict[str, float]], chart_name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### Operator commands' memory, {stamp}: peak RSS MB against records in the topics read", "",
             "| command | " + " | ".join(f"{n:,}" for n in sizes) + f" | {sizes[-1]:,} / {sizes[0]:,} |",
             "|---|" + "---:|" * (len(sizes) + 1)]  # fmt: skip
    for name in names(rows):
        values = {n: rows[n][name] for n in sizes if name in rows[n]}
        cells = " | ".join(f"{values[n]:.0f}" if n in values else "-" for n in sizes)
        lines.append(f"| {name} | {cells} | {ratio(sizes, values)} |")
    lines += ["", f"![operator commands' memory]({chart_name})", ""]
    return "\n".join(lines)


def sizes_of(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--backfill-sizes", default="10000,100000", help="sizes to measure backfill at ('': none)")
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=Path("bench/ops_memory.png"))
    args = parser.parse_args()
    commands, backfills = sizes_of(args.sizes), sizes_of(args.backfill_sizes)
    sizes = sorted({*commands, *backfills})
    broker = KafkaBroker(heap="1g")
    emulator = EmulatorThread(Faults())
    workdir = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    rows: dict[int, dict[str, float]] = {n: {} for n in sizes}
    try:
        bootstrap = broker.start()
        base_url = emulator.start() if backfills else ""
        for n in sizes:
            began = time.monotonic()
            if n in commands:
                topic = asyncio.run(fill(bootstrap, n))
                print(f"{n}: filled in {time.monotonic() - began:.0f}s", flush=True)
                rows[n].update(measure(bootstrap, topic, workdir))
            if n in backfills:
                rows[n].update(measure_backfill(bootstrap, base_url, n, workdir))
            print(f"{n}: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rows[n].items()) +
                  f" ({time.monotonic() - began:.0f}s)", flush=True)  # fmt: skip
    finally:
        if backfills:
            emulator.stop()
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
