"""Status calls per poll interval against batches in flight: one listing for all of them, against
reading each batch (the baseline, measured in the same run by turning listing off).

For each count of in-flight batches, that many one-request batches are created at the emulator
(OpenAI's API, through the openai SDK) and never finish, and a pipeline's
:class:`~agents.polling.BatchWatch` waits for every one of them. After a warm-up (each batch's
first read), the emulator counts the status calls it answers (batch reads and listing pages)
over ``--seconds``; the calls per interval are ``calls / (seconds / poll_interval)``.

Usage: ``.venv/bin/python -m bench.polling [--counts 10,50,100,250,500] [--write bench/RESULTS.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from agents.metrics import PipelineMetrics
from agents.polling import BatchWatch
from emulator import EmulatorThread, Faults
from providers import make_provider, parse_settings
from streams.models import Request, Source, decode_event

POLL = 0.25
#: Time for every batch's first read before counting.
WARM_UP = 3.0


async def measure(emulator: EmulatorThread, count: int, *, listing: bool, seconds: float) -> float:
    """Status calls per poll interval while ``count`` batches run."""
    settings = parse_settings({
        "provider": {"base_url": emulator.base_url, "api_key": "k", "poll_interval": POLL, "max_retries": 0},
        "pipelines": [{"name": f"poll{count}{listing}", "input_topic": "i", "output_topic": "o",
                       "dead_letter_topic": "d", "model": "gpt-5-mini"}],
    })  # fmt: skip
    cfg = settings.pipelines[0]
    client = make_provider(*settings.provider_of(cfg))
    client.can_find = listing  # off: the listing is refused, each batch is read on its own
    emulator.emulator.clear(Faults(batch_seconds=10 * 3600))  # in flight throughout
    workdir = Path(tempfile.mkdtemp(prefix="bench-polling-"))
    try:
        ids = []
        for n in range(count):
            request = decode_event(cfg, Source("i", n, 0), None, b'{"text": "x"}')
            assert isinstance(request, Request)
            staged = await client.stage([request], workdir / f"{n}.jsonl")
            job = await client.create([request], staged=staged, endpoint=cfg.endpoint, tag=f"t{n}", metadata={})
            ids.append(job.id)
        watch = BatchWatch(client, client.settings, cfg.retry, PipelineMetrics(cfg.name))
        tasks = [asyncio.create_task(watch.wait(f"w{n}", batch_id, None)) for n, batch_id in enumerate(ids)]
        await asyncio.sleep(WARM_UP)
        before, started = dict(emulator.emulator.stats), time.monotonic()
        await asyncio.sleep(seconds)
        stats, elapsed = dict(emulator.emulator.stats), time.monotonic() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await client.close()
    calls = sum(stats.get(k, 0) - before.get(k, 0) for k in ("status_reads", "status_lists"))
    return calls / (elapsed / POLL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--counts", default="10,50,100,250,500")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long calls are counted per measure")
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=Path("bench/polling.png"))
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    emulator = EmulatorThread()
    emulator.start()
    rows = []
    try:
        for count in counts:
            baseline = asyncio.run(measure(emulator, count, listing=False, seconds=args.seconds))
            listed = asyncio.run(measure(emulator, count, listing=True, seconds=args.seconds))
            rows.append((count, baseline, listed))
            print(f"{count} batches: {baseline:.1f} calls/interval reading each, {listed:.1f} listing")
    finally:
        emulator.stop()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### Polling, {stamp}: status calls per {POLL} s interval, over {args.seconds:g} s",
        "",
        "| batches in flight | reading each batch (baseline) | one listing | ratio to baseline |",
        "|---:|---:|---:|---:|",
        *(f"| {c} | {b:.1f} | {listed:.1f} | {listed / b:.3f} |" for c, b, listed in rows),
        "",
        f"![status calls per interval]({args.chart.name})",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write is not None:
        with args.write.open("a") as fh:
            fh.write("\n" + text)
    _chart(rows, args.chart)
    return 0


def _chart(rows: list[tuple[int, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    counts = [r[0] for r in rows]
    ax.plot(counts, [r[1] for r in rows], marker="o", label="reading each batch (baseline)")
    ax.plot(counts, [r[2] for r in rows], marker="o", label="one listing per interval")
    ax.set_xlabel("batches in flight")
    ax.set_ylabel(f"status calls per {POLL} s interval")
    ax.set_title("Polling cost against batches in flight")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
