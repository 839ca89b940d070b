"""One Markdown table from the JSON of one or more benchmark runs (a column per engine,
later files winning), for docs/performance.md and for comparing runs side by side.

    .venv/bin/python bench/markdown.py bench/results/sqlite.json bench/results/pg.json
    .venv/bin/python bench/markdown.py --paths bench/results/run.json   # issue 27's table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from archive_bench import ORDER
from paths import BASELINES, PATHS
from report import Figure, cell


def load(paths: list[Path]) -> tuple[dict[str, dict[str, Figure]], dict[str, object]]:
    """The figures of every file by engine and name, and the settings of the first."""
    figures: dict[str, dict[str, Figure]] = {}
    settings: dict[str, object] = {}
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        settings = settings or document["settings"]
        for engine, named in document["figures"].items():
            for name, figure in named.items():
                figures.setdefault(engine, {})[name] = Figure(
                    name, figure["unit"], [float(v) for v in figure["runs"]]
                )
    return figures, settings


def table(figures: dict[str, dict[str, Figure]], settings: dict[str, object]) -> str:
    engines = sorted(figures, key=lambda engine: engine == "socket")  # the socket last
    small, rows = settings.get("memory_rows", 0), settings.get("rows", 0)
    lines = [
        "| figure | unit | " + " | ".join(engines) + " |",
        "| --- | --- | " + " | ".join("---" for _ in engines) + " |",
    ]
    for name, label in ORDER:
        found = [figures[engine].get(name) for engine in engines]
        if all(figure is None for figure in found):
            continue
        unit = next(figure.unit for figure in found if figure is not None)
        cells = [cell(figure) for figure in found]
        text = label.format(small=small, rows=rows)
        lines.append(f"| {text} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paths_table(path: Path) -> str:
    """Issue 27's table from one run's ``paths``: archivist and its baseline in rows/s,
    the ratio run by run, the target, and the peak memory (median [min-max])."""
    document = json.loads(path.read_text(encoding="utf-8"))
    found = {
        key: {
            name: Figure(name, f["unit"], [float(v) for v in f["runs"]])
            for name, f in named.items()
        }
        for key, named in document.get("paths", {}).items()
    }
    lines = [
        "| path | archivist, rows/s | baseline | baseline, rows/s | ratio | target | "
        "peak RSS daemon / worker |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec in PATHS:
        figures = found.get(spec.key)
        if figures is None:
            continue
        base = found.get(spec.baseline_of or spec.key, {}).get("baseline")
        ratio = figures.get("ratio")
        target = "-"
        if spec.target is not None and ratio is not None:
            held = "holds" if ratio.median >= spec.target else "**does not hold**"
            target = f">= {spec.target:.1f}: {held}"
        daemon, worker = figures.get("rss_daemon"), figures.get("rss_worker")
        memory = (
            f"{max(daemon.values):.0f} / {max(worker.values):.0f} MiB" if daemon and worker else "-"
        )
        ratio_cell = f"**{cell(ratio)}**" if ratio is not None else "-"
        lines.append(
            f"| {spec.label} | {cell(figures.get('archivist'))} | "
            f"{BASELINES[spec.baseline].label} | {cell(base)} | {ratio_cell} | {target} | "
            f"{memory} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path, help="benchmark JSON files")
    parser.add_argument("--paths", action="store_true", help="issue 27's table of paths")
    args = parser.parse_args()
    if args.paths:
        print(paths_table(args.json[0]))
        return
    figures, settings = load(args.json)
    print(table(figures, settings))


if __name__ == "__main__":
    main()
