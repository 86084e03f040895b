"""Chart the ratios of ``bench/RESULTS.md``: one group of bars per run, one bar per scenario.

Usage: ``.venv/bin/python -m bench.chart [--results bench/RESULTS.md] [--out bench/ratios.png]``
(needs the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

SECTION = re.compile(r"^## (.+)$")
ROW = re.compile(r"^\| (\w+) \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|(?: [^|]* \|)?$")
LABEL = re.compile(r"^<!-- label: (.+) -->$")


def read_runs(path: Path) -> list[tuple[str, dict[str, float]]]:
    """(label, {scenario: ratio}) for each section; a ``<!-- label: ... -->`` line names a run."""
    runs: list[tuple[str, dict[str, float]]] = []
    for line in path.read_text().splitlines():
        if match := SECTION.match(line):
            runs.append((match.group(1).split(",")[0], {}))
        elif runs and (match := LABEL.match(line)):
            runs[-1] = (match.group(1), runs[-1][1])
        elif runs and (match := ROW.match(line)):
            runs[-1][1][match.group(1)] = float(match.group(2))
    return [run for run in runs if run[1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--results", type=Path, default=Path("bench/RESULTS.md"))
    parser.add_argument("--out", type=Path, default=Path("bench/ratios.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = read_runs(args.results)
    scenarios = sorted({s for _, ratios in runs for s in ratios})
    width = 0.8 / len(scenarios)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(runs)), 4.0))
    for i, scenario in enumerate(scenarios):
        xs = [n + i * width for n in range(len(runs))]
        ax.bar(xs, [ratios.get(scenario, 0.0) for _, ratios in runs], width, label=scenario)
    ax.set_xticks([n + width * (len(scenarios) - 1) / 2 for n in range(len(runs))])
    ax.set_xticklabels([label for label, _ in runs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("throughput / plain Kafka copy (same run)")
    ax.set_title("batchstream worker throughput as a ratio to a Kafka copy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(runs)} runs)")


if __name__ == "__main__":
    main()


def bars(path: Path, title: str, ylabel: str, values: dict[str, float], *, line: float | None = None) -> None:
    """One bar per named value (a scenario's own chart); ``line``: a target drawn across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    names = list(values)
    ax.bar(names, [values[n] for n in names], color=["#9aa5b1"] * (len(names) - 1) + ["#2b6cb0"])
    for x, name in enumerate(names):
        value = values[name]
        label = f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.3f}"
        ax.annotate(label, (x, values[name]), ha="center", va="bottom", fontsize=8)
    if line is not None:
        ax.axhline(line, color="grey", linestyle=":")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
