"""The tables of a comparison, each read from the runs' files (nothing recomputed but the
changes): what differs between the runs, every check side by side, every headline metric with
its change, performance ratios with the ModelZoo rating, and the trend over more than two runs.

A run is a column named by its letter (A, B, ...); A is the first run given. Changes are B
against A in float64: absolute (B - A) and relative ((B - A) / |A|)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from helpers import parity
from helpers.compare.runs import RunFolder
from helpers.records import Check
from helpers.tables import show_value

UNCHANGED = "same"
ONLY_IN = "only in {labels}"


@dataclass
class Table:
    """One section of the comparison: its heading (an English msgid), notes and table."""

    key: str
    title: str
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    verdict_columns: tuple[str, ...] = ()  # columns whose cells are verdict words

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: the markdown export renders it (comparison.json)."""
        rows = [[show_value(v, 4) for v in row] for row in self.frame.itertuples(index=False)]
        return {"key": self.key, "title": self.title, "notes": self.notes,
                "columns": [str(c) for c in self.frame.columns], "rows": rows}


def _is_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def change(a: Any, b: Any) -> tuple[float | None, float | None]:
    """(B - A, (B - A) / |A| in %) in float64; None where either is not a finite number or A
    is 0 (a relative change from zero has no size)."""
    if not (_is_number(a) and _is_number(b)):
        return None, None
    a64, b64 = float(a), float(b)
    delta = b64 - a64
    return delta, (100.0 * delta / abs(a64) if a64 != 0 else None)


# ---- the runs -----------------------------------------------------------------------------


def runs_table(runs: list[RunFolder]) -> Table:
    rows = [{"run": r.label, "run id": r.run_id, "model": r.config.get("model"),
             "profile": r.config.get("profile"), "device": r.device, "dtype": r.dtype,
             "started": r.manifest.get("started"),
             "commit": str(r.manifest.get("git", {}).get("commit", "-"))[:12],
             "folder": str(r.dir)} for r in runs]
    return Table("runs", "Runs compared", pd.DataFrame(rows))


# ---- what differs -------------------------------------------------------------------------

_SKIP_CONFIG = {"out", "stages", "strict", "report_lang"}  # where and how, not what ran


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def _facts(run: RunFolder) -> dict[tuple[str, str], Any]:
    """(area, item) -> value of everything that can differ between two runs."""
    facts: dict[tuple[str, str], Any] = {}
    config = {k: v for k, v in run.config.items() if k not in _SKIP_CONFIG and k != "knobs"}
    for area, data in (("parameters", config),
                       ("stage knobs", run.manifest.get("knobs") or run.config.get("knobs", {})),
                       ("versions", run.metric("environment", "versions")),
                       ("device", run.metric("environment", "device")),
                       ("numeric settings", run.metric("environment", "numerics")),
                       ("environment variables", run.metric("environment", "env")),
                       ("platform", run.metric("environment", "platform")),
                       ("git", run.manifest.get("git"))):
        for item, value in _flat("", data or {}).items():
            facts[(area, item)] = value
    facts[("stages", "run")] = ", ".join(run.results)
    return facts


_VOLATILE = {("platform", "memory_available_gib"), ("device", "reason")}


def differences(runs: list[RunFolder], extra: dict[tuple[str, str], list[Any]] | None = None) -> Table:
    """Every parameter, knob, version, device property, numeric setting, environment
    variable, platform fact and commit that is not the same in every run, one column a run;
    `extra` adds rows computed elsewhere (the hashes of the saved outputs)."""
    facts = [_facts(r) for r in runs]
    keys = [k for k in dict.fromkeys(k for f in facts for k in f) if k not in _VOLATILE]
    table = {k: [f.get(k) for f in facts] for k in keys}
    table.update(extra or {})
    rows = [{"area": area, "item": item,
             **{r.label: show_value(v, 6) for r, v in zip(runs, values, strict=True)}}
            for (area, item), values in table.items() if any(v != values[0] for v in values)]
    notes = [f"{len(rows)} items differ; {len(table) - len(rows)} are the same in every run "
             "(not listed)."]
    return Table("differences", "What differs between the runs",
                 pd.DataFrame(rows, columns=["area", "item", *[r.label for r in runs]]), notes)


# ---- checks side by side ------------------------------------------------------------------


def _checks(run: RunFolder) -> dict[tuple[str, str], Check]:
    return {(stage, c.name): c for stage, res in run.results.items() for c in res.checks}


def verdict_change(verdicts: list[str | None], labels: list[str]) -> str:
    """'same', 'PASS -> FAIL' (first against last where they differ), or 'only in A, B'."""
    present = [v for v in verdicts if v is not None]
    if len(present) < len(verdicts):
        return ONLY_IN.format(labels=", ".join(lab for lab, v in zip(labels, verdicts, strict=True)
                                               if v is not None))
    if all(v == present[0] for v in present):
        return UNCHANGED
    return " -> ".join(dict.fromkeys(present))


def checks_side_by_side(runs: list[RunFolder]) -> Table:
    """Every check of every run, one row per (stage, check name): each run's verdict and
    value, and whether the verdict changed."""
    per_run = [_checks(r) for r in runs]
    stages = list(dict.fromkeys(s for r in runs for s in r.results))
    first = {}  # (stage, name) -> its place in the first run that made it
    for checks in per_run:
        for i, key in enumerate(checks):
            first.setdefault(key, i)
    keys = sorted(first, key=lambda k: (stages.index(k[0]), first[k]))
    labels = [r.label for r in runs]
    rows = []
    for stage, name in keys:
        found = [c.get((stage, name)) for c in per_run]
        row: dict[str, Any] = {"stage": stage, "check": name}
        for lab, c in zip(labels, found, strict=True):
            row[f"{lab} verdict"] = c.verdict if c else "-"
            row[f"{lab} value"] = show_value(c.value, 4) if c else "-"
        row["change"] = verdict_change([c.verdict if c else None for c in found], labels)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["stage", "check",
                                        *[f"{lab} {k}" for lab in labels for k in ("verdict", "value")],
                                        "change"])
    changed = int((~frame["change"].isin([UNCHANGED]) & ~frame["change"].str.startswith("only")).sum())
    notes = [f"{len(frame)} checks; {changed} changed verdict between the runs "
             "(marked in the last column)."]
    return Table("checks", "Every check side by side", frame, notes,
                 (*[f"{lab} verdict" for lab in labels], "change"))


# ---- headline metrics ---------------------------------------------------------------------

# (stage, metric path, label, better): the figures a reader compares first; "higher" or
# "lower" says which direction is better, "" that neither is.
HEADLINES: tuple[tuple[str, str, str, str], ...] = (
    ("accuracy_parity", "headline/logits.rel_l2_pct", "logits: relative L2 (%)", "lower"),
    ("accuracy_parity", "headline/logits.cosine", "logits: cosine", "higher"),
    ("accuracy_parity", "headline/logits.top1_agreement_pct", "logits: top-1 agreement (%)", "higher"),
    ("accuracy_parity", "headline/logits.top5_overlap", "logits: top-5 overlap (of 5)", "higher"),
    ("accuracy_parity", "headline/logits.kl", "logits: KL (nats)", "lower"),
    ("accuracy_parity", "headline/generation.match_pct", "generation: free-running match (%)", "higher"),
    ("accuracy_parity", "headline/generation.stable_top1_pct", "teacher-forced: stable top-1 (%)", "higher"),
    ("accuracy_parity", "headline/generation.cosine_p5", "teacher-forced: cosine p5", "higher"),
    ("accuracy_parity", "headline/generation.rel_l2_p95_pct", "teacher-forced: relative L2 p95 (%)", "lower"),
    ("accuracy_parity", "headline/determinism.tokens_identical_pct", "determinism: tokens identical (%)", "higher"),
    ("performance", "decode_tokens_per_s", "decode throughput (tokens/s)", "higher"),
    ("performance", "decode_tokens_per_s_static_cache", "decode throughput, static cache (tokens/s)", "higher"),
    ("performance", "hf_generate_tokens_per_s", "HF generate throughput (tokens/s)", "higher"),
    ("performance", "e2e_tokens_per_s", "end-to-end throughput (tokens/s)", "higher"),
    ("performance", "graph_tokens_per_s", "graph mode throughput (tokens/s)", "higher"),
    ("performance", "ttft_s", "time to first token (s)", "lower"),
    ("performance", "tpot_s", "time per output token (s)", "lower"),
    ("performance", "latency_mean_s", "latency mean (s)", "lower"),
    ("performance", "latency_p99_s", "latency p99 (s)", "lower"),
    ("performance", "bandwidth_utilization", "bandwidth utilization", "higher"),
    ("performance", "peak_allocated", "peak device memory (bytes)", "lower"),
    ("performance", "host_rss", "host memory RSS (bytes)", "lower"),
    ("model_loading", "load_seconds", "model load time (s)", "lower"),
    ("model_loading", "parameters_total", "parameters", ""),
)


def _headline_values(runs: list[RunFolder]) -> list[tuple[str, str, str, list[Any]]]:
    """(stage, label, better, value per run) of every headline some run measured, and each
    audio component's real-time factor."""
    out = []
    for stage, path, label, better in HEADLINES:
        values = [r.metric(stage, path) for r in runs]
        if any(_is_number(v) for v in values):
            out.append((stage, label, better, values))
    components = dict.fromkeys(c for r in runs for c in (r.metric("performance", "rtf") or {}))
    for comp in components:
        values = [r.metric("performance", f"rtf/{comp}/RTF") for r in runs]
        if any(_is_number(v) for v in values):
            out.append(("performance", f"real-time factor: {comp}", "lower", values))
    return out


def _direction(delta: float | None, better: str) -> str:
    if delta is None or not better:
        return "-"
    if delta == 0:
        return UNCHANGED
    return "better" if (delta > 0) == (better == "higher") else "worse"


def headline_metrics(runs: list[RunFolder]) -> Table:
    """Each headline metric of A and B, its change B - A and (B - A) / |A|, and whether that
    is better or worse (two runs; more runs give the trend table)."""
    a, b = runs[0], runs[1]
    rows = []
    for stage, label, better, values in _headline_values([a, b]):
        delta, rel = change(values[0], values[1])
        rows.append({"stage": stage, "metric": label, a.label: values[0], b.label: values[1],
                     "change": delta, "change (%)": rel, "direction": _direction(delta, better)})
    frame = pd.DataFrame(rows, columns=["stage", "metric", a.label, b.label, "change",
                                        "change (%)", "direction"], dtype=object)
    notes = [f"Change: {b.label} minus {a.label}; change (%): that change over the magnitude "
             f"of {a.label}'s value, x 100, in float64; a dash where a run did not measure it."]
    return Table("metrics", "Headline metrics and their change", frame, notes)


def trend(runs: list[RunFolder]) -> Table:
    """More than two runs: each headline metric per run, and first against last."""
    first, last = runs[0], runs[-1]
    rows = []
    for stage, label, _better, values in _headline_values(runs):
        _, rel = change(values[0], values[-1])
        rows.append({"stage": stage, "metric": label,
                     **{r.label: v for r, v in zip(runs, values, strict=True)},
                     f"{last.label} vs {first.label} (%)": rel})
    frame = pd.DataFrame(rows, columns=["stage", "metric", *[r.label for r in runs],
                                        f"{last.label} vs {first.label} (%)"], dtype=object)
    notes = [f"{len(runs)} runs in the order given; the last column is the relative change "
             f"of {last.label} against {first.label}."]
    return Table("trend", "Trend over the runs", frame, notes)


# ---- performance ratios and the ModelZoo rating -------------------------------------------

BASELINE_BACKEND = "cuda"  # ModelZoo rates an NPU port against the GPU


def baseline(runs: list[RunFolder]) -> tuple[RunFolder, str]:
    """The run the others are held to, and a sentence that says why: the one GPU run where
    exactly one ran on a GPU (ModelZoo's baseline device), else A."""
    gpus = [r for r in runs if r.backend == BASELINE_BACKEND]
    if len(gpus) == 1:
        return gpus[0], f"Baseline: {gpus[0].label}, the one run on a GPU (ModelZoo's baseline device)."
    return runs[0], f"Baseline: {runs[0].label}, the first run given (no single run on a GPU)."


def modelzoo_rules() -> dict[str, Any]:
    """The PerfStatus cut-offs of data/thresholds.json (each a minimum ratio) and their source."""
    return parity.thresholds()["modelzoo_perf"]


def rate(ratio: float | None) -> str:
    """PERFECT / OK / POK / NOK for a speed ratio by ModelZoo's cut-offs (the highest whose
    minimum the ratio reaches); '-' when there is no ratio."""
    if ratio is None or not math.isfinite(ratio):
        return "-"
    for word, floor in sorted(modelzoo_rules()["min_ratio"].items(), key=lambda kv: -kv[1]):
        if ratio >= floor:
            return word
    return "-"


def rule_text() -> str:
    cuts = sorted(modelzoo_rules()["min_ratio"].items(), key=lambda kv: -kv[1])
    return ", ".join(f"{w} >= {f:g}" if f > 0 else f"{w} < {cuts[-2][1]:g}" for w, f in cuts)


# (stage, path, label, kind): a rate's ratio is device / baseline, a time's baseline / device,
# so a ratio above 1 is always "faster than the baseline"
SPEEDS: tuple[tuple[str, str, str, str], ...] = (
    ("performance", "decode_tokens_per_s", "decode throughput (tokens/s)", "rate"),
    ("performance", "decode_tokens_per_s_static_cache", "decode throughput, static cache (tokens/s)", "rate"),
    ("performance", "hf_generate_tokens_per_s", "HF generate throughput (tokens/s)", "rate"),
    ("performance", "e2e_tokens_per_s", "end-to-end throughput (tokens/s)", "rate"),
    ("performance", "graph_tokens_per_s", "graph mode throughput (tokens/s)", "rate"),
    ("performance", "ttft_s", "time to first token (s)", "time"),
    ("performance", "tpot_s", "time per output token (s)", "time"),
    ("performance", "latency_p99_s", "latency p99 (s)", "time"),
    ("model_loading", "load_seconds", "model load time (s)", "time"),
)
RATED = "decode throughput (tokens/s)"  # the figure ModelZoo's rating is given for


def speed_ratio(base: Any, other: Any, kind: str) -> float | None:
    """How many times faster `other` is than `base` (float64): other / base for a rate,
    base / other for a time; None without two positive numbers."""
    if not (_is_number(base) and _is_number(other)) or float(base) <= 0 or float(other) <= 0:
        return None
    return float(other) / float(base) if kind == "rate" else float(base) / float(other)


def _speeds(run: RunFolder) -> list[tuple[str, Any, str]]:
    rows = [(label, run.metric(stage, path), kind) for stage, path, label, kind in SPEEDS]
    for comp in run.metric("performance", "rtf") or {}:
        rows.append((f"real-time factor: {comp}", run.metric("performance", f"rtf/{comp}/RTF"),
                     "time"))
    return rows


def is_modelzoo_pair(base: RunFolder, other: RunFolder) -> bool:
    """An NPU run held to a GPU run: the pair ModelZoo's PerfStatus is defined for."""
    return base.backend == BASELINE_BACKEND and other.backend == "npu"


def performance(runs: list[RunFolder]) -> Table:
    """Each speed figure of every run against the baseline run, as 'x times faster', and the
    ModelZoo rating of the decode throughput ratio."""
    base, why = baseline(runs)
    others = [r for r in runs if r is not base]
    kinds = {label: kind for r in runs for label, _, kind in _speeds(r)}
    values = {r.label: {label: v for label, v, _ in _speeds(r)} for r in runs}
    rows = []
    for label, kind in kinds.items():
        base_value = values[base.label].get(label)
        row: dict[str, Any] = {"figure": label, base.label: base_value}
        for r in others:
            row[r.label] = values[r.label].get(label)
            row[f"{r.label} / {base.label} speed"] = speed_ratio(base_value, row[r.label], kind)
        if any(_is_number(v) for v in row.values()):
            rows.append(row)
    columns = ["figure", base.label,
               *[c for r in others for c in (r.label, f"{r.label} / {base.label} speed")]]
    note = ("A speed ratio above 1 means faster than the baseline: a rate divided by the "
            "baseline's, or the baseline's time divided by the run's.")
    return Table("performance", "Performance against the baseline run",
                 pd.DataFrame(rows, columns=columns, dtype=object), [why, note])


def ratings(runs: list[RunFolder]) -> Table:
    """ModelZoo's PerfStatus of every run against the baseline, from the decode throughput
    ratio; a formal rating only for an NPU run against a GPU run, shown for the ratio
    otherwise."""
    base, _ = baseline(runs)
    rules = modelzoo_rules()
    rows = []
    for r in runs:
        if r is base:
            continue
        ratio = speed_ratio(base.metric("performance", "decode_tokens_per_s"),
                            r.metric("performance", "decode_tokens_per_s"), "rate")
        formal = is_modelzoo_pair(base, r)
        rows.append({"run": r.side, "baseline": base.side, "figure": RATED, "ratio": ratio,
                     "rating": rate(ratio), "threshold": rule_text(),
                     "applies": ("yes: an NPU run against a GPU run" if formal else
                                 f"ratio only: ModelZoo rates an NPU against a GPU; here "
                                 f"{r.backend} against {base.backend}"),
                     "source": parity.source(rules["source"])})
    formal = all(is_modelzoo_pair(base, r) for r in runs if r is not base)
    return Table("rating", "ModelZoo performance rating", pd.DataFrame(
        rows, columns=["run", "baseline", "figure", "ratio", "rating", "threshold", "applies",
                       "source"], dtype=object), [rules["note"]],
                 ("rating",) if formal else ())  # coloured only where it is ModelZoo's verdict

