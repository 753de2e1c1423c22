"""The stage runner: discover the numbered notebooks, execute them in order with papermill,
record every outcome (a stage that raises is data, not the end of the run), run the summary,
publish HTML and PDF, and point report/latest at the finished run."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import paths
from helpers.config import RunConfig
from helpers.errors import ConfigError, DeviceError, ModelLoadError
from helpers.knobs import KnobSpec, declared_parameters, notebook_knobs
from helpers.profiling import Profile
from helpers.provenance import git_state
from helpers.records import StageResult, read_result, write_json, write_result
from helpers.runner import kernels, rundir
from helpers.runner.pdf import find_chromium, missing_chromium_reason
from helpers.runner.rundir import SUMMARY_NOTEBOOK

_STAGE_RE = re.compile(r"^(\d{2})_([a-z0-9_]+)\.ipynb$")


@dataclass(frozen=True)
class StageSpec:
    """One stage notebook: its number and name (from NN_name.ipynb), file, and origin."""

    number: int
    name: str
    path: Path
    origin: str = "built-in"  # "built-in", or "extra" for one from EXTRA_STAGES

    @property
    def folder(self) -> Path:
        """The notebook's own folder: its working directory while it runs."""
        return self.path.parent

    def knobs(self) -> dict[str, KnobSpec]:
        """The knobs its parameters cell declares after the run parameters (papermill)."""
        return notebook_knobs(self.path, RunConfig.field_names())


@dataclass
class RunOutcome:
    run_dir: Path
    results: dict[str, StageResult]
    html: Path | None
    pdf: Path | None
    pdf_error: str | None
    exit_code: int


def _scan(folder: Path, origin: str) -> list[StageSpec]:
    """Stage notebooks NN_name.ipynb in one folder, by number; a shared number or name fails."""
    specs = []
    for p in sorted(folder.glob("*.ipynb")):
        m = _STAGE_RE.match(p.name)
        if m:
            specs.append(StageSpec(int(m.group(1)), m.group(2), p, origin))
    for i, a in enumerate(specs):
        for b in specs[i + 1:]:
            if a.number == b.number or a.name == b.name:
                what = f"the number {a.number}" if a.number == b.number else f"the name {a.name}"
                raise ConfigError(f"two stage notebooks share {what} in {folder}: "
                                  f"{a.path.name} and {b.path.name}",
                                  fix="give each stage its own number and name")
    return specs


def discover_stages(notebooks_dir: Path = paths.NOTEBOOKS,
                    extra_stages: str | Path = "") -> list[StageSpec]:
    """Stage notebooks named NN_name.ipynb, in run order; other notebooks are ignored.

    `extra_stages` (EXTRA_STAGES) is a folder of more stage notebooks: they join the built-in
    ones in number order; a number or name that a built-in stage already has is an error.
    """
    specs = _scan(notebooks_dir, "built-in")
    if not extra_stages:
        return specs
    folder = Path(extra_stages).expanduser().resolve()
    if not folder.is_dir():
        shown = str(extra_stages) if str(extra_stages) == str(folder) else f"{extra_stages} ({folder})"
        raise ConfigError(
            f"EXTRA_STAGES={shown} is not a folder" if folder.exists()
            else f"EXTRA_STAGES folder {shown} does not exist",
            fix="give the folder that holds your stage notebooks NN_name.ipynb")
    extras = _scan(folder, "extra")
    if not extras:
        others = ", ".join(p.name for p in sorted(folder.glob("*.ipynb"))) or "no notebooks"
        raise ConfigError(
            f"EXTRA_STAGES folder {folder} holds no stage notebook named NN_name.ipynb "
            f"(found: {others})",
            fix="name each stage notebook with two digits, an underscore and a lowercase "
                "name, e.g. 07_my_check.ipynb")
    taken = {s.number for s in specs}
    free = [n for n in range(1, 100) if n not in taken][:5]
    for e in extras:
        for b in specs:
            if e.number == b.number or e.name == b.name:
                what = (f"number {e.number:02d}" if e.number == b.number else f"name {e.name}")
                raise ConfigError(
                    f"extra stage {e.path} has the {what} of the built-in stage {b.path}",
                    fix="rename the extra notebook to a number and name no built-in stage "
                        f"uses (free numbers: {', '.join(f'{n:02d}' for n in free)}, ...)")
    return sorted(specs + extras, key=lambda s: s.number)


def select_stages(specs: list[StageSpec], wanted: tuple[str, ...]) -> list[StageSpec]:
    """Keep the stages named (by name, any case, or number) in `wanted`; empty keeps all."""
    if not wanted:
        return specs
    chosen = []
    for w in wanted:
        low = w.strip().lower()
        hit = [s for s in specs if low == s.name or (low.isdigit() and int(low) == s.number)]
        if not hit:
            valid = ", ".join(f"{s.number} {s.name}" for s in specs)
            raise ConfigError(f"unknown stage {w!r}; stages here: {valid}")
        chosen.extend(h for h in hit if h not in chosen)
    return sorted(chosen, key=lambda s: s.number)


def _notebook_params(path: Path, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Only the parameters this notebook declares (papermill would warn about the rest): the
    run parameters, run_dir, and this stage's own knobs (cfg.knobs, resolved by run_pipeline)."""
    declared = declared_parameters(path)
    offered = {**cfg.to_params(), "run_dir": str(run_dir)}
    m = _STAGE_RE.match(path.name)
    if m:
        offered.update(cfg.knobs.stage(m.group(2)))
    return {k: v for k, v in offered.items() if k in declared}


def execute_notebook(path: Path, out: Path, params: dict[str, Any], cwd: Path,
                     km: kernels.KernelManager | None = None,
                     progress: _Progress | None = None) -> dict[str, Any] | None:
    """Run one notebook in a fresh kernel whose working directory is `cwd`: `km`, started for
    it (kernels.KernelPool), else one started here. The kernel is shut down afterwards
    (papermill leaves alone a kernel it did not start). Return None on success, else an error
    record (cell, type, message)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    own = None
    try:
        if km is None:
            own = kernels.KernelPool(warmup=())
            km = own.take(cwd)
        papermill.execute_notebook(
            str(path), str(out), parameters=params, kernel_name=kernels.KERNEL_NAME, km=km,
            progress_bar=False, log_output=False, **(progress.hooks() if progress else {}),
        )
    except PapermillExecutionError as exc:
        return {"type": exc.ename, "message": exc.evalue, "cell": exc.exec_count,
                "cell_index": exc.cell_index, "source": exc.source,
                "traceback": _strip_ansi("\n".join(exc.traceback))[-6000:]}
    except Exception as exc:  # kernel died, timeout, unreadable notebook: still a record
        return {"type": type(exc).__name__, "message": str(exc)[:2000], "cell": None,
                "traceback": traceback.format_exc()[-6000:]}
    except BaseException:  # interrupted: no graceful exit to wait for
        kernels.shutdown(km, now=True)
        raise
    finally:  # the kernel's exit overlaps what comes next; its pool's close() waits for it
        kernels.shutdown(km, wait=own is not None)  # a no-op when already shut down
        if own is not None:
            own.close()
    return None


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_stage(spec: StageSpec, cfg: RunConfig, run_dir: Path,
              km: kernels.KernelManager | None = None,
              progress: _Progress | None = None) -> StageResult:
    """Execute one stage notebook and return its result; never raises for a stage failure.
    `km`: a kernel started for it in its folder (shut down here in every case), else one is
    started."""
    out_nb = run_dir / "notebooks" / spec.path.name
    results = run_dir / "results" / f"{spec.name}.json"
    t0 = time.perf_counter()
    try:
        params = _notebook_params(spec.path, cfg, run_dir)
    except Exception as exc:
        kernels.shutdown(km)
        params, error = None, {"type": type(exc).__name__, "message": str(exc), "cell": None}
    except BaseException:
        kernels.shutdown(km, now=True)
        raise
    else:
        error = execute_notebook(spec.path, out_nb, params, spec.path.parent, km=km,
                                 progress=progress)
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


class _Progress:
    """The console line of one running notebook. On a terminal it is rewritten in place with
    the cell running (`[3/6] operator_probes: cell 7/16`, code cells counted as In [n] counts
    them) and then replaced by the end line; in a log only the start and end lines appear."""

    def __init__(self, head: str) -> None:
        self.head = head
        self.tty = sys.stdout.isatty()
        self.cells = 0
        self.cell = 0

    def start(self) -> None:
        if self.tty:
            self._show(f"{self.head} ...")
        else:
            _print(f"{self.head} ...")

    def end(self, line: str) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[K")
        _print(line)

    def hooks(self) -> dict[str, Any]:
        """nbclient's cell hooks, passed through papermill's engine keywords (terminal only)."""
        if not self.tty:
            return {}
        return {"on_notebook_start": self._on_notebook_start, "on_cell_start": self._on_cell}

    @staticmethod
    def _runs(cell: Any) -> bool:
        return (cell.cell_type == "code" and bool(cell.source.strip())
                and "skip-execution" not in cell.metadata.get("tags", []))

    def _on_notebook_start(self, notebook: Any = None, **_: Any) -> None:
        try:
            self.cells = sum(self._runs(c) for c in notebook.cells)
        except Exception:  # a display detail never stops a stage
            pass

    def _on_cell(self, cell: Any = None, **_: Any) -> None:
        try:
            if self._runs(cell):
                self.cell += 1
                self._show(f"{self.head}: cell {self.cell}/{self.cells}")
        except Exception:
            pass

    def _show(self, text: str) -> None:
        width = max(shutil.get_terminal_size().columns - 1, 20)
        sys.stdout.write(f"\r{text[:width]}\x1b[K")
        sys.stdout.flush()


def _take_kernel(pool: kernels.KernelPool, cwd: Path, name: str,
                 prof: Profile) -> kernels.KernelManager | None:
    """The pool's kernel for a notebook in `cwd`; None when it cannot start (the notebook's
    own attempt then records why). Its cost goes to the runner's profile: the wait here, and
    the start and warm-up imports the kernel paid (in the background when prestarted)."""
    with prof.part(f"{name}: wait for its kernel"):
        try:
            km = pool.take(cwd)
        except Exception:
            km = None
    start = getattr(km, "start_seconds", None)
    if start is not None:
        prof.add(f"{name}: kernel start (overlaps the stage before)", start)
    warm = getattr(km, "warmup_seconds", None)
    if warm is not None:
        prof.add(f"{name}: kernel warm-up imports (overlaps the stage before)", warm)
    return km


def run_pipeline(cfg: RunConfig, notebooks_dir: Path = paths.NOTEBOOKS,
                 figures_dir: Path | None = paths.FIGURES, pdf: bool = True) -> RunOutcome:
    """Run the selected stages, the summary, and publish; see module docstring.

    Everything is checked before the run folder is made: the config, the stages (with
    EXTRA_STAGES), STAGES, and every knob against its stage's notebook (cfg.knobs comes back
    resolved: canonical stage and knob names, typed values)."""
    # stages run in their own folder: a relative MODEL_DIR, recipe file or EXTRA_STAGES
    # means the caller's cwd
    cfg = cfg.absolute()
    stages = discover_stages(notebooks_dir, cfg.extra_stages)
    specs = select_stages(stages, cfg.stages)
    if cfg.knobs:
        cfg = dataclasses.replace(cfg, knobs=cfg.knobs.resolve(stages, specs, RunConfig.field_names()))
    summary_nb = notebooks_dir / SUMMARY_NOTEBOOK
    notebooks = [s.path for s in specs] + [summary_nb] * summary_nb.is_file()
    # The kernels' fork server and the first notebook's kernel start first: their imports
    # overlap the checks below (torch for the device) and this process's own.
    with _kernel_pool(notebooks) as pool:
        preflight(cfg)
        run_dir = rundir.new_run_dir(cfg)
        manifest: dict[str, Any] = {"run_id": run_dir.name, "status": "running"}
        try:  # from here an interrupt marks the folder, wherever it lands
            return _start(cfg, specs, run_dir, manifest, notebooks, pool, figures_dir, pdf)
        except KeyboardInterrupt:
            moved = rundir.mark_interrupted(run_dir, manifest)
            _print(f"\ninterrupted: {moved} is marked so (run.json status \"interrupted\"); "
                   "report/latest and figures/ still show the last finished run; "
                   "`make clean-interrupted` removes such folders")
            raise


def _kernel_pool(notebooks: list[Path]) -> kernels.KernelPool:
    """The run's kernels: a fork server that imports what the notebooks need (the first one's
    needs first), and the first notebook's kernel, forked once those are made. The server is
    the process's kept one (forkserver.kept): a later run in this process forks from it."""
    early, rest = kernels.preload_for(notebooks)
    pool = kernels.KernelPool(preload=rest, early=early, keep_server=True)
    if notebooks:
        pool.prestart(notebooks[0].parent, warmup=(), early=True)
    return pool


def _start(cfg: RunConfig, specs: list[StageSpec], run_dir: Path, manifest: dict[str, Any],
           notebooks: list[Path], pool: kernels.KernelPool, figures_dir: Path | None,
           pdf: bool) -> RunOutcome:
    """Write the run manifest (into `manifest`, kept by the caller) and run."""
    chromium = find_chromium() if pdf else None
    manifest.update({
        "run_id": run_dir.name, "config": cfg.to_params(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_state(),
        "stages": [{"number": s.number, "name": s.name, "notebook": s.path.name,
                    "origin": s.origin, "path": str(s.path)} for s in specs],
        "knobs": cfg.knobs.to_params(),
        "pdf_renderer": chromium or None,
        "pdf_missing_reason": None if chromium else missing_chromium_reason(pdf),
        "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
    })
    write_json(run_dir / "run.json", manifest)
    _print(f"run {run_dir.name}: {len(specs)} stage(s) -> {run_dir}")
    return _run(cfg, specs, run_dir, manifest, notebooks, pool, figures_dir, chromium, pdf)


def preflight(cfg: RunConfig) -> None:
    """What must hold before a run folder is made, each with one message (exit 2): the device
    and dtype exist here, OUT is a writable folder, and MODEL_DIR is of the recipe's
    architecture; AUDIO_DIR is a folder; torch and transformers are not older than tested."""
    from helpers import compat, models
    from helpers import device as devices

    compat.check_stack()
    try:
        sel = devices.select(cfg.device)
        devices.resolve_dtype(sel, cfg.dtype)
    except DeviceError as exc:
        raise ConfigError(str(exc)) from exc
    rundir.check_out(cfg.out)
    if cfg.audio_dir and not Path(cfg.audio_dir).expanduser().is_dir():
        raise ConfigError(f"AUDIO_DIR={cfg.audio_dir} is not a folder",
                          "give a folder of .wav / .flac clips (with <name>.txt or "
                          "transcripts.tsv transcripts), or leave AUDIO_DIR empty for the "
                          "shipped fixtures")
    if cfg.profile == "real":
        root = Path(cfg.model_dir)
        if not root.is_dir():
            raise ConfigError(f"MODEL_DIR={cfg.model_dir} is not a folder",
                              "point MODEL_DIR at the model's release directory")
        try:
            models.get(cfg.model).check_model_type(root)
        except ModelLoadError as exc:
            raise ConfigError(str(exc)) from exc


def _run(cfg: RunConfig, specs: list[StageSpec], run_dir: Path, manifest: dict[str, Any],
         notebooks: list[Path], pool: kernels.KernelPool, figures_dir: Path | None,
         chromium: str | None, pdf: bool) -> RunOutcome:
    """The stages, the summary (the last of `notebooks` when there is one), publishing, and the
    exit code (see exit_code). `pool` holds the first notebook's kernel, prestarted."""
    from helpers.runner import publish

    results: dict[str, StageResult] = {}
    prof = Profile()  # the runner's own parts: kernel waits and starts, publishing
    t_run = time.perf_counter()
    summary_error = None
    # Each notebook runs in a fresh kernel, started in its own folder; the next notebook's
    # kernel starts (and imports the heavy modules) in the background while this one runs.
    for i, spec in enumerate(specs, 1):
        progress = _Progress(f"[{i}/{len(specs)}] {spec.name}")
        progress.start()
        t_stage = time.perf_counter()
        km = _take_kernel(pool, spec.path.parent, spec.name, prof)
        if i < len(notebooks):
            pool.prestart(notebooks[i].parent, kernels.warmup_for(notebooks[i]))
        res = run_stage(spec, cfg, run_dir, km=km, progress=progress)
        results[spec.name] = res
        wall = round(time.perf_counter() - t_stage, 3)
        manifest.setdefault("wall_seconds", {})[spec.name] = wall
        write_json(run_dir / "run.json", manifest)
        passed = sum(c.passed is True for c in res.checks)
        judged = sum(c.passed is not None for c in res.checks)
        extra = f": {res.error['type']}: {res.error['message'][:200]}" if res.error else ""
        progress.end(f"[{i}/{len(specs)}] {spec.name}: {res.status} in {res.seconds:.1f} s "
                     f"({wall:.1f} s with kernel start) "
                     f"({passed}/{judged} checks passed){extra}")

    if len(notebooks) > len(specs):
        summary_nb = notebooks[-1]
        progress = _Progress("[summary]")
        progress.start()
        t_summary = time.perf_counter()
        summary_error = execute_notebook(summary_nb, run_dir / "notebooks" / SUMMARY_NOTEBOOK,
                                         {"run_dir": str(run_dir)}, summary_nb.parent,
                                         km=_take_kernel(pool, summary_nb.parent, "summary", prof),
                                         progress=progress)
        progress.end(f"[summary] error: {summary_error['type']}: "
                     f"{summary_error['message'][:200]}" if summary_error else
                     f"[summary] done in {time.perf_counter() - t_summary:.1f} s")
    # the kernels' exits and the fork server's end overlap the publishing (run_pipeline
    # closes the pool: it waits for them)
    manifest["seconds"] = round(time.perf_counter() - t_run, 3)
    manifest["summary_error"] = summary_error
    write_json(run_dir / "run.json", manifest)

    html, pdf_path, pdf_error = publish.publish(run_dir, chromium=chromium if pdf else None,
                                                profile=prof)
    manifest["pdf_error"] = pdf_error
    manifest["profile"] = prof.to_list()
    errors = [r.stage for r in results.values() if r.status == "error"]
    failed = [r.stage for r in results.values() if r.status == "failed"]
    code = exit_code(errors, failed, summary_error, cfg.strict)
    manifest["exit_code"] = code
    produced = any(r.status != "error" for r in results.values())  # else latest stays put
    rundir.finish(run_dir, manifest, figures_dir, take_over=produced)
    _print(f"report: {html}")
    _print(f"pdf:    {pdf_path or 'not produced: ' + str(pdf_error or manifest['pdf_missing_reason'])}")
    if errors:
        _print(f"stages that raised: {', '.join(errors)} (shown at the top of the report)")
    if failed:
        _print(f"stages with failed checks: {', '.join(failed)}")
    if not produced:
        _print("every stage raised: report/latest and figures/ still show the last run that "
               "produced results")
    return RunOutcome(run_dir, results, html, pdf_path, pdf_error, code)


def exit_code(errors: list[str], failed: list[str], summary_error: Any, strict: bool) -> int:
    """As test runners do: 0 every check passed; 1 the report is out and some checks failed
    (0 with STRICT=0); 2 a stage or the summary raised (invalid input exits 2 before this)."""
    if errors or summary_error:
        return 2
    return 1 if failed and strict else 0
