"""exactly_once against at_least_once: the same backlogs drained under each guarantee, in one run.

- ``batch``: ``mode: batch``, windows of ``--window``, the emulator finishing batches at once;
- ``flex``: ``mode: flex``, ``--concurrency`` calls in flight, the emulator answering at once.

Each scenario drains a fresh backlog of N events under ``at_least_once``, then another under
``exactly_once``, ``--repeat`` times in turn (the median rate of each counts: on a small machine
one drain's rate varies by several percent); the clock runs from the worker's partitions being
loaded to the N-th result read by a ``read_committed`` consumer (both guarantees are counted the
same way). Under
``exactly_once`` every state record and every flex event's served mark is a Kafka transaction
shared with whatever else is being written for its input partition at the moment.

Usage: ``.venv/bin/python -m bench.guarantee [--events 50000] [--flex-events 5000] [--repeat 3]
[--write bench/RESULTS.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.backlog import backlog, drain
from bench.chart import bars
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults

GUARANTEES = ("at_least_once", "exactly_once")


async def measure(bootstrap: str, base_url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-guarantee-"))
    scenarios = {
        "batch": (args.events, {"mode": "batch", "window": {"max_requests": args.window, "max_bytes": "100MB",
                                                             "max_wait": "1s"}}),
        "flex": (args.flex_events, {"mode": "flex", "flex": {"concurrency": args.concurrency,
                                                              "fallback": "dead_letter"}}),
    }  # fmt: skip
    rates: dict[str, dict[str, float]] = {}
    for name, (n, pipeline) in scenarios.items():
        runs: dict[str, list[float]] = {g: [] for g in GUARANTEES}
        for _ in range(args.repeat):
            for guarantee in GUARANTEES:
                topic = await backlog(bootstrap, n)
                run = await drain(bootstrap, workdir, topic, n, {"base_url": base_url, "poll_interval": "200ms"},
                                  pipeline, guarantee, read=True)  # fmt: skip
                runs[guarantee].append(n / run.seconds)
                print(f"{name} {guarantee}: {n / run.seconds:.0f} ev/s ({run.seconds:.1f} s, worker CPU "
                      f"{run.worker_cpu:.1f} s)", flush=True)  # fmt: skip
        pairs = [a / b for a, b in zip(runs["exactly_once"], runs["at_least_once"], strict=True)]
        rates[name] = {**{g: statistics.median(r) for g, r in runs.items()}, "low": min(pairs), "high": max(pairs)}
    return rates


def render(args: argparse.Namespace, rates: dict[str, dict[str, float]]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sizes = {"batch": f"{args.events} events, windows of {args.window}",
             "flex": f"{args.flex_events} events, {args.concurrency} calls in flight"}  # fmt: skip
    rows = [
        f"| {name} ({sizes[name]}) | {r['at_least_once']:.0f} | {r['exactly_once']:.0f} "
        f"| {r['exactly_once'] / r['at_least_once']:.3f} | {r['low']:.3f} to {r['high']:.3f} |"
        for name, r in rates.items()
    ]
    return "\n".join([
        f"### exactly_once against at_least_once, {stamp}: median of {args.repeat} drains each",
        "",
        "| scenario | at_least_once ev/s | exactly_once ev/s | exactly_once as a ratio | each pair's ratio |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--flex-events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="drains per guarantee and scenario, in turn")
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=None, help="draw the ratios into this PNG")
    args = parser.parse_args()
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults(batch_seconds=0.0))
    try:
        rates = asyncio.run(measure(broker.start(), emulator.start(), args))
    finally:
        emulator.stop()
        broker.stop()
    table = render(args, rates)
    print(table)
    if args.chart:
        bars(args.chart, "exactly_once throughput as a ratio of at_least_once (one run)", "ratio",
             {name: r["exactly_once"] / r["at_least_once"] for name, r in rates.items()}, line=0.9)  # fmt: skip
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table + (f"\n![guarantee]({args.chart.name})\n" if args.chart else ""))


if __name__ == "__main__":
    main()
