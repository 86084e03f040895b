"""The flex path against a bare openai SDK loop with the same concurrency to the same server.

- ``sdk``: ``bench/sdkloop.py`` in its own process, N flex calls, C in flight; nothing else; with
  the SDK's aiohttp transport, as batchstream's providers use it (the ratio compares like with
  like), and again with its default httpx transport;
- ``flex``: a batchstream worker, ``mode: flex``, ``flex.concurrency`` C, over a backlog of N
  events written before it starts; timed from its partitions' state being loaded to the N-th
  result on the output topic (from the topic's end offsets).

The emulator answers at once. On a small machine both sides can be bound by how fast the
emulator answers rather than by their own cost, so each side's CPU time per event is measured
too (the SDK loop's process, the worker's process): that is where batchstream's own overhead
(Kafka intake, the result record, its confirmed write before the offset may be committed)
shows.

Usage: ``.venv/bin/python -m bench.flex [--events 5000] [--concurrency 32] [--write bench/RESULTS.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.backlog import backlog, drain
from bench.chart import bars
from bench.run import ROOT
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults

Timing = tuple[float, float]  # (wall seconds, CPU seconds of the process)


def sdk_loop(base_url: str, n: int, concurrency: int, transport: str = "aiohttp") -> Timing:
    args = [sys.executable, "-m", "bench.sdkloop", base_url, str(n), str(concurrency), transport]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


async def flex(bootstrap: str, base_url: str, n: int, concurrency: int, workdir: Path) -> Timing:
    topic = await backlog(bootstrap, n)
    run = await drain(bootstrap, workdir, topic, n, {"base_url": base_url}, {
        "mode": "flex", "flex": {"concurrency": concurrency, "fallback": "dead_letter"},
    })  # fmt: skip
    return run.seconds, run.worker_cpu


def render(n: int, concurrency: int, sdk: Timing, ours: Timing, default: Timing) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"### Flex against a bare SDK loop, {stamp}: {n} events, {concurrency} calls in flight",
        "",
        "| scenario | calls/s | flex path's rate as a ratio of it | CPU ms per call |",
        "|---|---:|---:|---:|",
        f"| bare openai SDK loop, the SDK's aiohttp transport (batchstream's) | {n / sdk[0]:.0f} "
        f"| {sdk[0] / ours[0]:.3f} | {sdk[1] * 1000 / n:.2f} |",
        f"| bare openai SDK loop, the SDK's default (httpx) transport | {n / default[0]:.0f} "
        f"| {default[0] / ours[0]:.3f} | {default[1] * 1000 / n:.2f} |",
        f"| batchstream flex path (Kafka in, results out) | {n / ours[0]:.0f} | 1 | {ours[1] * 1000 / n:.2f} |",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=None, help="draw the rates into this PNG")
    args = parser.parse_args()
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults())
    workdir = Path(tempfile.mkdtemp(prefix="bench-flex-"))
    try:
        bootstrap, base_url = broker.start(), emulator.start()
        sdk_loop(base_url, 500, args.concurrency)  # warm the emulator up
        sdk = sdk_loop(base_url, args.events, args.concurrency)
        default = sdk_loop(base_url, args.events, args.concurrency, "httpx")
        ours = asyncio.run(flex(bootstrap, base_url, args.events, args.concurrency, workdir))
    finally:
        emulator.stop()
        broker.stop()
    print(f"sdk {args.events / sdk[0]:.0f} calls/s, flex {args.events / ours[0]:.0f} events/s: "
          f"{sdk[0] / ours[0]:.3f}x; CPU per call {sdk[1] * 1000 / args.events:.2f} ms against "
          f"{ours[1] * 1000 / args.events:.2f} ms")  # fmt: skip
    table = render(args.events, args.concurrency, sdk, ours, default)
    print(table)
    if args.chart:
        bars(args.chart, f"{args.events:,} flex calls, {args.concurrency} in flight (calls/s, one run)", "calls/s",
             {"bare SDK loop\n(aiohttp)": args.events / sdk[0], "bare SDK loop\n(httpx)": args.events / default[0],
              "batchstream flex path": args.events / ours[0]},
             line=0.8 * args.events / sdk[0])  # fmt: skip
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table + (f"\n![flex]({args.chart.name})\n" if args.chart else ""))


if __name__ == "__main__":
    main()
