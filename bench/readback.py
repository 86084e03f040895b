"""Worker memory while reading back many finished windows after a restart.

N windows of ``--window`` events each are sealed and submitted by a worker while the emulator
keeps their batches running; the worker stops, the batches finish, and a fresh worker resumes
every window from the state topic: it reads each window's events back from the input topic,
downloads its result file and writes its results. The fresh worker's resident memory is
sampled until every result is on the output topic. The same run does this for each count of
windows (``--windows 10,100``); the peak at the largest count as a ratio of the peak at the
smallest says whether memory grows with the windows waiting to be read back (1.0: flat).

Usage: ``.venv/bin/python -m bench.readback [--windows 10,100] [--window 50000]
[--write bench/RESULTS.md] [--chart bench/readback.png]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.backlog import wait_for_line
from bench.memory import rss_mb
from bench.run import PARTITIONS, create_topics, start_worker
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults

#: Seconds between memory samples.
SAMPLE = 0.5
#: Events produced per flush while filling the input topic.
CHUNK = 50_000


@dataclass
class Run:
    windows: int
    events: int
    seconds: float
    peak_mb: float
    samples: list[tuple[float, float]]


async def fill(bootstrap: str, topic: str, n: int, window: int) -> None:
    """``n`` events on ``topic``, whole windows per partition (window ``k`` on partition ``k % PARTITIONS``),
    produced in chunks (never all in memory)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for start in range(0, n, CHUNK):
            sent = []
            for i in range(start, min(n, start + CHUNK)):
                value = orjson.dumps({"id": f"r{i}", "text": f"read back event {i}"})
                sent.append(await producer.send(topic, value, partition=(i // window) % PARTITIONS))
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def committed(admin: AIOKafkaAdminClient, group: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


async def ends(consumer: AIOKafkaConsumer, topic: str) -> int:
    return sum((await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])).values())


def config_for(workdir: Path, bootstrap: str, base_url: str, topic: str, window: int) -> Path:
    pipeline = {
        "name": "readback", "input_topic": topic, "output_topic": f"{topic}.results",
        "dead_letter_topic": f"{topic}.dlq", "mode": "batch", "model": "gpt-5-mini", "template": {"user": "{text}"},
        "window": {"max_requests": window, "max_bytes": "100MB", "max_wait": "1h"},  # sealed by count
    }  # fmt: skip
    config = workdir / f"{topic}.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": topic, "commit_interval": 1},
        "provider": {"base_url": base_url, "api_key": "sk-bench", "poll_interval": "1s"},
        "pipelines": [pipeline],
    }))  # fmt: skip
    return config


async def submit_all(config: Path, workdir: Path, topic: str, n: int, emulator: EmulatorThread, before: int) -> None:
    """Run a worker until every event is in a submitted window, then stop it."""
    log = workdir / f"{topic}.submit.log"
    worker = start_worker(config, log)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_of(config))
    await admin.start()
    windows = n // window_of(config)
    try:
        await wait_for_line(log, "loaded state of partitions", worker)
        deadline = time.monotonic() + 7200
        while await committed(admin, topic) < n or len(emulator.emulator.batches) - before != windows:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the windows were not all submitted; see {log}")
            await asyncio.sleep(1.0)
    finally:
        await admin.close()
        worker.terminate()
        worker.wait(120)


def bootstrap_of(config: Path) -> str:
    return str(yaml.safe_load(config.read_text())["kafka"]["bootstrap_servers"])


def window_of(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["pipelines"][0]["window"]["max_requests"])


async def read_back(config: Path, workdir: Path, topic: str, n: int) -> tuple[float, float, list[tuple[float, float]]]:
    """A fresh worker resumes every window; (seconds, peak RSS MB, samples) until all ``n`` results are out."""
    log = workdir / f"{topic}.readback.log"
    worker = start_worker(config, log)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_of(config))
    await consumer.start()
    samples: list[tuple[float, float]] = []
    try:
        started = time.monotonic()
        deadline = started + 7200
        while await ends(consumer, f"{topic}.results") < n:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"not every result came out; see {log}")
            samples.append((time.monotonic() - started, rss_mb(worker.pid)))
            await asyncio.sleep(SAMPLE)
        return time.monotonic() - started, rss_mb(worker.pid, "VmHWM"), samples
    finally:
        await consumer.stop()
        worker.terminate()
        worker.wait(120)


async def run(bootstrap: str, emulator: EmulatorThread, windows: int, window: int, workdir: Path) -> Run:
    n = windows * window
    topic = f"readback-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, topic)
    await fill(bootstrap, topic, n, window)
    config = config_for(workdir, bootstrap, emulator.base_url, topic, window)
    emulator.emulator.faults.batch_seconds = 10 * 3600  # submitted, never finishing while the first worker runs
    before = len(emulator.emulator.batches)
    await submit_all(config, workdir, topic, n, emulator, before)
    emulator.emulator.faults.batch_seconds = 0  # every batch finishes now
    seconds, peak, samples = await read_back(config, workdir, topic, n)
    emulator.emulator.batches.clear()  # its memory, not the worker's
    return Run(windows, n, seconds, peak, samples)


def chart(path: Path, runs: list[Run]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        ax.plot(
            [s[0] for s in r.samples],
            [s[1] for s in r.samples],
            label=f"{r.windows} windows of {r.events // r.windows}",
        )
    ax.set_xlabel("seconds since the fresh worker started")
    ax.set_ylabel("worker RSS (MB)")
    ax.set_title("Worker memory while reading back finished windows after a restart")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def render(runs: list[Run], window: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    base = runs[0]
    rows = [f"| {r.windows} | {r.events} | {r.seconds:.0f} | {r.events / r.seconds:.0f} | {r.peak_mb:.0f} "
            f"| {r.peak_mb / base.peak_mb:.2f} |" for r in runs]  # fmt: skip
    return "\n".join([
        f"### Reading back finished windows after a restart, {stamp}: windows of {window} events",
        "",
        "| windows | results | seconds | results/s | worker peak RSS (VmHWM) MB | peak as a ratio of the first row |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--windows", default="10,100", help="counts of windows, the baseline first")
    parser.add_argument("--window", type=int, default=50_000)
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=Path("bench/readback.png"))
    args = parser.parse_args()
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults())
    workdir = Path(tempfile.mkdtemp(prefix="bench-readback-"))
    runs: list[Run] = []
    try:
        bootstrap = broker.start()
        emulator.start()
        for windows in (int(w) for w in args.windows.split(",")):
            runs.append(asyncio.run(run(bootstrap, emulator, windows, args.window, workdir)))
            r = runs[-1]
            print(
                f"{r.windows} windows, {r.events} results in {r.seconds:.0f}s, peak RSS {r.peak_mb:.0f} MB", flush=True
            )
    finally:
        emulator.stop()
        broker.stop()
    table = render(runs, args.window)
    print(table)
    chart(args.chart, runs)
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table + f"\n![read-back memory]({args.chart.name})\n")


if __name__ == "__main__":
    main()
