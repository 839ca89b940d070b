"""Charts of benchmark results for docs/performance.md, as PNG files (needs matplotlib: the
``bench`` extra, ``make charts``).

    .venv/bin/python bench/charts.py --name record bench/results/2026-12-06-epyc-full-*.json

From one or more result files (merged, later files winning, as `markdown.py` does) it
draws ``<name>-throughput.png``: rows/s of archivist beside each alternative, per engine;
and, where the files hold the foreground's latency second by second, ``<name>-latency.png``:
the application's p99 over time, idle, during archivist and during the plain loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

ENGINE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}
METHODS: list[tuple[str, str, str]] = [
    ("archivist", "archivist (wall clock, incl. start-up)", "#1f5fbf"),
    ("archivist_rows", "archivist, rows through the worker", "#8fb3e8"),
    ("in_db", "in-database loop (no check)", "#7f7f7f"),
    ("plain", "plain Python loop", "#b5b5b5"),
    ("pt_bulk", "pt-archiver --bulk-insert --bulk-delete", "#d9822b"),
    ("pt_commit", "pt-archiver --commit-each", "#f0c08a"),
]
"""Figure name, legend label and colour of each bar: archivist in blues, the rest apart."""
PHASES: list[tuple[str, str, str]] = [
    ("idle", "idle", "#7f7f7f"),
    ("archivist", "during archivist (defaults: yielding)", "#1f5fbf"),
    ("eager", "during archivist never yielding (yield_ratio = 0)", "#8fb3e8"),
    ("plain", "during the plain loop", "#c0392b"),
]
"""Foreground phase, legend label and colour of each latency line."""
LATENCY_TICKS = (0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass
class Merged:
    """The figures and latency series of one or more result files, and where they ran."""

    figures: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    series: dict[str, dict[str, list[list[dict[str, float]]]]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def load(paths: list[Path]) -> Merged:
    merged = Merged()
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        merged.machine = merged.machine or document.get("machine", {})
        merged.settings = merged.settings or document.get("settings", {})
        for engine, named in document.get("figures", {}).items():
            merged.figures.setdefault(engine, {}).update(named)
        for engine, phases in document.get("series", {}).items():
            merged.series.setdefault(engine, {}).update(phases)
    return merged


def where(merged: Merged) -> str:
    """'2026-12-06, 2 vCPUs AMD EPYC, 23.5 GiB, commit 5264fb0': the line under a title."""
    machine = merged.machine
    parts = [
        str(machine.get("date", "undated"))[:10],
        f"{machine.get('cpus', '?')} vCPUs {machine.get('cpu', '')}".strip(),
        f"{machine.get('memory_gib', '?')} GiB",
    ]
    if machine.get("commit"):
        parts.append(f"commit {machine['commit']}")
    return ", ".join(parts)


def size(merged: Merged) -> str:
    settings = merged.settings
    runs = settings.get("runs", "?")
    return (
        f"{settings.get('archive_rows', 0):,} of {settings.get('rows', 0):,} rows, "
        f"batches of {settings.get('batch_size', 0):,}, "
        + ("1 run" if runs == 1 else f"median of {runs} runs")
    )


def thousands(value: float) -> str:
    """39,024 as '39k', 4,033 as '4.0k', 398 as '398'."""
    if value < 1000:
        return f"{value:.0f}"
    return f"{value / 1000:.1f}k" if value < 10_000 else f"{value / 1000:.0f}k"


def engines_of(merged: Merged) -> list[str]:
    return [engine for engine in ENGINE_NAMES if engine in merged.figures]


def throughput(merged: Merged, path: Path) -> None:
    """Grouped bars: for each engine, archivist and every alternative measured there."""
    engines = engines_of(merged)
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    width = 0.13
    drawn: set[str] = set()
    for position, engine in enumerate(engines):
        present = [m for m in METHODS if m[0] in merged.figures[engine]]
        left = position - width * len(present) / 2
        for index, (name, label, colour) in enumerate(present):
            figure = merged.figures[engine][name]
            x, median = left + width * (index + 0.5), figure["median"]
            ax.bar(x, median, width * 0.92, color=colour, label=None if name in drawn else label)
            drawn.add(name)
            ax.errorbar(
                x,
                median,
                yerr=[[median - figure["min"]], [figure["max"] - median]],
                fmt="none",
                ecolor="#333333",
                lw=0.8,
                capsize=2,
            )
            # Above the error bar, not the bar, so that the two never overlap.
            ax.annotate(
                thousands(median),
                (x, figure["max"]),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=7.5,
            )
    ax.set_xticks(range(len(engines)), [ENGINE_NAMES[e] for e in engines])
    ax.set_ylabel("rows moved per second")
    ax.yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")
    ax.spines[["top", "right"]].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index(label) for _, label, _ in METHODS if label in labels]
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize=8,
        frameon=False,
        ncols=2,
        loc="upper right",
    )
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    ax.set_title(
        f"Rows/s, no application running ({size(merged)}; bars: min-max)\n{where(merged)}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def median_run(merged: Merged, engine: str) -> int:
    """The run whose application p99 beside archivist is the median: the one to draw."""
    figure = merged.figures[engine].get("fg_archivist_p99")
    if figure is None:
        return 0
    runs = figure["runs"]
    return runs.index(statistics.median_low(runs))


def latency(merged: Merged, path: Path) -> bool:
    """One panel per engine: the foreground's p99 in each second of each phase."""
    engines = [engine for engine in ENGINE_NAMES if merged.series.get(engine)]
    if not engines:
        return False
    fig, axes = plt.subplots(
        1,
        len(engines),
        figsize=(max(9.0, 4.0 * len(engines)), 5.2),
        dpi=110,
        sharey=True,
        squeeze=False,
    )
    for ax, engine in zip(axes[0], engines, strict=True):
        run = median_run(merged, engine)
        last = 1.0
        for phase, label, colour in PHASES:
            runs = merged.series[engine].get(phase, [])
            if len(runs) <= run or not runs[run]:
                continue
            seconds = runs[run]
            last = max(last, seconds[-1]["t"] + 1)
            ax.plot(
                [s["t"] + 0.5 for s in seconds],
                [s["p99_ms"] for s in seconds],
                marker="o" if len(seconds) < 5 else None,
                markersize=5,
                lw=1.2,
                color=colour,
                label=label,
            )
            whole = merged.figures[engine].get(f"fg_{phase}_p99", {}).get("runs", [])
            if len(whole) > run:
                ax.axhline(whole[run], color=colour, lw=0.8, ls=":")
        runs_drawn = len(merged.series[engine].get("archivist", []))
        _latency_axes(ax, engine, run, runs_drawn, last)
    low, high = axes[0][0].get_ylim()
    high = min([t for t in LATENCY_TICKS if t >= high] or [high])
    axes[0][0].set_ylim(low, high)
    ticks = [t for t in LATENCY_TICKS if low <= t <= high]
    axes[0][0].set_yticks(ticks, [f"{t:g}" for t in ticks])
    axes[0][0].yaxis.set_minor_formatter(lambda *_: "")
    axes[0][0].set_ylabel("application p99 in each second, ms (log scale)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(
        "The application's latency over time (one operation every 4 ms at most); dotted: "
        f"p99 of the whole phase\n{where(merged)}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True


def _latency_axes(ax: Axes, engine: str, run: int, runs: int, last: float) -> None:
    ax.set_yscale("log")
    # The idle phase lasts seconds and a yielding archivist minutes: a scale linear up to
    # 10 s and logarithmic beyond keeps both readable.
    ax.set_xscale("symlog", linthresh=10, linscale=1.5)
    ticks = [t for t in (0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if t <= last]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlim(0, last)
    ax.set_xlabel("seconds since the phase began")
    title = ENGINE_NAMES[engine]
    if runs > 1:
        title += f" (run {run + 1} of {runs}: the median)"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", color="#e5e5e5", lw=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path, help="benchmark result files")
    parser.add_argument("--name", required=True, help="file name prefix of the charts")
    parser.add_argument(
        "--out", type=Path, default=Path("docs/images"), help="folder (docs/images)"
    )
    args = parser.parse_args()
    merged = load(args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [args.out / f"{args.name}-throughput.png"]
    throughput(merged, written[0])
    if latency(merged, args.out / f"{args.name}-latency.png"):
        written.append(args.out / f"{args.name}-latency.png")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
