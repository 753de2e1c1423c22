"""Figures of the accuracy parity stage."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from helpers import plots
from helpers.stages.accuracy_parity.sections import largest_increase


def layer_figure(frame: pd.DataFrame, title: str = "") -> Any:
    """Relative L2 (%) per hidden state: target vs reference, and each side vs the golden."""
    fig, ax = plots.figure(width=max(6.0, 0.35 * len(frame) + 3))
    if "state" not in frame:  # the section failed: say so instead of drawing nothing
        ax.text(0.5, 0.5, "hidden states not compared (see the failed check)", ha="center",
                va="center", transform=ax.transAxes)
        return fig
    x = frame["index"].to_numpy()
    series = [("rel_l2_pct", "target vs reference", "-", "o")]
    if "target_vs_golden_pct" in frame:
        series += [("target_vs_golden_pct", "target vs float64 golden", "--", "^"),
                   ("reference_vs_golden_pct", "reference vs float64 golden", ":", "s")]
    values = np.concatenate([frame[c].to_numpy(dtype=np.float64) for c, *_ in series])
    positive = values[np.isfinite(values) & (values > 0)]
    for col, label, style, marker in series:
        y = frame[col].to_numpy(dtype=np.float64)
        ax.plot(x, np.where(y > 0, y, np.nan) if positive.size else y, style, marker=marker,
                label=label, markersize=4)
    if positive.size:
        ax.set_yscale("log")
    i, name, _ = largest_increase(frame)
    ax.axvline(i, color="#c62828", alpha=0.4, lw=6, label=f"largest increase: {name}")
    ax.set_xticks(x, frame["state"], rotation=45 if len(x) > 6 else 0, ha="right" if len(x) > 6
                  else "center", fontsize=8)
    ax.set_ylabel("relative L2 (%)")
    ax.set_title(title or "Hidden-state error by layer")
    ax.legend(loc="best")
    return fig
