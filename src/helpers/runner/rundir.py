"""Run folders: where a run's files go, the run manifest, report/latest, and the git state
of the project that produced them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers import models
from helpers.config import RunConfig
from helpers.errors import ConfigError
from helpers.records import read_json, write_json

SUMMARY_NOTEBOOK = "summary.ipynb"


def check_out(out: str | Path) -> Path:
    """OUT as an absolute folder this process can write, created if missing; a ConfigError
    naming the path and the fix otherwise (before any run folder exists)."""
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"OUT={out} is a file ({path}), not a folder",
                          "point OUT at a folder (it is created if missing), e.g. OUT=report")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise ConfigError(f"OUT={out}: cannot write to {path} ({exc.strerror or exc})",
                          "choose a folder you can write, e.g. OUT=/tmp/report") from exc
    return path


def new_run_dir(cfg: RunConfig) -> Path:
    """A new, empty run folder under OUT: <time>-<model>-<profile>[-n]. Made with an atomic
    mkdir, so two runs started in the same second into one OUT never share a folder."""
    out = check_out(cfg.out)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{models.label(cfg.model)}-{cfg.profile}"
    run_dir, n = out / base, 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            n += 1
            run_dir = out / f"{base}-{n}"
    for sub in ("notebooks", "results", "figures"):
        (run_dir / sub).mkdir()
    return run_dir


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


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One process at a time moves <out>/latest and the figures folder (two runs into one OUT
    finish in either order; the one that finishes last is the one they show)."""
    with open(out / ".latest.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def finish(run_dir: Path, manifest: dict[str, Any], figures_dir: Path | None,
           take_over: bool) -> None:
    """Write the finished manifest; with take_over, also make this run the one <out>/latest
    and the project's figures/ show. Under one lock, so `ended` orders the runs as latest
    does: the run that finished last is the one shown."""
    with _locked(run_dir.parent):
        manifest["status"] = "finished"
        manifest["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["ended_unix"] = time.time()  # orders runs that end in the same second
        write_json(run_dir / "run.json", manifest)
        if not take_over:
            return
        point_latest(run_dir)
        if figures_dir is not None:
            copy_figures(run_dir / "figures", figures_dir)


# ---- runs that did not finish -----------------------------------------------------------

INTERRUPTED = "-interrupted"


def mark_interrupted(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Say in run.json and in the folder's name that this run was interrupted."""
    manifest["status"] = "interrupted"
    manifest["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(run_dir / "run.json", manifest)
    target = run_dir.with_name(run_dir.name + INTERRUPTED)
    try:
        run_dir.rename(target)
    except OSError:
        return run_dir
    return target


def unfinished(out: str | Path) -> list[Path]:
    """Run folders under OUT that did not finish: marked interrupted, or still "running" with
    no live process behind them (killed); a run in progress is never listed."""
    found = []
    for run_json in sorted(Path(out).glob("*/run.json")):
        try:
            manifest = read_json(run_json)
        except (OSError, ValueError):
            continue
        status = manifest.get("status")
        alive = status == "running" and manifest.get("host") == socket.gethostname() \
            and _alive(manifest.get("pid"))
        if status == "interrupted" or (status == "running" and not alive):
            found.append(run_json.parent)
    return found


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune(out: str | Path) -> list[Path]:
    """Remove the run folders that did not finish (see unfinished); the ones removed."""
    gone = unfinished(out)
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    return gone
