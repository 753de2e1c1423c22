"""What the stage shows: the probe table and its CSV, the status heatmap, the coverage of the
model's operators, the known-failure list and the checks for the verdict table."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import parity
from helpers.grammar import DTYPE_BYTES
from helpers.probes.verdict import FAILED, RULE_TEXT, RULES, SEVERITY, worst
from helpers.records import Check

if TYPE_CHECKING:  # pandas loads on first use: the probe worker imports this package too
    import pandas as pd

COLUMNS = ["op", "dtype", "shape", "status", "cosine", "max_abs", "max_rel", "mean_rel",
           "error_ratio", "message", "workaround"]
CSV_COLUMNS = ["source", "probe", "group", *COLUMNS, "rule", "ratio_mean_rel", "ratio_max_rel",
               "known", "calls", "aten_ops", "seconds"]
DTYPE_ORDER = [*DTYPE_BYTES, "bool"]
COVERAGE = ("ok", "fallback", "mismatch", "fail", "skipped")
SOURCE_RUNS_ON_DEVICE = (
    "GPA and Covo-Audio-Chat Ascend adaptation reports: their operator tables list every "
    "operator the model uses as running on the device (a CPU fallback or an error is a porting gap)")
SOURCE_NO_CRASH = ("probe isolation policy: an operator that kills or hangs the process is a "
                   "defect of the device stack, whatever its workaround")
SOURCE_TRACE = "operator tracing: one recorded forward per component of the selected recipe"


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The probe table: one row per probe and dtype (catalog) or per signature (model)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """All rows with the table's columns plus source, rule, ratios, calls and timing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in CSV_COLUMNS})
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return ""
    return v


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out = {s: 0 for s in SEVERITY}
    for r in rows:
        out[r["status"]] += 1
    return {k: v for k, v in out.items() if v}


def _bucket(status: str) -> str:
    return "fail" if status in FAILED else status


def coverage_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Model coverage: per distinct signature, and per operator (worst over its signatures)."""
    sig = {k: 0 for k in COVERAGE}
    for r in rows:
        sig[_bucket(r["status"])] += 1
    per_op: dict[str, list[str]] = {}
    for r in rows:
        per_op.setdefault(r["op"], []).append(r["status"])
    ops = {k: 0 for k in COVERAGE}
    for statuses in per_op.values():
        ops[_bucket(worst(statuses))] += 1
    return {"signatures": sig, "operators": ops}


def coverage(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """How many of the model's operators are ok / fall back / mismatch / fail / were skipped."""
    import pandas as pd

    counts = coverage_counts(rows)
    out = []
    for unit, c in counts.items():
        total = sum(c.values())
        label = ("distinct signatures (operator, dtypes, shapes)" if unit == "signatures"
                 else "distinct operators (worst over their signatures)")
        out.append({"counted": label, "total": total, **c,
                    "ok %": round(100.0 * c["ok"] / total, 1) if total else float("nan")})
    return pd.DataFrame(out)


def rules_frame() -> pd.DataFrame:
    """How a row is judged: rule, what it applies to, when it passes, and its source."""
    import pandas as pd

    return pd.DataFrame([{"rule": k, "applies to": RULE_TEXT[k][0], "passes when": RULE_TEXT[k][1],
                          "source": RULES[k]} for k in RULE_TEXT])


def known_issues(probes: list[Any]) -> pd.DataFrame:
    """Catalog probes with a reported failure or a workaround, whatever their status here."""
    import pandas as pd

    rows = [{"op": p.op, "known failure": p.known, "workaround": p.workaround}
            for p in probes if p.known or p.workaround]
    return pd.DataFrame(rows, columns=["op", "known failure", "workaround"])


def problems(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Only the rows that are not ok (skipped included), worst first."""
    bad = [r for r in rows if r["status"] != "ok"]
    bad.sort(key=lambda r: -SEVERITY[r["status"]])
    return frame(bad)


def heatmap_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What heatmap draws of each row: its operator, dtype and status (timings and errors
    left out, so that equal statuses make one figure in the figure cache)."""
    return [{k: r[k] for k in ("op", "dtype", "status")} for r in rows]


def heatmap(rows: list[dict[str, Any]], title: str) -> Any:
    """Status by operator (rows) and dtype (columns), in the report's status colors."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from helpers.plots import STATUS_COLORS, figure

    if not rows:
        fig, ax = figure(width=4.0, height=1.2)
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: nothing ran", ha="center", va="center")
        return fig
    ops = list(dict.fromkeys(r["op"] for r in rows))
    seen = {r["dtype"] for r in rows}
    dtypes = [d for d in DTYPE_ORDER if d in seen] + sorted(seen - set(DTYPE_ORDER))
    order = sorted(SEVERITY, key=SEVERITY.__getitem__)
    cells: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        cells.setdefault((r["op"], r["dtype"]), []).append(r["status"])
    grid = np.full((max(len(ops), 1), max(len(dtypes), 1)), np.nan)
    for (op, dt), statuses in cells.items():
        grid[ops.index(op), dtypes.index(dt)] = order.index(worst(statuses))
    fig, ax = figure(width=3.5 + 1.0 * len(dtypes), height=1.4 + 0.22 * len(ops))
    cmap = ListedColormap([STATUS_COLORS[s] for s in order]).with_extremes(bad="#ffffff")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-0.5, vmax=len(order) - 0.5,
              aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(dtypes)), dtypes)
    ax.set_yticks(range(len(ops)), ops, fontsize=7)
    ax.tick_params(axis="x", labeltop=True, labelbottom=False, top=False, bottom=False)
    ax.grid(False)
    # white lines between the cells: two line collections, not a minor tick per cell edge
    # (each tick is five artists, which made the drawing of a tall heatmap seconds long)
    lines = {"color": "#ffffff", "linewidth": 1.0, "alpha": plt.rcParams["grid.alpha"]}
    ax.hlines(np.arange(len(ops) + 1) - 0.5, -0.5, len(dtypes) - 0.5, **lines)
    ax.vlines(np.arange(len(dtypes) + 1) - 0.5, -0.5, len(ops) - 0.5, **lines)
    ax.set_title(title)
    present = [s for s in order if any(worst(v) == s for v in cells.values())]
    ax.legend(handles=[Patch(color=STATUS_COLORS[s], label=s) for s in present],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def checks(catalog_rows: list[dict[str, Any]], model_rows: list[dict[str, Any]],
           trace: dict[str, Any] | None) -> list[Check]:
    """The stage's verdicts: model operators on the device, no mismatch, no crash/timeout."""
    bench = parity.source("msprobe-benchmark")
    out: list[Check] = []
    if trace is not None:
        out += _model_checks(model_rows, trace, bench)
    cat = status_counts(catalog_rows)
    out.append(Check.judge("catalog: no mismatch beyond tolerance", cat.get("mismatch", 0),
                           "==", 0, bench, detail=_names(catalog_rows, ("mismatch",))))
    out.append(Check.judge("catalog: no crash/timeout",
                           cat.get("crashed", 0) + cat.get("timeout", 0), "==", 0,
                           SOURCE_NO_CRASH, detail=_names(catalog_rows, ("crashed", "timeout"))))
    out.append(Check("catalog: probes that raise (each with its workaround)",
                     cat.get("unsupported", 0), "informational", None,
                     "operator catalog (known accelerator failures and their workarounds)", _names(catalog_rows, ("unsupported",))))
    return out


def _model_checks(rows: list[dict[str, Any]], trace: dict[str, Any], bench: str) -> list[Check]:
    if trace.get("error"):
        fail = f"trace failed: {trace['error']}"
        return [Check("all model operators run on the device", "no trace", "== 0", False,
                      SOURCE_RUNS_ON_DEVICE, fail)]
    counts = status_counts(rows)
    off = sum(counts.get(s, 0) for s in ("fallback", *FAILED))
    errors = trace.get("errors") or {}
    return [
        Check.judge("all model operators run on the device", off, "==", 0,
                    SOURCE_RUNS_ON_DEVICE, unit=" signatures off the device",
                    detail=_names(rows, ("fallback", *FAILED))),
        Check.judge("model operators: no mismatch beyond tolerance", counts.get("mismatch", 0),
                    "==", 0, bench, detail=_names(rows, ("mismatch",))),
        Check.judge("every component's forward ran under the tracer", len(errors), "==", 0,
                    SOURCE_TRACE, detail="; ".join(f"{k}: {v}" for k, v in errors.items())),
    ]


def _names(rows: list[dict[str, Any]], statuses: tuple[str, ...], limit: int = 8) -> str:
    hits = list(dict.fromkeys(f"{r['op']} ({r['dtype']})" for r in rows
                              if r["status"] in statuses))
    more = f" and {len(hits) - limit} more" if len(hits) > limit else ""
    return ", ".join(hits[:limit]) + more
