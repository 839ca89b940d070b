"""Figures from runs: median with min and max, ratios computed run by run, the machine, the
table printed for humans and the JSON kept for comparing later runs."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import archivist


@dataclass
class Figure:
    """One measured quantity: its value in each run."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_json(self) -> dict[str, object]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "runs": self.values,
        }


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def per_second(starts: Sequence[float], latencies: Sequence[float]) -> list[dict[str, float]]:
    """The operations grouped by the second they began in: for each second, how many began
    and their p50 and p99 latency in ms (seconds with no operation are left out)."""
    buckets: dict[int, list[float]] = {}
    for began, latency in zip(starts, latencies, strict=True):
        buckets.setdefault(math.floor(began), []).append(latency)
    return [
        {
            "t": second,
            "ops": len(values),
            "p50_ms": round(percentile(values, 0.50) * 1000, 3),
            "p99_ms": round(percentile(values, 0.99) * 1000, 3),
        }
        for second, values in sorted(buckets.items())
    ]


class Results:
    """Every figure of a benchmark run, keyed by (engine, figure name), and the foreground's
    latency over time, keyed by (engine, phase), one list of seconds per run."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Figure]] = {}
        self.series: dict[str, dict[str, list[list[dict[str, float]]]]] = {}
        self.notes: list[str] = []

    def add_series(self, engine: str, phase: str, seconds: list[dict[str, float]]) -> None:
        self.series.setdefault(engine, {}).setdefault(phase, []).append(seconds)

    def add(self, engine: str, name: str, unit: str, value: float) -> None:
        figure = self.figures.setdefault(engine, {}).setdefault(name, Figure(name, unit))
        figure.values.append(value)

    def get(self, engine: str, name: str) -> Figure | None:
        return self.figures.get(engine, {}).get(name)

    def add_ratios(self, engine: str, name: str, numerator: str, denominator: str) -> None:
        """``numerator / denominator`` for each run that has both (ratios run by run)."""
        top, bottom = self.get(engine, numerator), self.get(engine, denominator)
        if top is None or bottom is None:
            return
        for high, low in zip(top.values, bottom.values, strict=False):
            if low:
                self.add(engine, name, "x", high / low)

    def as_json(self) -> dict[str, object]:
        return {
            engine: {name: figure.as_json() for name, figure in figures.items()}
            for engine, figures in self.figures.items()
        }


def machine(versions: dict[str, str]) -> dict[str, object]:
    """What the figures ran on."""
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # The machine is shared (other engineers' tests run beside the benchmark): how
        # busy it was says how far the absolute figures can be trusted.
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "archivist": archivist.__version__,
        "archivist_source": str(Path(archivist.__file__).parent),
        "commit": commit,
        **versions,
    }


def cell(figure: Figure | None) -> str:
    if figure is None or not figure.values:
        return "-"
    return (
        f"{_number(figure.median, figure.unit)} "
        f"[{_number(min(figure.values), figure.unit)}-{_number(max(figure.values), figure.unit)}]"
    )


def _number(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}"
    if unit in ("ms", "µs"):
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def print_report(
    console: Console, results: Results, order: Sequence[tuple[str, str]], info: dict[str, object]
) -> None:
    """One table: a row per figure (``order``: name and label), a column per engine."""
    engines = list(results.figures)
    if engines:
        _print_figures(console, results, order, engines)
    console.print(
        "machine: "
        + ", ".join(f"{key} {value}" for key, value in info.items() if value not in ("", None))
    )
    for note in results.notes:
        console.print(f"note: {note}")


def _print_figures(
    console: Console, results: Results, order: Sequence[tuple[str, str]], engines: list[str]
) -> None:
    table = Table(
        title=escape("archivist benchmark: median [min-max] over runs"),
        header_style="bold",
        show_lines=False,
    )
    table.add_column("figure")
    table.add_column("unit")
    for engine in engines:
        table.add_column(engine, justify="right")
    for name, label in order:
        cells = [cell(results.get(engine, name)) for engine in engines]
        if all(text == "-" for text in cells):
            continue
        unit = next(f.unit for e in engines if (f := results.get(e, name)) is not None)
        table.add_row(escape(label), unit, *(escape(text) for text in cells))
    console.print(table)


def print_paths(
    console: Console, results: Results, paths: Sequence[Any], baselines: dict[str, Any]
) -> None:
    """Issue 27's table: a row per path, archivist against its baseline, the ratio run by
    run and the target it has (``paths``: `paths.PathSpec`s)."""
    if not results.figures:
        return
    table = Table(
        title=escape("paths: rows/s, median [min-max] over runs; ratios run by run"),
        header_style="bold",
    )
    for name in ("path", "archivist", "baseline", "baseline rows/s", "ratio", "target"):
        table.add_column(name, justify="left" if name in ("path", "baseline") else "right")
    table.add_column("peak RSS daemon / worker, MiB", justify="right")
    for spec in paths:
        if spec.key not in results.figures:
            continue
        base_key = spec.baseline_of or spec.key
        ratio = results.get(spec.key, "ratio")
        if spec.target is None or ratio is None:
            verdict = "-"
        else:
            verdict = f">= {spec.target:.1f}: " + ("holds" if ratio.median >= spec.target else "NO")
        daemon, worker = results.get(spec.key, "rss_daemon"), results.get(spec.key, "rss_worker")
        memory = (
            f"{max(daemon.values):.0f} / {max(worker.values):.0f}" if daemon and worker else "-"
        )
        table.add_row(
            escape(spec.label),
            escape(cell(results.get(spec.key, "archivist"))),
            escape(baselines[spec.baseline].label),
            escape(cell(results.get(base_key, "baseline"))),
            escape(cell(ratio)),
            verdict,
            memory,
        )
    console.print(table)


def write_json(
    path: Path,
    results: Results,
    info: dict[str, object],
    settings: dict[str, object],
    *,
    paths: Results | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": info,
        "settings": settings,
        "paths": paths.as_json() if paths is not None else {},
        "figures": results.as_json(),
        "series": results.series,
        "notes": results.notes,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
