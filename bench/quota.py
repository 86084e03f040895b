"""A backlog larger than the provider's enqueued-token limit: gated by ``max_enqueued_tokens``,
against the same backlog without the gate, in one run.

The emulator enforces a per-model limit of prompt tokens in running batches (OpenAI's queue
limit): a batch that would pass it fails validation with ``token_limit_exceeded``. Batches take
``--batch-seconds``. Each run drains N events (windows of ``--window``, about nine times the
limit in all) and counts the refusals the emulator answered and the seconds to the N-th result.

Usage: ``.venv/bin/python -m bench.quota [--events 20000] [--limit 30000] [--write bench/RESULTS.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer

from bench.backlog import TICK, backlog, end_total, wait_for_line
from bench.chart import bars
from bench.run import start_worker
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults


async def drain(
    bootstrap: str, emulator: EmulatorThread, n: int, window: int, limit: int, *, gated: bool, workdir: Path
) -> tuple[float, int, int]:
    """(seconds to the N-th result, token-limit refusals, batches created)."""
    topic = await backlog(bootstrap, n)
    provider = {"base_url": emulator.base_url, "api_key": "sk-bench", "poll_interval": "200ms"}
    if gated:
        provider["max_enqueued_tokens"] = limit
    config = workdir / f"{topic}.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": topic, "commit_interval": 1},
        "provider": provider,
        "pipelines": [{
            "name": "quota", "input_topic": topic, "output_topic": f"{topic}.results",
            "dead_letter_topic": f"{topic}.dlq", "mode": "batch", "model": "gpt-5-mini",
            "window": {"max_requests": window, "max_bytes": "10MB", "max_wait": "1s"},
            "retry": {"backoff_initial": "200ms", "backoff_max": "5s"}, "template": {"user": "{text}"},
        }],
    }))  # fmt: skip
    log = workdir / f"{topic}.log"
    before = dict(emulator.emulator.stats)
    worker = start_worker(config, log)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await wait_for_line(log, "loaded state of partitions", worker)
        started, deadline = time.perf_counter(), time.monotonic() + 1800
        while await end_total(consumer, f"{topic}.results") < n:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not finish; see {log}")
            await asyncio.sleep(TICK)
        took = time.perf_counter() - started
    finally:
        await consumer.stop()
        worker.terminate()
        worker.wait(60)
    stats = emulator.emulator.stats
    refused = stats.get("token_limit_exceeded", 0) - before.get("token_limit_exceeded", 0)
    created = stats.get("batches_created", 0) - before.get("batches_created", 0)
    return took, refused, created


def render(n: int, window: int, limit: int, runs: dict[str, tuple[float, int, int]]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### A backlog beyond the token quota, {stamp}: {n} events, windows of {window}, "
        f"an enqueued-token limit of {limit}",
        "",
        "| run | seconds to drain | `token_limit_exceeded` refusals | batches created |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {took:.1f} | {refused} | {created} |" for name, (took, refused, created) in runs.items()]
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--limit", type=int, default=30_000, help="the emulator's enqueued-token limit")
    parser.add_argument("--batch-seconds", type=float, default=1.0)
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=None, help="draw the refusals into this PNG")
    args = parser.parse_args()
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults(batch_seconds=args.batch_seconds, enqueued_token_limit=args.limit))
    workdir = Path(tempfile.mkdtemp(prefix="bench-quota-"))
    runs = {}
    try:
        bootstrap = broker.start()
        emulator.start()
        for name, gated in (("gated by max_enqueued_tokens", True), ("without the gate", False)):
            runs[name] = asyncio.run(drain(bootstrap, emulator, args.events, args.window, args.limit, gated=gated,
                                           workdir=workdir))  # fmt: skip
            print(f"{name}: {runs[name][0]:.1f} s, {runs[name][1]} refusals, {runs[name][2]} batches", flush=True)
    finally:
        emulator.stop()
        broker.stop()
    table = render(args.events, args.window, args.limit, runs)
    print(table)
    if args.chart:
        bars(args.chart, f"token_limit_exceeded refusals draining {args.events:,} events, ~9x the quota",
             "refusals", {name: float(refused) for name, (_, refused, _) in reversed(runs.items())})  # fmt: skip
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table + (f"\n![quota]({args.chart.name})\n" if args.chart else ""))


if __name__ == "__main__":
    main()
