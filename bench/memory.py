"""Worker memory against events in flight, with a provider that never finishes a batch.

A backlog of N events goes through a batch pipeline (windows of ``--window``) whose batches
the emulator keeps running for hours, so every event sealed into a window stays in flight.
The worker's resident memory (``VmRSS``) is sampled against the events in flight (the group's
committed offsets: an event is committed once its window is recorded) until all N are. In
the same run, the baseline keeps every request in memory (``max_held_requests`` above N), as
the worker did before requests were let go after submission.

Usage: ``.venv/bin/python -m bench.memory [--events 1000000] [--baseline-events 200000]
[--write bench/RESULTS.md] [--chart bench/memory.png]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import yaml
from aiokafka.admin import AIOKafkaAdminClient

from bench.backlog import backlog, wait_for_line
from bench.run import start_worker
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults

#: Seconds between memory samples.
SAMPLE = 1.0

Samples = list[tuple[int, float]]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


async def committed(admin: AIOKafkaAdminClient, group: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


async def run(bootstrap: str, base_url: str, n: int, window: int, held: int | None, workdir: Path) -> Samples:
    """(events in flight, RSS MB) samples until ``n`` events are in flight; the last is the peak (VmHWM)."""
    topic = await backlog(bootstrap, n)
    pipeline = {
        "name": "memory", "input_topic": topic, "output_topic": f"{topic}.results", "dead_letter_topic": f"{topic}.dlq",
        "mode": "batch", "model": "gpt-5-mini", "template": {"user": "{text}"},
        "window": {"max_requests": window, "max_bytes": "100MB", "max_wait": "1s"},
    }  # fmt: skip
    if held is not None:
        pipeline["max_held_requests"] = held
    config = workdir / f"{topic}.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": bootstrap, "group_id": topic, "commit_interval": 1},
        "provider": {"base_url": base_url, "api_key": "sk-bench", "poll_interval": "10s"},
        "pipelines": [pipeline],
    }))  # fmt: skip
    log = workdir / f"{topic}.log"
    worker = start_worker(config, log)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    samples: Samples = []
    try:
        await wait_for_line(log, "loaded state of partitions", worker)
        deadline = time.monotonic() + 1800
        while (in_flight := await committed(admin, topic)) < n:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"only {in_flight} of {n} events in flight; see {log}")
            samples.append((in_flight, rss_mb(worker.pid)))
            await asyncio.sleep(SAMPLE)
        samples.append((n, rss_mb(worker.pid)))
        samples.append((n, rss_mb(worker.pid, "VmHWM")))
        return samples
    finally:
        await admin.close()
        worker.terminate()
        worker.wait(60)


def chart(path: Path, lines: dict[str, Samples]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, samples in lines.items():
        ax.plot([s[0] / 1000 for s in samples[:-1]], [s[1] for s in samples[:-1]], label=label)
    ax.axhline(400, color="grey", linestyle=":", label="400 MB")
    ax.set_xlabel("events in flight (thousands)")
    ax.set_ylabel("worker RSS (MB)")
    ax.set_title("Worker memory against events in flight (batches never finish)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def render(n: int, base_n: int, window: int, default: Samples, baseline: Samples) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    idle = default[0][1]
    per_event = (baseline[-2][1] - baseline[0][1]) * 1024 / base_n
    return "\n".join([
        f"### Memory against events in flight, {stamp}: windows of {window}, batches that never finish",
        "",
        "| run | events in flight | worker RSS at the end MB | peak RSS (VmHWM) MB |",
        "|---|---:|---:|---:|",
        f"| requests let go after submission (default `max_held_requests`) | {n} | {default[-2][1]:.0f} "
        f"| {default[-1][1]:.0f} |",
        f"| every request kept in memory (the baseline) | {base_n} | {baseline[-2][1]:.0f} | {baseline[-1][1]:.0f} |",
        "",
        f"Idle worker: {idle:.0f} MB. Kept in memory, each event in flight costs about {per_event:.1f} KB, "
        f"so {n} events would need about {baseline[0][1] + per_event * n / 1024:.0f} MB; let go, the peak is "
        f"{default[-1][1] / (baseline[0][1] + per_event * n / 1024):.2f}x that.",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--baseline-events", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=Path("bench/memory.png"))
    args = parser.parse_args()
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults(batch_seconds=10 * 3600))
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-memory-{uuid.uuid4().hex[:4]}-"))
    try:
        bootstrap, base_url = broker.start(), emulator.start()
        default = asyncio.run(run(bootstrap, base_url, args.events, args.window, None, workdir))
        print(f"let go: {args.events} in flight, RSS {default[-2][1]:.0f} MB, peak {default[-1][1]:.0f} MB")
        baseline = asyncio.run(run(bootstrap, base_url, args.baseline_events, args.window, 10**9, workdir))
        print(f"kept: {args.baseline_events} in flight, RSS {baseline[-2][1]:.0f} MB, peak {baseline[-1][1]:.0f} MB")
    finally:
        emulator.stop()
        broker.stop()
    table = render(args.events, args.baseline_events, args.window, default, baseline)
    print(table)
    chart(args.chart, {"requests let go (default)": default, "every request kept (baseline)": baseline})
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table + f"\n![memory]({args.chart.name})\n")


if __name__ == "__main__":
    main()
