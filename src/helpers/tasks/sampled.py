"""Sampled decoding compared as distributions (stage 6 with decoding=release).

Two correct ports that sample do not write the same ids: a device's rounding moves a sampled
token as soon as the cumulative probabilities differ in the last bit, and from there the
sequences part. What must agree is what the samples are like. Each input runs under N seeds on
both sides (the seed is the sampler's, so seed k on the target meets seed k on the reference);
per input and seed each side's outputs are measured (generated ids, seconds of speech, the
error rate of the transcript or of the round trip), the target's paired with the reference's of
the same input and seed, and the pairs summarized: the mean difference (rates, in points) or
the mean ratio (lengths) with a percentile-bootstrap 95 % confidence interval (float64,
resampling the pairs, a fixed generator seed so the report is reproducible). Equivalence is
judged on the interval, not on the mean: the target is equivalent when the whole interval lies
inside the margin (rates: no more than 1 point worse, the ModelZoo convention; lengths: inside
MLPerf's 0.9-1.1 length band). Judged with real weights; shown for information with random
weights, whose transcripts are noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from helpers.records import Check
from helpers.tasks import metrics

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
LENGTH_BAND = (0.9, 1.1)
LENGTH_SOURCE = ("MLPerf Inference LLM accuracy rule: generated tokens per sample within 90-110 % "
                 "of the reference's (llama2-70b), as a band on the paired length ratio")


@dataclass(frozen=True)
class Measure:
    """One thing measured per input and seed, and how a pair of them is compared."""

    name: str
    kind: str  # "difference" (target - reference, in the unit) or "ratio" (target / reference)
    unit: str


MEASURES = (Measure("generated ids", "ratio", "x"), Measure("speech seconds", "ratio", "x"),
            Measure("error rate", "difference", "points"))


def bootstrap_ci(values: Any, resamples: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile-bootstrap confidence interval
    (float64). One value gives a zero-width interval; none gives NaNs."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(low), float(high)


def per_sample(outputs: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """side -> list of {task, input, seed, ids, seconds, rate (None or 0..1)} -> long frame."""
    rows = [{"side": side, **r} for side, recs in outputs.items() for r in recs]
    return pd.DataFrame(rows, columns=["side", "task", "input", "seed", "generated ids",
                                       "speech seconds", "error rate"])


def paired(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per task, input, seed and measure: target and reference value and the pair's
    difference (points for a rate) or ratio; pairs with a missing or zero side are left out."""
    if samples.empty:
        return pd.DataFrame(columns=["task", "input", "seed", "measure", "target",
                                     "reference", "value"])
    keys = ["task", "input", "seed"]
    t = samples[samples["side"] == "target"].set_index(keys)
    r = samples[samples["side"] == "reference"].set_index(keys)
    both = t.index.intersection(r.index)
    rows = []
    for key in both:
        for m in MEASURES:
            a, b = _number(t.at[key, m.name]), _number(r.at[key, m.name])
            if a is None or b is None:
                continue
            if m.kind == "ratio":
                if b == 0:
                    continue
                value = a / b
            else:
                a, b = 100.0 * a, 100.0 * b
                value = a - b
            rows.append({"task": key[0], "input": key[1], "seed": int(key[2]),
                         "measure": m.name, "target": a, "reference": b, "value": value})
    return pd.DataFrame(rows, columns=["task", "input", "seed", "measure", "target",
                                       "reference", "value"])


def _number(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _margin(m: Measure) -> tuple[float, float, str]:
    if m.kind == "ratio":
        return LENGTH_BAND[0], LENGTH_BAND[1], LENGTH_SOURCE
    return -math.inf, metrics.MAX_DROP_POINTS, metrics.DROP_SOURCE


def summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per task and measure: pairs, inputs, seeds, mean with its 95 % interval, the margin and
    whether the interval lies inside it."""
    rows = []
    by_name = {m.name: m for m in MEASURES}
    for (task, name), group in pairs.groupby(["task", "measure"], sort=False):
        m = by_name[name]
        mean, low, high = bootstrap_ci(group["value"])
        lo, hi, _ = _margin(m)
        rows.append({"task": task, "measure": name, "compared as": m.kind, "pairs": len(group),
                     "inputs": group["input"].nunique(), "seeds": group["seed"].nunique(),
                     "mean": mean, "ci low": low, "ci high": high,
                     "margin": f"[{lo:g}, {hi:g}]" if m.kind == "ratio" else f"<= {hi:g} points",
                     "inside": bool(low >= lo and high <= hi)})
    return pd.DataFrame(rows)


def checks(table: pd.DataFrame, judged: bool) -> list[Check]:
    """One check per task and measure: the confidence interval inside the margin (judged with
    real weights, info otherwise)."""
    out = []
    by_name = {m.name: m for m in MEASURES}
    for row in table.to_dict("records"):
        m = by_name[row["measure"]]
        _, _, source = _margin(m)
        what = ("target / reference ratio" if m.kind == "ratio"
                else "target - reference (points)")
        value = f"{row['mean']:.4g} [{row['ci low']:.4g}, {row['ci high']:.4g}]"
        detail = (f"{row['pairs']} pairs ({row['inputs']} inputs x {row['seeds']} seeds); mean "
                  f"and percentile-bootstrap {LEVEL:.0%} interval, {BOOTSTRAP_RESAMPLES} "
                  "resamples of the pairs")
        if not judged:
            detail = "random weights: shown, not judged. " + detail
        out.append(Check(f"{row['task']}: sampled {row['measure']}, {what}, {LEVEL:.0%} "
                         "interval inside the margin", value, f"interval {row['margin']}",
                         row["inside"] if judged else None, source, detail=detail))
    return out


def figure(pairs: pd.DataFrame, title: str = "") -> tuple[Any, Any]:
    """Paired differences (rates) and ratios (lengths) per task: one point per input and seed,
    the mean with its bootstrap interval, and the margin's edges."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = [m.name for m in MEASURES if m.name in set(pairs["measure"])]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.4),
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        sub = pairs[pairs["measure"] == name]
        m = next(x for x in MEASURES if x.name == name)
        sns.stripplot(data=sub, x="task", y="value", hue="seed", ax=ax, dodge=False,
                      alpha=0.6, size=4, legend=False)
        sns.pointplot(data=sub, x="task", y="value", ax=ax, color="black",
                      errorbar=("ci", 95), linestyle="none", markers="D", n_boot=BOOTSTRAP_RESAMPLES,
                      seed=BOOTSTRAP_SEED)
        lo, hi, _ = _margin(m)
        for edge in (lo, hi):
            if math.isfinite(edge):
                ax.axhline(edge, color="tab:red", linestyle="--", linewidth=1)
        ax.axhline(1.0 if m.kind == "ratio" else 0.0, color="grey", linewidth=0.8)
        ax.set_title(name)
        ax.set_ylabel("target / reference" if m.kind == "ratio" else "target - reference (points)")
        ax.set_xlabel("")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, axes
