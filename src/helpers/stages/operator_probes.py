"""Stage 3, operator probes: does each operator the model needs run on the
device, and does it compute what the CPU computes?

Two sources of operators, one runner:
  catalog  ~60 small probes (helpers.probes.catalog) of what audio models need and what is
           known to break, in float32 and, where it applies, bfloat16 / float16;
  model    every distinct aten call signature of the selected recipe's components, recorded
           under a TorchDispatchMode and replayed (helpers.probes.trace).
Each runs in a child process (helpers.probes.isolate) on the device, on the CPU in the same
dtype, and in float64 on the CPU (the golden); helpers.probes.verdict turns the three results
into ok | mismatch | fallback | unsupported | crashed | timeout | skipped.

    run = operator_probes.run(cfg)   # catalog + trace + replay, one worker process
    operator_probes.frame(run.catalog); operator_probes.heatmap(run.model, "...")
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from helpers.config import RunConfig
from helpers.device.fallbacks import hiding_settings
from helpers.knobs import setting
from helpers.probes import catalog, isolate, report
from helpers.probes.catalog import Probe
from helpers.probes.isolate import Outcome, Worker, WorkerStartError
from helpers.probes.report import (
    COLUMNS,
    CSV_COLUMNS,
    coverage,
    coverage_counts,
    frame,
    heatmap,
    heatmap_rows,
    known_issues,
    problems,
    rules_frame,
    status_counts,
    write_csv,
)
from helpers.probes.report import checks as _checks
from helpers.probes.verdict import RULES, STATUSES, Verdict
from helpers.records import Check
from helpers.stages.kit import Target

__all__ = [
    "COLUMNS", "CSV_COLUMNS", "RULES", "STATUSES", "Probe", "ProbeRun", "Worker",
    "WorkerStartError", "catalog", "isolate", "report", "coverage", "coverage_counts", "frame", "heatmap",
    "heatmap_rows", "known_issues", "problems", "rules_frame", "run", "run_catalog", "run_model",
    "status_counts", "summary", "write_csv",
]


@dataclass
class ProbeRun:
    """Everything the stage reports: rows, trace summary, settings and wall times."""

    device: dict[str, Any]
    dtype: str  # the model's dtype (the catalog runs its own dtypes)
    catalog: list[dict[str, Any]]
    model: list[dict[str, Any]]
    trace: dict[str, Any] | None
    timings: dict[str, float]
    worker: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [*self.catalog, *self.model]

    def checks(self) -> list[Any]:
        out = _checks(self.catalog, self.model, self.trace)
        hidden = hiding_settings()
        if hidden:
            out.append(Check("fallback list may be incomplete", ", ".join(hidden), "none set",
                             None, "torch_npu prints fallback warnings only when allowed",
                             "these settings can keep torch_npu's fallback warnings from being "
                             "printed, so operators that ran on the CPU may be missing above"))
        return out

    def metrics(self) -> dict[str, Any]:
        """Plain JSON values for the stage results."""
        out = {
            "device": self.device, "model_dtype": self.dtype, "settings": self.settings,
            "compared": comparison(self.device.get("backend", "")),
            "catalog_probes": len({r["probe"] for r in self.catalog}),
            "catalog_rows": len(self.catalog), "catalog_status": status_counts(self.catalog),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "timing_protocol": "host wall clock (time.perf_counter) around each phase in the "
                               "parent; includes worker start, pickling and device syncs",
            "worker": self.worker, "rules": RULES,
        }
        if self.trace is not None:
            out["trace"] = self.trace
            out["model_status"] = status_counts(self.model)
            out["coverage"] = coverage_counts(self.model)
        return out


def comparison(backend: str) -> str:
    """What was compared with what, in one paragraph."""
    if backend == "cpu":
        return ("The device is the CPU on this machine: the 'device' result and the CPU "
                "reference come from the same kernels, so every error ratio is 1 and every "
                "comparable row is ok by construction. The metric columns (cosine, max abs, "
                "max/mean relative error) show each dtype's own error against the float64 "
                "golden; run with DEVICE=cuda or npu to compare an accelerator with the CPU.")
    return (f"Device: {backend} in the probe's dtype. Reference: the CPU in the same dtype on the "
            "same inputs. Golden: the CPU in float64 on the same inputs upcast. The metric "
            "columns compare the device with the golden; error_ratio is the device's RMSE "
            "against the golden over the CPU's (msprobe benchmark standard).")


def _failure(outcome: Outcome) -> Verdict:
    if outcome.status in ("crashed", "timeout"):
        return Verdict(outcome.status, "run", message=outcome.message)
    return Verdict("unsupported", "run", message="the probe harness raised: " + outcome.message)


def _finish(worker: Worker, row: dict[str, Any]) -> dict[str, Any]:
    if row.pop("_restart", False):  # the device context is no longer trustworthy
        worker.stop()
    return row


def run_catalog(worker: Worker, probes: list[Probe], dtypes: list[str] | None = None,
                seed: int = 0, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """One row per probe and dtype (dtypes: a filter; None = each probe's own list)."""
    from helpers.probes.execute import probe_row, run_probe

    rows = []
    for p in probes:
        for dt in p.dtypes:
            if dtypes is not None and dt not in dtypes:
                continue
            out = worker.call(run_probe, (p, dt, seed), timeout_s)
            if out.status == "ok":
                rows.append(_finish(worker, out.value))
            else:
                rows.append({**probe_row(p, dt, _failure(out)), "seconds": round(out.seconds, 3)})
    return rows


def run_model(worker: Worker, cfg: RunConfig, dtype: str, seed: int = 0, timeout_s: float = 30.0,
              trace_timeout_s: float = 600.0, max_numel: int = 2**27,
              components: list[str] | None = None,
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Trace the recipe's components once in the worker, then replay each signature."""
    from helpers.probes import trace

    out = worker.call(trace.trace_model, (cfg.to_params(), dtype, components), trace_timeout_s)
    if out.status != "ok":
        return [], {"model": cfg.model, "error": f"{out.status}: {out.message}"}
    result = out.value
    rows = []
    for rec in result.records:
        o = worker.call(trace.replay, (rec, seed, max_numel), timeout_s)
        if o.status == "ok":
            rows.append(_finish(worker, o.value))
        else:
            rows.append({**trace.model_row(rec, _failure(o), time.perf_counter() - o.seconds)})
    return rows, _trace_summary(result)


def _trace_summary(r: Any) -> dict[str, Any]:
    return {
        "model": r.model, "profile": r.profile, "dtype": r.dtype, "device": r.device,
        "components": r.components, "aten_calls": r.calls, "errors": r.errors,
        "signatures": len(r.records), "operators": len(r.operators),
        "operator_names": r.operators, "load_s": round(r.load_s, 3),
        "trace_s": round(r.trace_s, 3), "fallbacks_in_forward": r.fallbacks,
        "recorder_errors": r.recorder_errors,
    }


@dataclass(frozen=True)
class Settings:
    """The stage's knobs, each with its help; notebook 03's parameters cell mirrors them."""

    probe_timeout: float = setting(30.0, "seconds one probe may run before it counts as hung")
    trace_model: bool = setting(True, "trace the model's own operators and replay each one")
    replay_max_numel: int = setting(2**27, "largest tensor (elements) a replay builds")
    probe_threads: int = setting(1, "torch CPU threads in the probe worker")
    probe_components: str = setting("", "components to trace, e.g. lm or lm,codec; empty: "
                                        "every component and the end-to-end module")


def run(tgt: Target, settings: Settings = Settings(), *, start_timeout_s: float = 300.0,
        trace_timeout_s: float = 600.0, probes: list[Probe] | None = None) -> ProbeRun:
    """The whole stage for a run's target: catalog on every dtype the backend runs, then the
    model's own operators in the run's dtype; one worker process, restarted after a crash."""
    timeout_s, trace, threads = settings.probe_timeout, settings.trace_model, settings.probe_threads
    max_numel, components = settings.replay_max_numel, settings.probe_components
    cfg, sel, dtype = tgt.cfg, tgt.selection, tgt.dtype_name
    dtypes = [*tgt.backend.supported_dtypes(), "int64", "int32"]
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with Worker(str(sel.device), start_timeout_s=start_timeout_s, threads=threads) as w:
        w.start()
        timings["worker_start"] = w.start_seconds[0]
        t0 = time.perf_counter()
        cat = run_catalog(w, probes if probes is not None else catalog.probes(), dtypes, cfg.seed,
                          timeout_s)
        timings["catalog"] = time.perf_counter() - t0
        model_rows, summary = [], None
        if trace:
            t0 = time.perf_counter()
            model_rows, summary = run_model(w, cfg, dtype, cfg.seed, timeout_s, trace_timeout_s,
                                            max_numel, _names(components))
            timings["model"] = time.perf_counter() - t0
        worker = {**w.info, "starts": w.starts, "forked_by_server": w.forked,
                  "start_seconds": [round(s, 3) for s in w.start_seconds]}
    timings["total"] = time.perf_counter() - t_all
    settings = {"timeout_s": timeout_s, "threads": threads, "max_numel": max_numel,
                "seed": cfg.seed, "trace": trace, "components": _names(components) or "all",
                "dtypes": dtypes}
    return ProbeRun(sel.as_dict(), dtype, cat, model_rows, summary, timings, worker, settings)


def _names(value: str | list[str]) -> list[str] | None:
    names = value.replace(" ", ",").split(",") if isinstance(value, str) else list(value)
    return [n for n in names if n] or None


def as_dict(run: ProbeRun) -> dict[str, Any]:
    return asdict(run)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none"


def summary(run: ProbeRun) -> str:
    """Markdown: what ran where, how many operators, their statuses, and how long it took."""
    m = run.metrics()
    out = [f"**{m['catalog_probes']} catalog probes** ({m['catalog_rows']} probe x dtype rows) "
           f"on `{run.device['device']}`: {_counts_text(m['catalog_status'])}."]
    t = run.trace
    if t is not None and t.get("error"):
        out.append(f"**Model `{t['model']}`: the traced forward did not finish** ({t['error']}).")
    elif t is not None:
        calls = sum(t["aten_calls"].values())
        out.append(
            f"**Model `{t['model']}`** ({t['profile']} profile, {t['dtype']} on {t['device']}): "
            f"{calls} aten calls in one forward of {', '.join(t['components'])}; "
            f"**{t['signatures']} distinct signatures of {t['operators']} operators** replayed: "
            f"{_counts_text(m['model_status'])}.")
    tm = m["timings_s"]
    parts = [f"worker start {tm['worker_start']:.1f} s", f"catalog {tm['catalog']:.1f} s"]
    if "model" in tm:
        parts.append(f"model trace + replay {tm['model']:.1f} s")
    out.append(f"Wall time {tm['total']:.1f} s ({', '.join(parts)}); "
               f"{run.worker['starts']} worker process start(s), torch on "
               f"{run.worker.get('threads', '?')} CPU thread(s) in the worker.")
    out.append(m["compared"])
    hidden = hiding_settings()
    if hidden:
        out.append(f"**The fallback list may be incomplete**: {', '.join(hidden)} can keep "
                   "torch_npu's fallback warnings from being printed.")
    return "\n\n".join(out)
