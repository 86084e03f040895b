"""The batch path of this tree against another revision's, in one run: a change's cost on the hot path.

A checkout of ``--baseline`` (a git revision) is made beside the tree; both drain the same
backlog (``bench/backlog.py``: a batchstream worker, ``mode: batch``, the emulator finishing
batches at once), in turns, baseline first, ``--rounds`` times under each guarantee. Two ratios,
1.0 for no change and below 0.95 for a hot path more than 5% slower: this tree's median events/s
over the baseline's, and the baseline's median worker CPU an event over this tree's (CPU time
varies less from run to run than wall time on a shared machine).

Usage: ``.venv/bin/python -m bench.hotpath --baseline REV [--events 50000] [--rounds 3]
[--guarantee exactly_once] [--write bench/RESULTS.md] [--chart bench/hotpath.png]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.backlog import backlog, drain
from bench.chart import bars
from bench.run import ROOT
from devkafka import KafkaBroker
from emulator import EmulatorThread, Faults

GUARANTEES = ("at_least_once", "exactly_once")


def checkout(revision: str) -> Path:
    """A detached worktree of ``revision`` in a temporary folder (removed by :func:`remove`)."""
    where = Path(tempfile.mkdtemp(prefix="bench-baseline-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(where), revision], cwd=ROOT, check=True)
    return where


def remove(tree: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


async def measure(bootstrap: str, base_url: str, n: int, window: int, rounds: int, baseline: Path,
                  guarantees: tuple[str, ...] = GUARANTEES) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """Events/s of each tree under each guarantee, one figure per round."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-hotpath-"))
    rates: dict[str, dict[str, list[float]]] = {g: {"baseline": [], "this tree": []} for g in guarantees}
    cpu: dict[str, dict[str, list[float]]] = {g: {"baseline": [], "this tree": []} for g in guarantees}
    provider = {"base_url": base_url, "poll_interval": "200ms"}
    pipeline = {"mode": "batch", "window": {"max_requests": window, "max_bytes": "100MB", "max_wait": "1s"}}
    for round_ in range(rounds):
        for guarantee in guarantees:
            for name, root in (("baseline", baseline), ("this tree", ROOT)):
                topic = await backlog(bootstrap, n)
                run = await drain(bootstrap, workdir, topic, n, provider, pipeline, guarantee,
                                  read=guarantee == "exactly_once", root=root)  # fmt: skip
                rates[guarantee][name].append(n / run.seconds)
                cpu[guarantee][name].append(run.worker_cpu / n * 1e6)
                print(f"round {round_ + 1} {guarantee:13s} {name:9s} {n / run.seconds:8.0f} ev/s, worker CPU "
                      f"{run.worker_cpu / n * 1e6:6.1f} us/event", flush=True)  # fmt: skip
    return {**rates, **{f"{g} cpu": c for g, c in cpu.items()}}


def render(revision: str, n: int, window: int, rates: dict[str, dict[str, list[float]]]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rounds = len(next(iter(rates.values()))["baseline"])
    lines = [
        f"### Hot path against {revision}, {stamp}: {n} events, windows of {window}, {rounds} rounds in turns",
        "",
        "| guarantee | measure | baseline (median) | this tree (median) | this tree as a ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for key, runs in rates.items():
        base, mine = statistics.median(runs["baseline"]), statistics.median(runs["this tree"])
        if key.endswith(" cpu"):  # CPU an event: less is faster, so the ratio is the baseline's over this tree's
            lines.append(f"| {key[:-4]} | worker CPU us/event | {base:.1f} | {mine:.1f} | {base / mine:.3f} |")
        else:
            lines.append(f"| {key} | events/s | {base:.0f} | {mine:.0f} | {mine / base:.3f} |")
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--guarantee", choices=GUARANTEES, action="append", help="only these (default: both)")
    parser.add_argument("--write", type=Path, default=None, help="append the results to this markdown file")
    parser.add_argument("--chart", type=Path, default=None, help="draw the ratios into this PNG")
    args = parser.parse_args()
    tree = checkout(args.baseline)
    broker = KafkaBroker()
    emulator = EmulatorThread(Faults(batch_seconds=0.0))
    try:
        guarantees = tuple(args.guarantee or GUARANTEES)
        rates = asyncio.run(measure(broker.start(), emulator.start(), args.events, args.window, args.rounds, tree,
                                    guarantees))  # fmt: skip
    finally:
        emulator.stop()
        broker.stop()
        remove(tree)
    table = render(args.baseline, args.events, args.window, rates)
    print(table)
    if args.chart:
        ratios = {
            g: statistics.median(r["this tree"]) / statistics.median(r["baseline"])
            for g, r in rates.items()
            if not g.endswith(" cpu")
        }
        bars(args.chart, f"Batch path against {args.baseline} (median events/s ratio, same run)", "ratio",
             ratios, line=0.95)  # fmt: skip
    if args.write:
        with args.write.open("a") as fh:
            fh.write("\n" + table + (f"\n![hot path]({args.chart.name})\n" if args.chart else ""))


if __name__ == "__main__":
    main()
