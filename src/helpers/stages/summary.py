"""The summary, executed last and shown first: the first page (the verdict, the model, the
device and software stack, one line per stage, the key figures with threshold, verdict and
source), then every check grouped by stage, stage durations and the run's parameters.

Every value shown here is read from the results files (results/<stage>.json) and formatted by
tables.show_value; nothing is recomputed. A key figure that no results file holds (a stage that
was not run or raised, a measurement the stage does not make yet) is a dash that says "not
measured". Text is in the run's REPORT_LANG (helpers.i18n); table headers and verdict words
are English msgids that the publisher translates with every other table of the report.
`first_page()` also writes <run>/first-page.json, which the markdown export renders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from helpers import i18n
from helpers.records import VERDICTS, Check, StageResult, load_run, metric_at, write_json
from helpers.stages.kit import lab_dir
from helpers.tables import show_value, table, verdict_style

FIRST_PAGE_FILE = "first-page.json"
NOT_MEASURED = "not measured"
STAGE_VERDICTS = {"passed": VERDICTS.PASS, "failed": VERDICTS.FAIL, "error": "raised",
                  "skipped": "skipped"}
FIGURE_COLUMNS = ["area", "figure", "value", "threshold", "verdict", "source"]
DIGITS = 4  # significant digits of a key figure (more where fewer would mislead)


@dataclass
class Run:
    dir: Path
    manifest: dict[str, Any]
    results: dict[str, StageResult]

    @property
    def lang(self) -> str:
        """The report language of the run (REPORT_LANG), English for older runs."""
        return str(self.manifest.get("config", {}).get("report_lang") or i18n.DEFAULT)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})


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
    """A measured value as the summary shows it (tables.show_value, 4 significant digits)."""
    return show_value(value, DIGITS)


# ---- the headline -----------------------------------------------------------------------


def _counts(run: Run) -> tuple[dict[str, int], int, int]:
    res = list(run.results.values())
    counts = {s: sum(r.status == s for r in res) for s in ("passed", "failed", "error", "skipped")}
    judged = [c for r in res for c in r.checks if c.passed is not None]
    return counts, sum(c.passed for c in judged), len(judged)


def overall(run: Run) -> str:
    """PASS when no check failed and no stage raised, else FAIL."""
    counts, ok, judged = _counts(run)
    return VERDICTS.PASS if not counts["failed"] and not counts["error"] and ok == judged \
        else VERDICTS.FAIL


def headline(run: Run) -> str:
    """Markdown: the overall verdict, what ran and where, and the caveats of this run."""
    lang = run.lang
    if run.manifest.get("lab") and not run.results:
        return i18n.t("No stage has run in `{dir}` yet: run the stage notebooks (each writes its "
                      "results there), then this summary again; or `make report` for a whole "
                      "run.", lang, dir=run.dir)
    counts, ok, judged = _counts(run)
    verdict = overall(run)
    lines = [
        i18n.t("**Verdict: {verdict}.** **{n} stages**: {passed} passed, {failed} with failed "
               "checks, {error} raised, {skipped} skipped. **{ok} of {judged} checks pass.**",
               lang, verdict=i18n.t(verdict, lang), n=len(run.results), ok=ok, judged=judged,
               **counts),
        "",
        " · ".join(f"{label} **{value}**" for label, value in stack(run)),
    ]
    for note in notes(run):
        lines += ["", f'<div class="report-note">{note}</div>']
    return "\n".join(lines)


def notes(run: Run) -> list[str]:
    """The caveats a reader must see with the figures: the tiny / full-shape profile (random
    weights), a busy host, a missing PDF."""
    lang, out = run.lang, []
    fault = run.config.get("fault")
    if fault:
        out.append(i18n.t("<b>FAULT planted</b> on the target side: {fault}. This run checks "
                          "that the report FAILs a broken port; its figures are not the "
                          "port's.", lang, fault=fault))
    profile = run.config.get("profile")
    if profile in ("tiny", "full-shape"):
        out.append(i18n.t("Profile <b>{profile}</b>: random weights built from the real "
                          "architecture classes. The numbers show numerical agreement between "
                          "devices and speed, not task quality; outputs (text, audio) are "
                          "meaningless by design.", lang, profile=profile))
    perf = run.results.get("performance")
    host = perf.metrics.get("host_note") if perf else None
    if host and host != "host quiet":
        out.append(i18n.t("Timings: {note}", lang, note=host))
    reason = run.manifest.get("pdf_missing_reason")
    if reason:
        out.append(i18n.t("<b>No PDF</b>: {reason}", lang, reason=reason))
    return out


def stack(run: Run) -> list[tuple[str, str]]:
    """The model, the device and the software stack, as (label, value) pairs."""
    lang = run.lang
    cfg = run.config
    env = run.results.get("environment")
    dev = env.metrics.get("device", {}) if env else {}
    versions = env.metrics.get("versions", {}) if env else {}
    loading = run.results.get("model_loading")
    params = loading.metrics.get("parameters_total") if loading else None
    model = f"{cfg.get('model', '-')} ({cfg.get('profile', '-')})"
    if params:
        model += ", " + i18n.t("{n} parameters", lang, n=show_value(params))
    device = str(dev.get("selected") or cfg.get("device", "-"))
    chip = dev.get("property.name")
    rows = [(i18n.t("model", lang), model),
            (i18n.t("device", lang), f"{device} ({chip})" if chip else device),
            (i18n.t("dtype", lang), str(dev.get("dtype") or cfg.get("dtype", "-")))]
    for key, label in (("torch", "torch"), ("torch_npu", "torch_npu"), ("cann", "CANN"),
                       ("cuda_runtime", "CUDA"), ("transformers", "transformers"),
                       ("python", "Python")):
        value = versions.get(key)
        if value is None:
            continue
        rows.append((label, i18n.t(str(value), lang) if value == "not installed" else str(value)))
    return rows


# ---- one line per stage -----------------------------------------------------------------


def stage_verdicts(run: Run) -> pd.DataFrame:
    """One row per stage: its verdict (PASS, FAIL, raised, skipped) and checks passed."""
    rows = []
    for i, res in enumerate(run.results.values(), 1):
        judged = [c for c in res.checks if c.passed is not None]
        rows.append({"#": i, "stage": i18n.t(res.title or res.stage, run.lang),
                     "verdict": STAGE_VERDICTS[res.status],
                     "checks passed": f"{sum(c.passed for c in judged)}/{len(judged)}",
                     "note": _note(res)})
    return pd.DataFrame(rows, columns=["#", "stage", "verdict", "checks passed", "note"])


# ---- key figures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One key figure found in a results file: its value and how it is judged."""

    value: str
    threshold: str = "-"
    verdict: str = VERDICTS.INFO
    source: str = ""


def _short(source: str) -> str:
    """A source's name without its explanation: 'GPA on Ascend 910 adaptation report'."""
    head = re.split(r" \(|: |; ", source, maxsplit=1)[0].strip()
    return head[:48] + ("…" if len(head) > 48 else "")


def _check(run: Run, pattern: str, stage: str = "") -> tuple[str, Check] | None:
    """The first check (in stage order, `stage` first) whose name matches `pattern`."""
    rx = re.compile(pattern, re.I)
    order = sorted(run.results.values(), key=lambda r: r.stage != stage)
    for res in order:
        for c in res.checks:
            if rx.search(c.name):
                return res.stage, c
    return None


def _from_check(run: Run, pattern: str, stage: str = "") -> Figure | None:
    hit = _check(run, pattern, stage)
    if hit is None:
        return None
    where, c = hit
    return Figure(fmt(c.value), c.threshold or "-", c.verdict,
                  f"{_short(c.source)} · {where}.json")


def _metric(run: Run, stage: str, path: str) -> Any:
    return metric_at(run.results, stage, path)


def _from_metric(run: Run, stage: str, path: str, unit: str = "") -> Figure | None:
    value = _metric(run, stage, path)
    if value is None:
        return None
    return Figure(fmt(value) + unit, "-", VERDICTS.INFO,
                  i18n.t("measured", run.lang) + f" · {stage}.json")


def _first(*finders: Callable[[], Figure | None]) -> Figure | None:
    for find in finders:
        found = find()
        if found is not None:
            return found
    return None


def _coverage(run: Run) -> Figure | None:
    ops = _metric(run, "operator_probes", "coverage/operators")
    sigs = _metric(run, "operator_probes", "coverage/signatures")
    if not isinstance(ops, dict):
        return None
    text = i18n.t("{ok} of {total} operators on the device", run.lang, ok=ops.get("ok", 0),
                  total=sum(ops.values()))
    if isinstance(sigs, dict):
        text += i18n.t(" ({ok} of {total} signatures)", run.lang, ok=sigs.get("ok", 0),
                       total=sum(sigs.values()))
    judged = _from_check(run, r"all model operators run on the device", "operator_probes")
    base = judged or Figure("", "-", VERDICTS.INFO, "")
    return Figure(text, base.threshold, base.verdict,
                  base.source or i18n.t("measured", run.lang) + " · operator_probes.json")


def _count(run: Run, key: str, pattern: str) -> Figure | None:
    value = _metric(run, "operator_probes", f"coverage/operators/{key}")
    if value is None:
        return None
    judged = _from_check(run, pattern, "operator_probes") if pattern else None
    if judged is None:
        return Figure(fmt(value), "-", VERDICTS.INFO,
                      i18n.t("measured", run.lang) + " · operator_probes.json")
    return Figure(fmt(value), judged.threshold, judged.verdict, judged.source)


def _peak_memory(run: Run) -> Figure | None:
    dev = _metric(run, "performance", "latency/memory/peak_allocated")
    if dev is not None:
        return Figure(_bytes(dev), "-", VERDICTS.INFO,
                      i18n.t("device allocator", run.lang) + " · performance.json")
    host = _metric(run, "performance", "latency/memory/peak_rss")
    if host is not None:
        return Figure(_bytes(host) + " " + i18n.t("(host RSS)", run.lang), "-", VERDICTS.INFO,
                      i18n.t("process memory", run.lang) + " · performance.json")
    return None


def _bytes(n: Any) -> str:
    return f"{fmt(float(n) / 2**20)} MiB"


def _latency(run: Run, stat: str) -> Figure | None:
    return _from_metric(run, "performance", f"latency/e2e/stats/{stat}", " s")


def _new_tokens(run: Run) -> str:
    return str(_metric(run, "performance", "latency/new_tokens") or 128)


def _rtf_rows(run: Run) -> list[tuple[str, Figure]]:
    """Real-time factors on the target: each audio component's (performance stage); without
    those, each RTF check of any stage (a task end to end, a component on the target side)."""
    env = run.results.get("environment")
    dev = env.metrics.get("device", {}) if env else {}
    side = f"{dev.get('selected', '')} {dev.get('dtype', '')}".strip()
    rows: list[tuple[str, Figure]] = []
    rtf = _metric(run, "performance", "rtf")
    for name, row in (rtf.items() if isinstance(rtf, dict) else ()):
        if isinstance(row, dict) and row.get("RTF") is not None:
            rows.append((name, Figure(fmt(row["RTF"]), "-", VERDICTS.INFO,
                                      i18n.t("measured", run.lang) + " · performance.json")))
    if rows:
        return rows
    shown: set[str] = set()
    for res in run.results.values():
        for c in res.checks:
            m = re.match(r"^(.*?): (?:end-to-end )?real-time factor on (.*?)( \(median\))?$",
                         c.name)
            if not m or m.group(1) in shown:
                continue
            if m.group(2) != "the target" and side and m.group(2) != side:
                continue  # a CPU reference's RTF, not the target's
            shown.add(m.group(1))
            rows.append((m.group(1), Figure(fmt(c.value), c.threshold or "-", c.verdict,
                                            f"{_short(c.source)} · {res.stage}.json")))
    return rows


def key_figures(run: Run) -> pd.DataFrame:
    """The figures a reviewer looks for first, each with threshold, verdict and source."""
    lang = run.lang
    n = _new_tokens(run)
    specs: list[tuple[str, str, Callable[[], Figure | None]]] = [
        ("accuracy", "relative L2 of the logits (%)",
         lambda: _from_check(run, r"^logits: relative L2", "accuracy_parity")),
        ("accuracy", "cosine of the logits",
         lambda: _from_check(run, r"^logits: cosine", "accuracy_parity")),
        ("accuracy", "top-1 agreement (%)",
         lambda: _from_check(run, r"^logits: top-1", "accuracy_parity")),
        ("accuracy", "top-5 overlap (of 5)",
         lambda: _from_check(run, r"^logits: top-5", "accuracy_parity")),
        ("accuracy", "task WER drop (points)",
         lambda: _from_check(run, r"\bWER\b", "tasks")),
        ("performance", "decode throughput (tokens/s)",
         lambda: _first(lambda: _from_check(run, r"^decode throughput", "performance"),
                        lambda: _from_metric(run, "performance", "decode_tokens_per_s"))),
        ("performance", "time to first token",
         lambda: _from_metric(run, "performance", "ttft_s", " s")),
        ("performance", "latency p50 ({n} tokens)", lambda: _latency(run, "p50")),
        ("performance", "latency p99 ({n} tokens)", lambda: _latency(run, "p99")),
        ("performance", "peak memory", lambda: _peak_memory(run)),
        ("performance", "model load time",
         lambda: _first(lambda: _from_check(run, r"loads in under", "model_loading"),
                        lambda: _from_metric(run, "model_loading", "load_seconds", " s"))),
        ("performance", "bandwidth utilization (decode, batch 1)",
         lambda: _first(lambda: _from_check(run, r"^bandwidth utilization", "performance"),
                        lambda: _from_metric(run, "performance", "bandwidth_utilization"))),
        ("operators", "coverage", lambda: _coverage(run)),
        ("operators", "fallbacks to the CPU", lambda: _count(run, "fallback", "")),
        ("operators", "failures", lambda: _count(run, "fail", r"all model operators run")),
        ("operators", "mismatches beyond tolerance",
         lambda: _count(run, "mismatch", r"^model operators: no mismatch")),
        ("audio", "waveform SNR device vs CPU (dB)",
         lambda: _from_check(run, r"\bSNR\b", "tasks")),
    ]
    rows = []
    for area, label, find in specs:
        rows.append(_row(run, area, i18n.t(label, lang, n=n), _safe(find), translated=True))
    for component, fig in _rtf_rows(run) or [("", None)]:
        label = i18n.t("real-time factor", lang) + (f" · {component}" if component else "")
        rows.append(_row(run, "audio", label, fig, translated=True))
    return pd.DataFrame(rows, columns=FIGURE_COLUMNS)


def _safe(find: Callable[[], Figure | None]) -> Figure | None:
    try:
        return find()
    except (TypeError, ValueError, KeyError):  # a results file of another shape: not measured
        return None


def _row(run: Run, area: str, label: str, fig: Figure | None,
         translated: bool = False) -> dict[str, str]:
    lang = run.lang
    shown = label if translated else i18n.t(label, lang)
    if fig is None:
        return {"area": i18n.t(area, lang), "figure": shown, "value": "-", "threshold": "-",
                "verdict": NOT_MEASURED, "source": _why_missing(run, area)}
    return {"area": i18n.t(area, lang), "figure": shown, "value": fig.value,
            "threshold": fig.threshold, "verdict": fig.verdict, "source": fig.source}


_AREA_STAGE = {"accuracy": "accuracy_parity", "performance": "performance",
               "operators": "operator_probes", "audio": "tasks"}


def _why_missing(run: Run, area: str) -> str:
    stage = _AREA_STAGE[area]
    res = run.results.get(stage)
    if res is None:
        return i18n.t("stage {stage} not run", run.lang, stage=stage)
    if res.status == "error":
        return i18n.t("stage {stage} raised", run.lang, stage=stage)
    return i18n.t("no results file holds it yet", run.lang)


# ---- the first page as data (for the markdown export) -------------------------------------


@dataclass
class FirstPage:
    headline: str
    stack: list[tuple[str, str]]
    notes: list[str]
    stages: pd.DataFrame
    figures: pd.DataFrame
    groups: list[tuple[str, pd.DataFrame]] = field(default_factory=list)

    def to_dict(self, lang: str) -> dict[str, Any]:
        def frame(df: pd.DataFrame) -> dict[str, Any]:
            return {"columns": list(df.columns),
                    "rows": [[show_value(v) if not isinstance(v, str) else v for v in row]
                             for row in df.itertuples(index=False)]}

        return {"lang": lang, "verdict": self.headline.split("\n", 1)[0],
                "stack": [list(p) for p in self.stack], "notes": self.notes,
                "stages": frame(self.stages), "figures": frame(self.figures),
                "groups": [{"title": t, **frame(df)} for t, df in self.groups]}


def first_page(run: Run) -> FirstPage:
    """The first page of the report, written to <run>/first-page.json for the markdown
    export (not in the lab folder's empty state)."""
    page = FirstPage(headline(run), stack(run), notes(run), stage_verdicts(run),
                     key_figures(run), verdict_groups(run))
    if run.results:
        write_json(run.dir / FIRST_PAGE_FILE, page.to_dict(run.lang))
    return page


# ---- every check, grouped by stage ---------------------------------------------------------

GROUP_COLUMNS = ["check", "value", "threshold", "verdict", "source"]


def verdict_groups(run: Run) -> list[tuple[str, pd.DataFrame]]:
    """Every check of every stage, one table per stage (headed `N. Title`)."""
    out = []
    for i, res in enumerate(run.results.values(), 1):
        rows = [{"check": c.name, "value": fmt(c.value), "threshold": c.threshold or "-",
                 "verdict": c.verdict, "source": c.source} for c in res.checks]
        if res.status == "error":
            err = res.error or {}
            rows.append({"check": "stage runs to the end",
                         "value": f"{err.get('type', 'error')}: "
                                  f"{str(err.get('message', ''))[:120]}",
                         "threshold": "no exception", "verdict": VERDICTS.FAIL,
                         "source": "pipeline"})
        out.append((f"{i}. {i18n.t(res.title or res.stage, run.lang)}",
                    pd.DataFrame(rows, columns=GROUP_COLUMNS)))
    return out


def stage_table(run: Run) -> pd.DataFrame:
    """One row per stage: status, the stage's own seconds and the runner's wall seconds
    (which add the notebook kernel's start and the torch import)."""
    rows = []
    wall = run.manifest.get("wall_seconds", {})
    for i, res in enumerate(run.results.values(), 1):
        judged = [c for c in res.checks if c.passed is not None]
        rows.append({"#": i, "stage": i18n.t(res.title or res.stage, run.lang),
                     "status": res.status, "seconds": fmt(float(res.seconds)),
                     "wall seconds": fmt(wall.get(res.stage)),
                     "checks passed": f"{sum(c.passed for c in judged)}/{len(judged)}",
                     "note": _note(res)})
    return pd.DataFrame(rows)


def _note(res: StageResult) -> str:
    if res.error:
        cell = res.error.get("cell")
        return f"{res.error.get('type')}" + (f" in cell {cell}" if cell is not None else "")
    return str(res.metrics.get("skipped_reason", ""))


def params_table(run: Run) -> pd.DataFrame:
    cfg = dict(run.config)
    git = run.manifest.get("git", {})
    cfg["run_id"] = run.manifest.get("run_id")
    cfg["started"] = run.manifest.get("started")
    cfg["commit"] = f"{git.get('commit', 'unknown')}" + (" (dirty)" if git.get("dirty") else "")
    cfg["total seconds"] = run.manifest.get("seconds")
    return pd.DataFrame({"parameter": list(cfg), "value": [fmt(v) for v in cfg.values()]})


def styled(df: pd.DataFrame, first_page: bool = False) -> Any:
    """A summary table with its verdicts coloured through the report's CSS classes; a
    first-page table keeps its short columns (area, verdict) on one line in print."""
    out = verdict_style(table(df, DIGITS), df)
    return out.set_table_attributes('class="report-first"') if first_page else out
