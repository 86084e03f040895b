"""Draining a backlog: the batch path against faust's own floor and a raw Kafka copy, in one run.

A backlog of N events is written to a fresh topic before each scenario starts, so only
consumption is timed:

- ``copy``: a plain aiokafka consumer copying every event to another topic (acks=all), its
  partitions assigned by hand (no group join); timed from start to the last record sent;
- ``floor``: a bare faust agent on the worker's own app settings that consumes and acks
  (``bench/floor.py``), with faust's Kafka transport as faust ships it; timed from its
  partitions' assignment to its N-th event;
- ``tuned``: the same agent on batchstream's transport, whose consumer hands a message over
  without faust's per-message wait when nothing can block it (``streams/app.py``);
- ``batch``: a batchstream worker, ``mode: batch``, windows of ``--window`` requests, the
  emulator finishing batches at once; timed from its partitions' state being loaded to the
  N-th record on the output topic (read from the topic's end offsets, not by consuming it).

Usage: ``.venv/bin/python -m bench.backlog [--events 100000] [--window 5000] [--write bench/RESULTS.md]``
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.chart import bars
from bench.run import PARTITIONS, ROOT, create_topics, events, peak_rss_mb, start_worker
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults

#: How often markers and end offsets are looked at (the timing resolution).
TICK = 0.02
#: Where to write a py-spy profile of the worker (raw folded stacks), from ``BENCH_PROFILE``.
PROFILE = os.environ.get("BENCH_PROFILE")


async def backlog(bootstrap: str, n: int) -> str:
    """A fresh topic holding ``n`` events."""
    topic = f"backlog-{uuid.uuid4().hex[:8]}"
    await create_topics(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=f"k{i}".encode()) for i, value in enumerate(events(n))]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return topic


async def end_total(consumer: AIOKafkaConsumer, topic: str) -> int:
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    return sum((await consumer.end_offsets(partitions)).values())


async def copy(bootstrap: str, n: int) -> float:
    src = await backlog(bootstrap, n)
    dst = f"{src}.copy"
    await create_topics(bootstrap, dst)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([TopicPartition(src, p) for p in range(PARTITIONS)])
        started, done = time.perf_counter(), 0
        while done < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            futures = [await producer.send(dst, m.value, key=m.key) for ms in batch.values() for m in ms]
            await asyncio.gather(*futures)
            done += len(futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()


def spawn(args: list[str], log: Path | None = None) -> subprocess.Popen[bytes]:
    if log is None:
        return subprocess.Popen(args, cwd=ROOT)
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def has_line(log: Path, marker: str) -> bool:
    return marker in log.read_text(errors="replace")


async def wait_for_line(log: Path, marker: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not has_line(log, marker):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {marker!r} in {log}")
        await asyncio.sleep(TICK)


async def floor(bootstrap: str, n: int, workdir: Path, transport: str = "faust") -> float:
    topic = await backlog(bootstrap, n)
    log = workdir / f"{topic}.floor.log"
    process = spawn([sys.executable, "-m", "bench.floor", bootstrap, topic, str(n), transport], log)
    try:
        await wait_for_line(log, "assigned", process)
        started = time.perf_counter()
        await wait_for_line(log, "done", process, timeout=600)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(60)


@dataclass(frozen=True)
class Drained:
    """A worker's run over a backlog: seconds to the N-th result, its CPU seconds, the
    benchmark process's (the emulator's) CPU seconds, and its peak RSS."""

    seconds: float
    worker_cpu: float
    emulator_cpu: float
    rss_mb: float | None


async def drain(
    bootstrap: str, workdir: Path, topic: str, n: int, provider: dict[str, Any], pipeline: dict[str, Any],
    guarantee: str = "at_least_once", *, read: bool = False, root: Path = ROOT,
) -> Drained:  # fmt: skip
    """Run a worker with one pipeline over ``topic`` (its results to ``<topic>.results``) until N
    results are written; timed from its partitions' state being loaded.

    The results are counted from the topic's end offsets, or with ``read`` by reading them as a
    downstream consumer does (``read_committed``): end offsets also count the markers that
    commit transactions (``exactly_once``)."""
    config = workdir / f"{topic}.yaml"
    config.write_text(yaml.safe_dump({
        "processing_guarantee": guarantee,
        "kafka": {"bootstrap_servers": bootstrap, "group_id": topic, "commit_interval": 1},
        "provider": {"api_key": "sk-bench", **provider},
        "pipelines": [{"name": "bench", "input_topic": topic, "output_topic": f"{topic}.results",
                       "dead_letter_topic": f"{topic}.dlq", "model": "gpt-5-mini",
                       "template": {"user": "{text}"}, **pipeline}],
    }))  # fmt: skip
    log = workdir / f"{topic}.log"
    worker = start_worker(config, log, root)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed",
                                auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    seen = 0

    async def written() -> int:
        nonlocal seen
        if not read:
            return await end_total(consumer, f"{topic}.results")
        batch = await consumer.getmany(timeout_ms=int(TICK * 1000), max_records=10_000)
        seen += sum(len(records) for records in batch.values())
        return seen

    try:
        await wait_for_line(log, "loaded state of partitions", worker)
        if read:
            consumer.assign([TopicPartition(f"{topic}.results", p) for p in range(PARTITIONS)])
        if PROFILE:
            py_spy = str(Path(sys.executable).parent / "py-spy")
            spawn([py_spy, "record", "--pid", str(worker.pid), "-r", "200", "-f", "raw", "-o", PROFILE,
                   "--nonblocking"])  # fmt: skip
        started, deadline = time.perf_counter(), time.monotonic() + 1800
        cpu, own = cpu_seconds(worker.pid), time.process_time()
        while await written() < n:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not finish; see {log}")
            if not read:
                await asyncio.sleep(TICK)
        return Drained(time.perf_counter() - started, cpu_seconds(worker.pid) - cpu, time.process_time() - own,
                       peak_rss_mb(worker.pid))  # fmt: skip
    finally:
        await consumer.stop()
        worker.terminate()
        worker.wait(60)


async def batch(bootstrap: str, base_url: str, n: int, window: int, workdir: Path) -> tuple[float, float | None]:
    topic = await backlog(bootstrap, n)
    run = await drain(bootstrap, workdir, topic, n, {"base_url": base_url, "poll_interval": "200ms"}, {
        "mode": "batch", "window": {"max_requests": window, "max_bytes": "100MB", "max_wait": "1s"},
    })  # fmt: skip
    print(f"batch: worker CPU {run.worker_cpu:.1f} s, benchmark process (emulator) CPU {run.emulator_cpu:.1f} s, "
          f"over {run.seconds:.1f} s", flush=True)  # fmt: skip
    return run.seconds, run.rss_mb


async def measure(bootstrap: str, base_url: str, n: int, window: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    await copy(bootstrap, 2000)  # warm the broker up
    took = {"copy": await copy(bootstrap, n), "floor": await floor(bootstrap, n, workdir),
            "tuned": await floor(bootstrap, n, workdir, "batchstream")}  # fmt: skip
    took["batch"], rss = await batch(bootstrap, base_url, n, window, workdir)
    for name, seconds in took.items():
        print(f"{name:6s} {n / seconds:9.0f} ev/s ({seconds:.1f} s)", flush=True)
    print(f"batch  {took['floor'] / took['batch']:.3f}x the faust floor, {took['copy'] / took['batch']:.3f}x the copy;"
          f" worker peak RSS {rss or 0:.0f} MB")  # fmt: skip
    return {**{f"{k}_s": v for k, v in took.items()}, "rss_mb": rss or 0.0}


def render(n: int, window: int, r: dict[str, float]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rate = {k: n / r[f"{k}_s"] for k in ("copy", "floor", "tuned", "batch")}
    return "\n".join([
        f"### Backlog drain, {stamp}: {n} events, windows of {window}",
        "",
        "| scenario | ev/s | batch path as a ratio of it |",
        "|---|---:|---:|",
        f"| raw aiokafka copy | {rate['copy']:.0f} | {rate['batch'] / rate['copy']:.3f} |",
        f"| bare faust agent (the floor) | {rate['floor']:.0f} | {rate['batch'] / rate['floor']:.3f} |",
        f"| bare faust agent on batchstream's consumer | {rate['tuned']:.0f} | {rate['batch'] / rate['tuned']:.3f} |",
        f"| batchstream batch path | {rate['batch']:.0f} | 1 |",
        "",
        f"Worker peak RSS: {r['rss_mb']:.0f} MB.",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=None, help="draw the rates into this PNG")
    args = parser.parse_args()
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults(batch_seconds=0.0))
    try:
        result = asyncio.run(measure(broker.start(), emulator.start(), args.events, args.window))
    finally:
        emulator.stop()
        broker.stop()
    table = render(args.events, args.window, result)
    print(table)
    if args.chart:
        rates = {
            "aiokafka copy": "copy",
            "bare faust agent": "floor",
            "bare agent,\nbatchstream's consumer": "tuned",
            "batchstream batch path": "batch",
        }
        bars(args.chart, f"Draining a backlog of {args.events:,} events (events/s, one run)", "events/s",
             {label: args.events / result[f"{key}_s"] for label, key in rates.items()},
             line=0.8 * args.events / result["floor_s"])  # fmt: skip
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table + (f"\n![backlog]({args.chart.name})\n" if args.chart else ""))


if __name__ == "__main__":
    main()
