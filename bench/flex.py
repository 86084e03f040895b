"""The flex path against a bare openai SDK loop with the same concurrency to the same server.

- ``sdk``: ``bench/sdkloop.py`` in its own process, N flex calls, C in flight; nothing else;
- ``flex``: a batchstream worker, ``mode: flex``, ``flex.concurrency`` C, over a backlog of N
  events written before it starts; timed from its partitions' state being loaded to the N-th
  result on the output topic (from the topic's end offsets).

The emulator answers at once, so what shows is the cost per call on each side: the SDK's own
(request building, connection pool, response parsing) and, for batchstream, Kafka intake, the
result record and its confirmed write before the event's offset may be committed.

Usage: ``.venv/bin/python -m bench.flex [--events 5000] [--concurrency 32] [--write bench/RESULTS.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer

from bench.backlog import TICK, backlog, end_total, wait_for_line
from bench.run import ROOT, start_worker
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults


def sdk_loop(base_url: str, n: int, concurrency: int) -> float:
    args = [sys.executable, "-m", "bench.sdkloop", base_url, str(n), str(concurrency)]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


async def flex(bootstrap: str, base_url: str, n: int, concurrency: int, workdir: Path) -> float:
    topic = await backlog(bootstrap, n)
    config = workdir / f"{topic}.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": topic, "commit_interval": 1},
        "provider": {"base_url": base_url, "api_key": "sk-bench"},
        "pipelines": [{
            "name": "bench", "input_topic": topic, "output_topic": f"{topic}.results",
            "dead_letter_topic": f"{topic}.dlq", "mode": "flex", "model": "gpt-5-mini",
            "flex": {"concurrency": concurrency, "fallback": "dead_letter"}, "template": {"user": "{text}"},
        }],
    }))  # fmt: skip
    log = workdir / f"{topic}.log"
    worker = start_worker(config, log)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await wait_for_line(log, "loaded state of partitions", worker)
        started, deadline = time.perf_counter(), time.monotonic() + 900
        while await end_total(consumer, f"{topic}.results") < n:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not finish; see {log}")
            await asyncio.sleep(TICK)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        worker.terminate()
        worker.wait(60)


def render(n: int, concurrency: int, sdk: float, ours: float) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"### Flex against a bare SDK loop, {stamp}: {n} events, {concurrency} calls in flight",
        "",
        "| scenario | calls/s | flex path as a ratio of it |",
        "|---|---:|---:|",
        f"| bare openai SDK loop | {n / sdk:.0f} | {sdk / ours:.3f} |",
        f"| batchstream flex path (Kafka in, results out) | {n / ours:.0f} | 1 |",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    args = parser.parse_args()
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults())
    workdir = Path(tempfile.mkdtemp(prefix="bench-flex-"))
    try:
        bootstrap, base_url = broker.start(), emulator.start()
        sdk_loop(base_url, 500, args.concurrency)  # warm the emulator up
        sdk = sdk_loop(base_url, args.events, args.concurrency)
        ours = asyncio.run(flex(bootstrap, base_url, args.events, args.concurrency, workdir))
    finally:
        emulator.stop()
        broker.stop()
    print(f"sdk {args.events / sdk:.0f} calls/s, flex {args.events / ours:.0f} events/s: {sdk / ours:.3f}x")
    table = render(args.events, args.concurrency, sdk, ours)
    print(table)
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table)


if __name__ == "__main__":
    main()
