"""Run folders: where a run's files go, the run manifest, report/latest, and the git state
of the project that produced them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import models, paths
from helpers.config import RunConfig
from helpers.records import StageResult, read_json, read_results

SUMMARY_NOTEBOOK = "summary.ipynb"


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
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{models.label(cfg.model)}-{cfg.profile}"
    run_dir, n = out / base, 1
    while run_dir.exists():
        n += 1
        run_dir = out / f"{base}-{n}"
    for sub in ("notebooks", "results", "figures"):
        (run_dir / sub).mkdir(parents=True)
    return run_dir


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, StageResult]]:
    """The run manifest and its stage results, in the manifest's stage order."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "run.json")
    found = read_results(run_dir / "results")
    order = [s["name"] for s in manifest.get("stages", [])]
    ordered = {n: found[n] for n in order if n in found}
    ordered.update({n: r for n, r in found.items() if n not in ordered})
    return manifest, ordered



def point_latest(run_dir: Path) -> None:
    """Atomically re-point <out>/latest at this run (relative link, so the folder can move)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


def copy_figures(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.glob("*.png"):
        old.unlink()
    for fig in sorted(src.glob("*.png")):
        shutil.copy2(fig, dst / fig.name)
