"""The summary shown first in the report: one verdict table over every check of every stage,
stage durations and statuses, and the run's parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.records import VERDICTS, StageResult
from helpers.runner.rundir import load_run
from helpers.stages.kit import lab_dir, show_value, table, verdict_style


@dataclass
class Run:
    dir: Path
    manifest: dict[str, Any]
    results: dict[str, StageResult]


def load(run_dir: str = "") -> Run:
    """A finished (or running) run; "" = the stages run on their own in JupyterLab
    (report/lab), which may be none yet: then an empty summary that says so."""
    if run_dir:
        path = Path(run_dir)
        if not (path / "run.json").is_file():
            raise FileNotFoundError(f"no run.json in {path}: set run_dir to a run folder "
                                    "(report/<run-id>), or leave it empty for report/lab")
    else:
        path = lab_dir()
        if not (path / "run.json").is_file():
            return Run(path.resolve(), {"run_id": "lab", "stages": [], "lab": True}, {})
    manifest, results = load_run(path)
    return Run(path.resolve(), manifest, results)


def fmt(value: Any) -> str:
    """Short, faithful text for a measured value (4 significant digits for floats)."""
    if isinstance(value, bool) or value is None:
        return show_value(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def headline(run: Run) -> str:
    """One markdown paragraph: what ran, where, and the overall verdict."""
    if run.manifest.get("lab") and not run.results:
        return (f"No stage has run in `{run.dir}` yet: run the stage notebooks (each writes its "
                "results there), then this summary again; or `make report` for a whole run.")
    res = list(run.results.values())
    counts = {s: sum(r.status == s for r in res) for s in ("passed", "failed", "error", "skipped")}
    checks = [c for r in res for c in r.checks if c.passed is not None]
    ok = sum(c.passed for c in checks)
    cfg = run.manifest.get("config", {})
    env = run.results.get("environment")
    dev = env.metrics.get("device", {}) if env else {}
    device = f"`{dev['selected']}` (requested `{cfg.get('device')}`)" if dev.get("selected") \
        else f"`{cfg.get('device')}`"
    dtype = f"`{dev['dtype']}` (requested `{cfg.get('dtype')}`)" if dev.get("dtype") \
        else f"`{cfg.get('dtype')}`"
    lines = [
        f"**{len(res)} stages**: {counts['passed']} passed, {counts['failed']} with failed checks, "
        f"{counts['error']} raised, {counts['skipped']} skipped. "
        f"**{ok} of {len(checks)} checks pass.**",
        "",
        f"Model `{cfg.get('model')}`, profile `{cfg.get('profile')}`, device {device}, "
        f"dtype {dtype}.",
    ]
    if cfg.get("profile") in ("tiny", "full-shape"):
        lines += ["", '<div class="report-note">Profile <b>' + str(cfg.get("profile")) + "</b>: "
                  "random weights built from the real architecture classes. The numbers show "
                  "numerical agreement between devices and speed, not task quality; outputs "
                  "(text, audio) are meaningless by design.</div>"]
    reason = run.manifest.get("pdf_missing_reason")
    if reason:
        lines += ["", f'<div class="report-note"><b>No PDF</b>: {reason}</div>']
    return "\n".join(lines)


def verdict_table(run: Run) -> pd.DataFrame:
    rows = []
    for res in run.results.values():
        for c in res.checks:
            rows.append({"stage": res.title or res.stage, "check": c.name, "value": fmt(c.value),
                         "threshold": c.threshold, "verdict": c.verdict,
                         "source": c.source})
        if res.status == "error":
            err = res.error or {}
            rows.append({"stage": res.title or res.stage, "check": "stage runs to the end",
                         "value": f"{err.get('type', 'error')}: {str(err.get('message', ''))[:120]}",
                         "threshold": "no exception", "verdict": VERDICTS.FAIL,
                         "source": "pipeline"})
    return pd.DataFrame(rows, columns=["stage", "check", "value", "threshold", "verdict", "source"])


def stage_table(run: Run) -> pd.DataFrame:
    """One row per stage: status, the stage's own seconds and the runner's wall seconds
    (which add the notebook kernel's start and the torch import)."""
    rows = []
    wall = run.manifest.get("wall_seconds", {})
    for i, res in enumerate(run.results.values(), 1):
        judged = [c for c in res.checks if c.passed is not None]
        rows.append({"#": i, "stage": res.title or res.stage, "status": res.status,
                     "seconds": round(float(res.seconds), 2),
                     "wall seconds": wall.get(res.stage),
                     "checks passed": f"{sum(c.passed for c in judged)}/{len(judged)}",
                     "note": _note(res)})
    return pd.DataFrame(rows)


def _note(res: StageResult) -> str:
    if res.error:
        cell = res.error.get("cell")
        return f"{res.error.get('type')}" + (f" in cell {cell}" if cell is not None else "")
    return str(res.metrics.get("skipped_reason", ""))


def params_table(run: Run) -> pd.DataFrame:
    cfg = dict(run.manifest.get("config", {}))
    git = run.manifest.get("git", {})
    cfg["run_id"] = run.manifest.get("run_id")
    cfg["started"] = run.manifest.get("started")
    cfg["commit"] = f"{git.get('commit', 'unknown')}" + (" (dirty)" if git.get("dirty") else "")
    cfg["total seconds"] = run.manifest.get("seconds")
    return pd.DataFrame({"parameter": list(cfg), "value": [fmt(v) for v in cfg.values()]})


def styled(df: pd.DataFrame) -> Any:
    """A summary table with its verdicts coloured through the report's CSS classes."""
    return verdict_style(table(df), df)
