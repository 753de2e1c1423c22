"""Where a report run's time goes: per stage and per part, wall and CPU seconds.

    make profile [PARAMS]                          run `make report PARAMS`, then print its table
    .venv/bin/python scripts/profile_report.py --run report/latest   the table of a finished run

It reads what the run records: run.json (each stage's wall with its kernel, the runner's own
parts: kernel waits, starts and warm-up imports, merge, HTML, markdown, PDF), every
results/<stage>.json ("seconds", and "profile": the stage's timed parts, model loads and
compiles, its CPU seconds and its kernel process's) and the executed notebooks (papermill's
duration of every cell, which covers the stages that time no parts of their own). The host's
load average is printed with it: on a shared host wall seconds inflate, CPU seconds much less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOP_CELLS = 4  # the slowest cells shown per stage


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def _row(name: str, wall: float | None, cpu: float | None = None, note: str = "") -> str:
    w = "" if wall is None else f"{wall:8.2f}"
    c = "" if cpu is None else f"{cpu:8.2f}"
    return f"| {name} | {w} | {c} | {note} |"


def _cells(nb_path: Path) -> list[tuple[float, str]]:
    """(seconds, first source line) of every code cell papermill timed, slowest first."""
    try:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for cell in nb.get("cells", []):
        seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell.get("cell_type") != "code" or seconds is None:
            continue
        src = "".join(cell.get("source", ""))
        lines = [s for s in src.splitlines() if s.strip() and not s.startswith("#")]
        out.append((float(seconds), (lines[0] if lines else "(empty)")[:70].replace("|", "/")))
    return sorted(out, reverse=True)


def stage_rows(run: Path, manifest: dict[str, Any]) -> list[str]:
    rows = []
    walls = manifest.get("wall_seconds", {})
    for stage in manifest.get("stages", []):
        name = stage["name"]
        try:
            res = json.loads((run / "results" / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rows.append(_row(f"**{name}**", walls.get(name), None, "no results file"))
            continue
        prof = res.get("profile") or {}
        rows.append(_row(f"**{name}**", res.get("seconds"), prof.get("cpu_s"),
                         f"{walls.get(name, 0):.2f} s with its kernel; kernel process CPU "
                         f"{prof.get('process_cpu_s', 0):.2f} s (its own imports included)"))
        for part in prof.get("parts", []):
            rows.append(_row(f"  {name}: {part['part']}", part["wall_s"], part["cpu_s"]))
        for seconds, line in _cells(run / "notebooks" / stage["notebook"])[:TOP_CELLS]:
            rows.append(_row(f"  {name} cell: `{line}`", seconds))
    return rows


def table(run: Path) -> str:
    manifest = json.loads((run / "run.json").read_text(encoding="utf-8"))
    parts = manifest.get("profile", [])
    staged = sum(manifest.get("wall_seconds", {}).values())
    lines = [f"run {manifest.get('run_id')} ({run})",
             "", "| part | wall s | CPU s | note |", "|---|---:|---:|---|"]
    lines.append(_row("**stages and summary (the runner's loop)**", manifest.get("seconds")))
    lines += stage_rows(run, manifest)
    for p in parts:
        lines.append(_row(f"runner: {p['part']}", p["wall_s"], p.get("cpu_s")))
    published = sum(p["wall_s"] for p in parts if not p["part"].count(":"))
    lines.append(_row("**sum of stage walls / publishing**", staged, None,
                      f"publishing {published:.2f} s"))
    return "\n".join(lines)


def run_report(params: list[str]) -> tuple[Path, float, float]:
    """`python -m helpers.report PARAMS`: the new run folder, wall and CPU seconds of the
    whole command (its kernels and Chromium included)."""
    out = ROOT / "report"
    for p in params:
        if p.startswith("OUT="):
            out = Path(p[4:])
    before = set(out.glob("2*")) if out.is_dir() else set()
    t0, c0 = time.perf_counter(), os.times()
    subprocess.run([sys.executable, "-m", "helpers.report", *params], cwd=ROOT, check=False)
    c1 = os.times()
    wall = time.perf_counter() - t0
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    new = sorted(set(out.glob("2*")) - before)
    if not new:
        raise SystemExit(f"no new run folder under {out}")
    return new[-1], wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", help="print the table of this finished run folder (no new run)")
    ap.add_argument("params", nargs="*", help="KEY=VALUE run parameters, as for make report")
    args = ap.parse_args()
    if args.run:
        print(f"host: {load()}")
        print(table(Path(args.run).resolve()))
        return
    start_load = load()
    run, wall, cpu = run_report(args.params)
    print(f"\nhost at start: {start_load}; at end: {load()}")
    print(f"whole command: {wall:.2f} s wall, {cpu:.2f} s CPU (every process it started)")
    print(table(run))


if __name__ == "__main__":
    main()
