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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.backlog import backlog, drain
from bench.chart import bars
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults


async def drain_backlog(
    bootstrap: str, emulator: EmulatorThread, n: int, window: int, limit: int, *, gated: bool, workdir: Path
) -> tuple[float, int, int]:
    """(seconds to the N-th result, token-limit refusals, batches created)."""
    topic = await backlog(bootstrap, n)
    provider: dict[str, Any] = {"base_url": emulator.base_url, "poll_interval": "200ms"}
    if gated:
        provider["max_enqueued_tokens"] = limit
    before = dict(emulator.emulator.stats)
    run = await drain(bootstrap, workdir, topic, n, provider, {
        "mode": "batch", "window": {"max_requests": window, "max_bytes": "10MB", "max_wait": "1s"},
        "retry": {"backoff_initial": "200ms", "backoff_max": "5s"},
    })  # fmt: skip
    stats = emulator.emulator.stats
    refused = stats.get("token_limit_exceeded", 0) - before.get("token_limit_exceeded", 0)
    created = stats.get("batches_created", 0) - before.get("batches_created", 0)
    return run.seconds, refused, created


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
            run = drain_backlog(bootstrap, emulator, args.events, args.window, args.limit, gated=gated, workdir=workdir)
            runs[name] = asyncio.run(run)
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
