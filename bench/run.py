"""Throughput of a batchstream worker, as a ratio against a plain Kafka copy in the same run.

Machines here are noisy, so absolute numbers mean little; each scenario is compared with a
baseline measured minutes apart on the same broker: an aiokafka consumer that copies every
event to another topic (acks=all), i.e. the cost of Kafka alone.

Scenarios (the emulator answers instantly, so the worker's own overhead is what shows):
- ``batch``: mode batch, windows of 500, the emulator's batches finish at once;
- ``flex``: mode flex, 32 concurrent one-off calls;
- ``realtime``: what batchstream replaces, one SDK call per event from a plain consumer
  loop, 32 in flight (same HTTP server, same concurrency as ``flex``).

Usage: ``.venv/bin/python -m bench.run [--events 5000] [--write bench/RESULTS.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import openai
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


def events(n: int) -> list[bytes]:
    return [orjson.dumps({"id": f"b{i}", "subject": f"s{i}", "text": f"benchmark event {i}"}) for i in range(n)]


async def create_topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send(topic, value, key=f"k{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def count_until(bootstrap: str, topic: str, n: int, timeout: float = 600) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen, deadline = 0, time.monotonic() + timeout
    try:
        while seen < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {seen} of {n} records on {topic}")
            batch = await consumer.getmany(timeout_ms=200)
            seen += sum(len(m) for m in batch.values())
    finally:
        await consumer.stop()


async def timed(bootstrap: str, topic: str, out: str, values: list[bytes]) -> float:
    """Seconds from the first event produced to the last output record seen."""
    started = time.perf_counter()
    await asyncio.gather(produce(bootstrap, topic, values), count_until(bootstrap, out, len(values)))
    return time.perf_counter() - started


async def copy_loop(bootstrap: str, src: str, dst: str, n: int, handle: Callable[[bytes], Awaitable[bytes]]) -> None:
    consumer = AIOKafkaConsumer(src, bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=True)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            messages = [m for ms in batch.values() for m in ms]
            outputs = await asyncio.gather(*(handle(m.value or b"") for m in messages))
            futures = [await producer.send(dst, out) for out in outputs]
            await asyncio.gather(*futures)
            done += len(messages)
    finally:
        await producer.stop()
        await consumer.stop()


async def baseline(bootstrap: str, values: list[bytes], handle: Callable[[bytes], Awaitable[bytes]] | None) -> float:
    src, dst = f"bench-in-{uuid.uuid4().hex[:6]}", f"bench-out-{uuid.uuid4().hex[:6]}"
    await create_topics(bootstrap, src, dst)

    async def identity(value: bytes) -> bytes:
        return value

    task = asyncio.create_task(copy_loop(bootstrap, src, dst, len(values), handle or identity))
    await asyncio.sleep(0)  # the loop subscribes while the first events are produced
    try:
        return await timed(bootstrap, src, dst, values)
    finally:
        await task


def realtime_handler(base_url: str) -> tuple[Callable[[bytes], Awaitable[bytes]], openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    limit = asyncio.Semaphore(32)

    async def call(value: bytes) -> bytes:
        event = orjson.loads(value)
        async with limit:
            reply = await client.chat.completions.create(
                model="gpt-5-mini", messages=[{"role": "user", "content": event["text"]}]
            )
        return orjson.dumps({"id": event["id"], "output": reply.choices[0].message.content})

    return call, client


def start_worker(config: Path, log_path: Path, root: Path = ROOT) -> subprocess.Popen[bytes]:
    """A worker of the code at ``root`` (this tree, or a checkout of another revision)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "worker", "-c", str(config)],
            cwd=root, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)},
        )  # fmt: skip


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (``VmHWM``), in MB; None where /proc does not tell."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kilobytes = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if kilobytes is None else kilobytes / 1024


async def batchstream(
    bootstrap: str, base_url: str, values: list[bytes], mode: str, workdir: Path
) -> tuple[float, float | None]:  # fmt: skip
    topic = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    await create_topics(bootstrap, topic)
    config = workdir / f"{topic}.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": topic, "commit_interval": 1},
        "provider": {"base_url": base_url, "api_key": "sk-bench", "poll_interval": "200ms"},
        "pipelines": [{
            "name": "bench", "input_topic": topic, "output_topic": f"{topic}.results",
            "dead_letter_topic": f"{topic}.dlq", "mode": mode, "model": "gpt-5-mini",
            "window": {"max_requests": 500, "max_bytes": "10MB", "max_wait": "1s"},
            "flex": {"concurrency": 32, "fallback": "dead_letter"},
            "template": {"user": "{text}"},
        }],
    }))  # fmt: skip
    log_path = workdir / f"{topic}.log"
    worker = start_worker(config, log_path)
    try:
        deadline = time.monotonic() + 120
        while "loaded state of partitions" not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {log_path}")
            await asyncio.sleep(0.2)
        took = await timed(bootstrap, topic, f"{topic}.results", values)
        return took, peak_rss_mb(worker.pid)
    finally:
        worker.terminate()
        worker.wait(60)


Row = tuple[str, float, float, float, float | None]


async def measure(bootstrap: str, base_url: str, n: int) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="batchstream-bench-"))
    values = events(n)
    await baseline(bootstrap, values[:500], None)  # warm up the broker and the JIT
    rows = []
    for name in ("batch", "flex", "realtime"):
        base = await baseline(bootstrap, values, None)
        rss = None
        if name == "realtime":
            handler, client = realtime_handler(base_url)
            try:
                took = await baseline(bootstrap, values, handler)
            finally:
                await client.close()
        else:
            took, rss = await batchstream(bootstrap, base_url, values, name, workdir)
        rows.append((name, base, took, base / took, rss))
        print(f"{name:9s} baseline {n / base:8.0f} ev/s   {name} {n / took:8.0f} ev/s   ratio {base / took:.3f}")
    return rows


def render(n: int, rows: list[Row]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {stamp}, {n} events, {PARTITIONS} partitions, {os.cpu_count()} cores, Python {platform.python_version()}",
        "",
        "| scenario | baseline (Kafka copy) ev/s | scenario ev/s | ratio to baseline | worker peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {n / base:.0f} | {n / took:.0f} | {ratio:.3f} | {'-' if rss is None else f'{rss:.0f}'} |"
        for name, base, took, ratio, rss in rows
    ]
    return "\n".join(lines) + "\n"


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--write", type=Path, default=None, help="append the results to this Markdown file")
    args = parser.parse_args()
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults(batch_seconds=0.0))
    try:
        rows = asyncio.run(measure(broker.start(), emulator.start(), args.events))
    finally:
        emulator.stop()
        broker.stop()
    table = render(args.events, rows)
    print(table)
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table)


if __name__ == "__main__":
    cli()
