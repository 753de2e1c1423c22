"""The stage runner: discover the numbered notebooks, execute them in order with papermill,
record every outcome (a stage that raises is data, not the end of the run), run the summary,
publish HTML and PDF, and point report/latest at the finished run."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import paths
from helpers.config import ConfigError, RunConfig
from helpers.records import StageResult, read_json, read_result, write_json, write_result

_STAGE_RE = re.compile(r"^(\d{2})_([a-z0-9_]+)\.ipynb$")
SUMMARY_NOTEBOOK = "summary.ipynb"


@dataclass(frozen=True)
class StageSpec:
    number: int
    name: str
    path: Path


@dataclass
class RunOutcome:
    run_dir: Path
    results: dict[str, StageResult]
    html: Path | None
    pdf: Path | None
    pdf_error: str | None
    exit_code: int


def discover_stages(notebooks_dir: Path = paths.NOTEBOOKS) -> list[StageSpec]:
    """Stage notebooks named NN_name.ipynb, in run order; other notebooks are ignored."""
    specs = []
    for p in sorted(notebooks_dir.glob("*.ipynb")):
        m = _STAGE_RE.match(p.name)
        if m:
            specs.append(StageSpec(int(m.group(1)), m.group(2), p))
    numbers = [s.number for s in specs]
    dupes = sorted({n for n in numbers if numbers.count(n) > 1})
    if dupes:
        raise ConfigError(f"two stage notebooks share the number(s) {dupes} in {notebooks_dir}")
    return specs


def select_stages(specs: list[StageSpec], wanted: tuple[str, ...]) -> list[StageSpec]:
    """Keep the stages named (by name or number) in `wanted`; empty keeps all."""
    if not wanted:
        return specs
    chosen = []
    for w in wanted:
        hit = [s for s in specs if w == s.name or (w.isdigit() and int(w) == s.number)]
        if not hit:
            valid = ", ".join(f"{s.number} {s.name}" for s in specs)
            raise ConfigError(f"unknown stage {w!r}; stages here: {valid}")
        chosen.extend(h for h in hit if h not in chosen)
    return sorted(chosen, key=lambda s: s.number)


def git_state(root: Path = paths.ROOT) -> dict[str, Any]:
    """The project's commit and whether the tree has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": "unknown", "dirty": None, "reason": str(exc).splitlines()[0][:200]}


def new_run_dir(cfg: RunConfig) -> Path:
    out = Path(cfg.out).resolve()
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.profile}"
    run_dir, n = out / base, 1
    while run_dir.exists():
        n += 1
        run_dir = out / f"{base}-{n}"
    for sub in ("notebooks", "results", "figures"):
        (run_dir / sub).mkdir(parents=True)
    return run_dir


def _notebook_params(path: Path, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Only the parameters this notebook declares (papermill would warn about the rest)."""
    import papermill

    declared = papermill.inspect_notebook(str(path))
    offered = {**cfg.to_params(), "run_dir": str(run_dir)}
    return {k: v for k, v in offered.items() if k in declared}


def _execute(path: Path, out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """Run one notebook; return None on success, else an error record (cell, type, message)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(
            str(path), str(out), parameters=params, kernel_name="python3",
            progress_bar=True, log_output=False,
            cwd=str(paths.NOTEBOOKS),
        )
    except PapermillExecutionError as exc:
        return {"type": exc.ename, "message": exc.evalue, "cell": exc.exec_count,
                "cell_index": exc.cell_index, "source": exc.source,
                "traceback": _strip_ansi("\n".join(exc.traceback))[-6000:]}
    except Exception as exc:  # kernel died, timeout, unreadable notebook: still a record
        return {"type": type(exc).__name__, "message": str(exc)[:2000], "cell": None,
                "traceback": traceback.format_exc()[-6000:]}
    return None


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_stage(spec: StageSpec, cfg: RunConfig, run_dir: Path) -> StageResult:
    """Execute one stage notebook and return its result; never raises for a stage failure."""
    out_nb = run_dir / "notebooks" / spec.path.name
    results = run_dir / "results" / f"{spec.name}.json"
    t0 = time.perf_counter()
    try:
        params = _notebook_params(spec.path, cfg, run_dir)
    except Exception as exc:
        params, error = None, {"type": type(exc).__name__, "message": str(exc), "cell": None}
    else:
        error = _execute(spec.path, out_nb, params)
    seconds = round(time.perf_counter() - t0, 3)
    if error is None and results.is_file():
        return read_result(results)
    if error is None:
        error = {"type": "MissingResults", "cell": None,
                 "message": f"the notebook finished but wrote no {results.name}: "
                            f"its last cell must call st.finish() with Stage({spec.name!r}, ...)"}
    title = spec.name.replace("_", " ").capitalize()
    result = StageResult(stage=spec.name, status="error", seconds=seconds, title=title,
                         error=error)
    write_result(run_dir / "results", result)
    return result


def _print(msg: str) -> None:
    print(msg, flush=True)


def run_pipeline(cfg: RunConfig, notebooks_dir: Path = paths.NOTEBOOKS,
                 figures_dir: Path | None = paths.FIGURES, pdf: bool = True) -> RunOutcome:
    """Run the selected stages, the summary, and publish; see module docstring."""
    from helpers import publish

    if cfg.model_dir:  # notebooks run in notebooks/: a relative MODEL_DIR means the caller's cwd
        cfg = dataclasses.replace(cfg, model_dir=str(Path(cfg.model_dir).expanduser().resolve()))
    specs = select_stages(discover_stages(notebooks_dir), cfg.stages)
    run_dir = new_run_dir(cfg)
    chromium = publish.find_chromium() if pdf else None
    manifest = {
        "run_id": run_dir.name, "config": cfg.to_params(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_state(),
        "stages": [{"number": s.number, "name": s.name, "notebook": s.path.name} for s in specs],
        "pdf_renderer": chromium or None,
        "pdf_missing_reason": None if chromium else publish.missing_chromium_reason(pdf),
    }
    write_json(run_dir / "run.json", manifest)
    _print(f"run {run_dir.name}: {len(specs)} stage(s) -> {run_dir}")

    results: dict[str, StageResult] = {}
    t_run = time.perf_counter()
    for i, spec in enumerate(specs, 1):
        _print(f"[{i}/{len(specs)}] {spec.name} ...")
        t_stage = time.perf_counter()
        res = run_stage(spec, cfg, run_dir)
        results[spec.name] = res
        manifest.setdefault("wall_seconds", {})[spec.name] = round(time.perf_counter() - t_stage, 3)
        write_json(run_dir / "run.json", manifest)
        passed = sum(c.passed is True for c in res.checks)
        judged = sum(c.passed is not None for c in res.checks)
        extra = f": {res.error['type']}: {res.error['message'][:200]}" if res.error else ""
        _print(f"[{i}/{len(specs)}] {spec.name}: {res.status} in {res.seconds:.1f} s "
               f"({manifest['wall_seconds'][spec.name]:.1f} s with kernel start) "
               f"({passed}/{judged} checks passed){extra}")

    summary_nb = notebooks_dir / SUMMARY_NOTEBOOK
    summary_error = None
    if summary_nb.is_file():
        _print("[summary] ...")
        summary_error = _execute(summary_nb, run_dir / "notebooks" / SUMMARY_NOTEBOOK,
                                 {"run_dir": str(run_dir)})
        if summary_error:
            _print(f"[summary] error: {summary_error['type']}: {summary_error['message'][:200]}")
    manifest["seconds"] = round(time.perf_counter() - t_run, 3)
    manifest["summary_error"] = summary_error
    write_json(run_dir / "run.json", manifest)

    html, pdf_path, pdf_error = publish.publish(run_dir, chromium=chromium if pdf else None)
    manifest["pdf_error"] = pdf_error
    write_json(run_dir / "run.json", manifest)
    _point_latest(run_dir)
    if figures_dir is not None:
        _copy_figures(run_dir / "figures", figures_dir)

    errors = [r.stage for r in results.values() if r.status == "error"]
    failed = [r.stage for r in results.values() if r.status == "failed"]
    code = 1 if errors or summary_error or (cfg.strict and failed) else 0
    _print(f"report: {html}")
    _print(f"pdf:    {pdf_path or 'not produced: ' + str(pdf_error or manifest['pdf_missing_reason'])}")
    if errors:
        _print(f"stages that raised: {', '.join(errors)} (shown at the top of the report)")
    if failed:
        _print(f"stages with failed checks: {', '.join(failed)}")
    return RunOutcome(run_dir, results, html, pdf_path, pdf_error, code)


def _point_latest(run_dir: Path) -> None:
    """Atomically re-point <out>/latest at this run (relative link, so the folder can move)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


def _copy_figures(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.glob("*.png"):
        old.unlink()
    for fig in sorted(src.glob("*.png")):
        shutil.copy2(fig, dst / fig.name)


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, StageResult]]:
    """The run manifest and its stage results, in the manifest's stage order."""
    from helpers.records import read_results

    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "run.json")
    found = read_results(run_dir / "results")
    order = [s["name"] for s in manifest.get("stages", [])]
    ordered = {n: found[n] for n in order if n in found}
    ordered.update({n: r for n, r in found.items() if n not in ordered})
    return manifest, ordered
