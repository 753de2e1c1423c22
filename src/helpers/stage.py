"""What a stage notebook uses to record its metrics, checks and figures, and to finish."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from helpers import paths
from helpers.records import Check, StageResult, status_from_checks, write_result

# A report shows values whole: no "..." in table cells, no row/column elision.
pd.set_option("display.max_colwidth", None)
pd.set_option("display.max_rows", 500)
pd.set_option("display.max_columns", 50)


def table(df: pd.DataFrame, precision: int = 4) -> Any:
    """A DataFrame as the report shows it: no index column, floats to `precision` digits."""
    return df.style.hide(axis="index").format(precision=precision, thousands=",")


def collapsible(df: pd.DataFrame, summary: str, precision: int = 4) -> Any:
    """A long table folded under a one-line summary: open on screen with a click; the PDF
    prints the summary line only (the full rows stay in the results JSON / CSV)."""
    from html import escape

    from IPython.display import HTML

    inner = table(df, precision).to_html()
    return HTML(f'<details class="report-details"><summary>{escape(summary)} '
                f"({len(df)} rows; click to open)</summary>{inner}</details>")


def run_dir_or_lab(run_dir: str) -> Path:
    """The run folder given by the runner, or report/lab when a notebook runs on its own."""
    return Path(run_dir) if run_dir else paths.REPORT / "lab"


class Stage:
    """Collects one stage's results; `finish()` writes results/<name>.json.

    >>> st = Stage("environment", run_dir, "Environment")
    >>> st.metric("python", "3.11.7"); st.add(Check.judge(...)); st.finish()
    """

    def __init__(self, name: str, run_dir: str = "", title: str = "") -> None:
        self.name = name
        self.title = title or name.replace("_", " ").capitalize()
        self.dir = run_dir_or_lab(run_dir)
        self.results_dir = self.dir / "results"
        self.figures_dir = self.dir / "figures"
        self.metrics: dict[str, Any] = {}
        self.checks: list[Check] = []
        self.figures: list[str] = []
        self._skipped: str | None = None
        self._t0 = time.perf_counter()

    def metric(self, key: str, value: Any) -> Any:
        self.metrics[key] = value
        return value

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def judge(self, name: str, value: Any, op: str, limit: Any, source: str, **kw: Any) -> Check:
        return self.add(Check.judge(name, value, op, limit, source, **kw))

    def save_figure(self, fig: Any, name: str) -> Path:
        """Save a matplotlib figure as results' companion PNG (the notebook still shows it)."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{self.name}-{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        self.figures.append(path.name)
        return path

    def skip(self, reason: str) -> None:
        """Mark the stage skipped (not applicable here); finish() still writes the record."""
        self._skipped = reason
        self.metrics["skipped_reason"] = reason

    def finish(self) -> StageResult:
        status = "skipped" if self._skipped else status_from_checks(self.checks)
        result = StageResult(
            stage=self.name, status=status, seconds=round(time.perf_counter() - self._t0, 3),
            title=self.title, metrics=self.metrics, checks=self.checks, figures=self.figures,
        )
        write_result(self.results_dir, result)
        return result
