"""The run folders a comparison reads: each checked whole (a folder made by `make report` that
finished and holds results), labelled A, B, C ... in the order given, and held to one model
with the same weights and inputs."""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from helpers.errors import ConfigError
from helpers.records import StageResult, load_run, metric_at, read_json
from helpers.saved import SavedRun
from helpers.saved import open_run as open_saved

RERUN = ("run it again (`make report` with the parameters in its run.json), or give another "
         "finished run; `make clean-interrupted` removes unfinished run folders")


@dataclass(frozen=True)
class RunFolder:
    """One finished run: its letter, folder, manifest (run.json) and stage results."""

    label: str
    dir: Path
    manifest: dict[str, Any]
    results: dict[str, StageResult]

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.dir.name)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    def metric(self, stage: str, path: str) -> Any:
        """A value of results/<stage>.json's metrics by its '/'-separated path; None if absent."""
        return metric_at(self.results, stage, path)

    @property
    def device(self) -> str:
        """The device the target ran on (the environment stage's choice, else DEVICE)."""
        return str(self.metric("environment", "device/selected") or self.config.get("device", "-"))

    @property
    def backend(self) -> str:
        return str(self.metric("environment", "device/backend") or self.device.split(":")[0])

    @property
    def dtype(self) -> str:
        return str(self.metric("environment", "device/dtype") or self.config.get("dtype", "-"))

    @cached_property
    def _saved(self) -> tuple[SavedRun | None, str]:
        try:
            return open_saved(self.dir), ""
        except ConfigError as exc:
            return None, exc.message

    @property
    def saved(self) -> SavedRun | None:
        """Its saved outputs (stages 4 and 6), checked whole; None when it has none."""
        return self._saved[0]

    @property
    def saved_why(self) -> str:
        """Why the run has no saved outputs ('' when it has them)."""
        return self._saved[1]

    @property
    def side(self) -> str:
        """'A: npu:0 bfloat16': the letter and the target, as the tables name a run."""
        return f"{self.label}: {self.device} {self.dtype}"


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "run.json"
    if not folder.is_dir():
        raise ConfigError(f"run folder {folder} does not exist",
                          "give run folders made by `make report`, e.g. A=report/<run-id> "
                          "(ls report/ lists them; report/latest is the newest)")
    if not path.is_file():
        raise ConfigError(f"{folder} is not a run folder: it holds no run.json",
                          "give a folder made by `make report` (report/<run-id>)")
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}): the run was cut off while writing it",
                          RERUN) from exc
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path} is not a run manifest (a JSON object)", RERUN)
    return manifest


def _unfinished(folder: Path, manifest: dict[str, Any]) -> str:
    """Why a run folder is half-written ('' when it is whole)."""
    status = manifest.get("status")
    if status == "interrupted":
        return f"run folder {folder} was interrupted (run.json status \"interrupted\")"
    if status == "running":
        return (f"run folder {folder} did not finish (run.json status \"running\", process "
                f"{manifest.get('pid')} on {manifest.get('host')}): it is still running or "
                "was killed")
    if status != "finished":
        return f"run folder {folder} has no finished status in run.json (status {status!r})"
    results = folder / "results"
    if not results.is_dir() or not any(results.glob("*.json")):
        return f"run folder {folder} holds no results (results/*.json)"
    missing = [s["name"] for s in manifest.get("stages", [])
               if not (results / f"{s['name']}.json").is_file()]
    if missing:
        return f"run folder {folder} lacks the results of {', '.join(missing)}"
    return ""


def open_run(folder: str | Path, label: str = "A") -> RunFolder:
    """A finished run folder, or a ConfigError naming the folder, what is missing and the fix."""
    path = Path(folder).expanduser()
    manifest = _manifest(path)
    why = _unfinished(path, manifest)
    if why:
        raise ConfigError(why, RERUN)
    try:
        _, results = load_run(path)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"run folder {path}: a results file cannot be read ({exc})",
                          RERUN) from exc
    return RunFolder(label, path.resolve(), manifest, results)


def open_runs(folders: list[str | Path]) -> list[RunFolder]:
    """Two or more finished runs of one model, labelled A, B, C ... in the order given."""
    if len(folders) < 2:
        raise ConfigError(f"a comparison needs two or more run folders, got {len(folders)}",
                          "make compare A=report/<run-a> B=report/<run-b> (C=... or "
                          "RUNS=\"a b c\" for a trend)")
    if len(folders) > len(string.ascii_uppercase):
        raise ConfigError(f"{len(folders)} runs given; at most 26 are compared at once",
                          "compare fewer runs")
    runs = [open_run(f, string.ascii_uppercase[i]) for i, f in enumerate(folders)]
    same = {}
    for run in runs:
        if run.dir in same:
            raise ConfigError(f"run folder {run.dir} is given twice ({same[run.dir]} and "
                              f"{run.label})", "give each run once")
        same[run.dir] = run.label
    return runs
