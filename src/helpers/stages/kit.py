"""What every stage is made of: the recorder (Stage), its parts (Section), the failure row,
the sides that run a model (Side), and the target resolved once (target). Tables are
helpers.tables'.

A stage notebook builds its config, calls `target(cfg)` once (device, dtype, backend; the
model loads through it), computes Sections with its stage module, records them on a Stage and
calls `finish()`, which writes results/<name>.json, the only thing later stages and the
summary read.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from helpers import compat, models, paths
from helpers import device as devices
from helpers.config import RunConfig
from helpers.errors import MemoryBudgetError
from helpers.models import footprint, placement
from helpers.profiling import Profile, cpu_seconds
from helpers.records import (
    Check,
    StageResult,
    read_json,
    status_from_checks,
    write_json,
    write_result,
)

if TYPE_CHECKING:
    from helpers.models.base import LoadedModel
    from helpers.models.footprint import Estimate

SAVED_DPI = 120  # figures/*.png, for reuse in write-ups
LAB_ENV = "HELPERS_LAB_DIR"  # where notebooks run on their own write (default report/lab)
CONTRACT = "stage contract: failures are data"


# ---- sections and failures ------------------------------------------------------------------


def failure_text(exc: BaseException) -> str:
    """'Type: message at file.py:line' for an exception a stage turns into a row."""
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {first}{where}"


def failure_row(what: str, exc: BaseException) -> dict[str, Any]:
    """A failed measurement as a table row: what failed and why (the stage goes on)."""
    return {"measurement": what, "status": "failed", "error": failure_text(exc)}


@dataclass
class Section:
    """One part of a stage: a table for the reader, checks and metrics for the results file.

    notes are sentences shown with the table; data carries values later sections reuse and
    is never written to the results.
    """

    name: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def note(self) -> str:
        return " ".join(self.notes)

    @property
    def failed(self) -> bool:
        return "error" in self.metrics

    @classmethod
    def failure(cls, name: str, why: str, expected: str = "no exception") -> Section:
        """A section that could not be computed: one failed check that says why."""
        check = Check(f"{name}: computed", "failed", expected, False, CONTRACT, why)
        row = {"measurement": name, "status": "failed", "error": why}
        return cls(name, pd.DataFrame([row]), [check], {"error": why})


# ---- the recorder ---------------------------------------------------------------------------


def lab_dir() -> Path:
    """Where a notebook run on its own (JupyterLab, no run_dir) writes: report/lab."""
    return Path(os.environ.get(LAB_ENV) or paths.REPORT / "lab")


def run_dir_or_lab(run_dir: str) -> Path:
    """The run folder given by the runner, or the lab folder when a notebook runs on its own."""
    return Path(run_dir) if run_dir else lab_dir()


_ACTIVE: list[Stage] = []  # the stage this process records for (the latest one made)


@contextmanager
def timed(part: str) -> Iterator[None]:
    """Wall and CPU seconds of a block, recorded in the profile of the stage this process
    runs (results/<stage>.json "profile"); outside a stage it only runs the block."""
    if not _ACTIVE:
        yield
        return
    with _ACTIVE[-1].profile.part(part):
        yield


class Stage:
    """Collects one stage's results; `finish()` writes results/<name>.json.

    >>> st = Stage("environment", run_dir, "Environment")
    >>> st.metric("python", "3.11.7"); st.record(section); st.finish()
    """

    def __init__(self, name: str, run_dir: str = "", title: str = "",
                 cfg: RunConfig | None = None) -> None:
        self.name = name
        self.title = title or name.replace("_", " ").capitalize()
        self.dir = run_dir_or_lab(run_dir)
        self.lab = not run_dir
        self.cfg = cfg
        self.results_dir = self.dir / "results"
        self.figures_dir = self.dir / "figures"
        self.metrics: dict[str, Any] = {}
        self.checks: list[Check] = []
        self.figures: list[str] = []
        self._skipped: str | None = None
        self.profile = Profile()  # its sections' own cost, filled by timed() and attempt()
        self._t0 = time.perf_counter()
        self._cpu0 = cpu_seconds()
        _ACTIVE[:] = [self]
        if cfg is not None and cfg.report_lang != "en":
            from helpers import plots

            plots.set_language(cfg.report_lang)  # figure text in the report's language

    def metric(self, key: str, value: Any) -> Any:
        self.metrics[key] = value
        return value

    def record(self, section: Section, flat: bool = False) -> Section:
        """A section's checks, and its metrics (with its notes) under its name; flat puts the
        metrics at the top level of the results (a stage that is one section). The one way a
        stage records checks: `st.record(Section("checks", checks=[...]))` for a bare list."""
        self.checks.extend(section.checks)
        if flat:
            self.metrics.update(section.metrics)
        elif section.metrics or section.notes:
            self.metric(section.name, {**section.metrics, **({"notes": section.notes}
                                                            if section.notes else {})})
        return section

    def attempt(self, name: str, fn: Callable[..., Section], *args: Any) -> Section:
        """Compute one section and record it; an exception becomes its failed row and check."""
        try:
            with self.profile.part(name):
                section = fn(*args)
        except Exception as exc:
            section = Section.failure(name, failure_text(exc))
        return self.record(section)

    def figure(self, name: str, draw: Callable[..., tuple[Any, Any]], *sections: Section) -> Any:
        """Draw and save a figure from sections; None (nothing saved) if one of them failed."""
        if any(s.failed for s in sections):
            return None
        fig, _ = draw(*sections)
        self.save_figure(fig, name, show=True)
        return fig

    def save_figure(self, fig: Any, name: str, show: bool = False) -> Path:
        """Save a matplotlib figure as results' companion PNG. The notebook still shows it:
        drawn again by the inline backend, or with `show` that same PNG, displayed here (the
        figure is then closed: one render instead of two, which counts for a tall figure)."""
        from helpers import plots

        path = self._figure_path(name)
        plots.translate(fig)
        plots.save_png(fig, path, SAVED_DPI)
        if show:
            _show_png(fig, path)
        return path

    def save_drawn(self, name: str, draw: Callable[..., Any], *data: Any,
                   show: bool = False) -> Path:
        """save_figure(draw(*data), name, show), drawn once for equal data: the PNG is kept in
        the figure cache (helpers.players.cached_png), keyed by the data's content (tables,
        arrays, tensors, plain values; figure_key), the figure language and the drawing code
        (helpers.plots, and the file that defines `draw`), so a rerun whose numbers did not
        change shows the same figure without drawing it."""
        import inspect
        import io

        from helpers import players, plots

        def render() -> bytes:
            import matplotlib.pyplot as plt

            fig = draw(*data)
            plots.translate(fig)
            out = io.BytesIO()
            plots.save_png(fig, out, SAVED_DPI)
            plt.close(fig)
            return out.getvalue()

        try:
            what, arrays = figure_key(data)
        except TypeError:  # a value no key can hold (a table cell that cannot be hashed)
            png = render()  # drawn every time, never a figure of other data
        else:
            png = players.cached_png((name, draw.__module__, draw.__qualname__, SAVED_DPI,
                                      what), arrays, render,
                                     drawn_by=[inspect.getsourcefile(draw) or ""])
        path = self.save_png(png, name)
        if show:
            _display_png(png)
        return path

    def save_png(self, png: bytes, name: str) -> Path:
        """Save PNG bytes drawn already (as save_figure draws them) as a companion PNG."""
        path = self._figure_path(name)
        path.write_bytes(png)
        return path

    def _figure_path(self, name: str) -> Path:
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{self.name}-{name}.png"
        self.figures.append(path.name)
        return path

    def skip(self, reason: str) -> None:
        """Mark the stage skipped (not applicable here); finish() still writes the record."""
        self._skipped = reason
        self.metrics["skipped_reason"] = reason

    def cost(self) -> dict[str, Any]:
        """The stage's own cost so far: its timed parts, the CPU seconds since the recorder
        was made and those of the whole kernel process (the imports it made itself included)."""
        return {"parts": self.profile.to_list(),
                "cpu_s": round(cpu_seconds() - self._cpu0, 3),
                "process_cpu_s": round(cpu_seconds(), 3)}

    def finish(self) -> StageResult:
        status = "skipped" if self._skipped else status_from_checks(self.checks)
        result = StageResult(
            stage=self.name, status=status, seconds=round(time.perf_counter() - self._t0, 3),
            title=self.title, metrics=self.metrics, checks=self.checks, figures=self.figures,
            profile=self.cost(),
        )
        write_result(self.results_dir, result)
        if self.lab:
            _lab_manifest(self.dir, result, self.cfg)
        return result


def _show_png(fig: Any, path: Path) -> None:
    """Display the saved PNG at the size the inline backend would draw the figure (its dpi,
    not the file's), and close the figure; outside a kernel the figure is only closed."""
    import matplotlib.pyplot as plt

    dpi = fig.dpi
    plt.close(fig)
    _display_png(path.read_bytes(), dpi)


def _display_png(data: bytes, dpi: float | None = None) -> None:
    """Display PNG bytes saved at SAVED_DPI at the size the inline backend draws a figure of
    `dpi` (default: a new figure's); nothing outside a kernel."""
    import matplotlib as mpl
    from IPython import get_ipython
    from IPython.display import Image, display

    if get_ipython() is None:
        return
    dpi = dpi or mpl.rcParams["figure.dpi"]
    width = int.from_bytes(data[16:20], "big")  # the IHDR chunk's width, first in every PNG
    display(Image(data=data, format="png", width=round(width * dpi / SAVED_DPI)))


def figure_key(data: Any) -> tuple[Any, list[Any]]:
    """What a figure drawn from `data` is keyed by in the figure cache: a description of its
    plain values and structure, and the arrays whose contents it holds (tables hashed row by
    row, index and columns included; tensors by their bytes, dtype and shape). Anything else
    is refused: a key must never be a repr that could leave out what the figure shows."""
    import numpy as np

    arrays: list[Any] = []

    def walk(x: Any) -> Any:
        if isinstance(x, np.generic) and not isinstance(x, np.object_):  # np.float64 too
            return [str(x.dtype), x.item()]
        if x is None or isinstance(x, (str, bool, int, float)):
            return x
        if isinstance(x, (list, tuple)):
            return [type(x).__name__, *(walk(v) for v in x)]
        if isinstance(x, dict):
            return ["dict", *((walk(k), walk(v)) for k, v in x.items())]
        if isinstance(x, pd.DataFrame):
            arrays.append(pd.util.hash_pandas_object(x, index=True).to_numpy())
            return ["frame", [str(c) for c in x.columns], [str(t) for t in x.dtypes]]
        if isinstance(x, torch.Tensor):  # its bytes, exact in any dtype (bfloat16 included)
            arrays.append(x.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())
            return ["tensor", str(x.dtype), list(x.shape)]
        if isinstance(x, np.ndarray) and x.dtype != object:  # an object array's bytes are pointers
            arrays.append(x)
            return ["array"]
        raise TypeError(f"a figure cannot be keyed by a {type(x).__name__}: give its tables, "
                        "arrays or plain values")

    return walk(data), arrays


def _lab_manifest(folder: Path, result: StageResult, cfg: RunConfig | None) -> None:
    """Keep report/lab/run.json listing the stages run there, so the summary notebook run on
    its own summarizes them (the runner writes the manifest of a real run itself)."""
    path = folder / "run.json"
    try:
        manifest = read_json(path)
    except (OSError, ValueError):
        manifest = {"run_id": "lab", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "stages": [], "lab": True}
    if cfg is not None:
        manifest["config"] = cfg.to_params()
    names = [s["name"] for s in manifest.get("stages", [])]
    if result.stage not in names:
        manifest.setdefault("stages", []).append({"name": result.stage,
                                                  "notebook": f"{result.stage}.ipynb"})
    write_json(path, json.loads(json.dumps(manifest, default=str)))


# ---- who runs the model ---------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One configuration that runs the model: role, device, dtype (and placement)."""

    role: str  # "target" | "reference" | "golden" | "baseline" (the CPU in the target's dtype)
    device: torch.device
    dtype: torch.dtype
    device_map: str = ""

    @property
    def dtype_name(self) -> str:
        return devices.dtype_name(self.dtype)

    @property
    def label(self) -> str:
        spread = {"": "", OFFLOAD: " (disk offload)"}.get(self.device_map, " (device_map auto)")
        return f"{self.device} {self.dtype_name}{spread}"

    @cached_property
    def backend(self) -> devices.Backend:
        return devices.backend(devices.select(str(self.device)))

    def record(self) -> dict[str, str]:
        """The side as JSON values (helpers.outputs keeps it with a side's saved outputs)."""
        return {"role": self.role, "device": str(self.device), "dtype": self.dtype_name,
                "device_map": self.device_map, "label": self.label}

    @staticmethod
    def from_record(d: dict[str, str]) -> Side:
        """The side a record describes; a device this torch cannot name (an npu run read
        without torch_npu) becomes a SavedSide that keeps the label."""
        dtype = getattr(torch, d["dtype"])
        try:
            return Side(d["role"], torch.device(d["device"]), dtype, d["device_map"])
        except RuntimeError:
            return SavedSide(d["role"], torch.device("meta"), dtype, d["device_map"], d["label"])


@dataclass(frozen=True)
class SavedSide(Side):
    """A side read from saved outputs whose device this machine's torch cannot name."""

    saved_label: str = ""

    @property
    def label(self) -> str:
        return self.saved_label


CPU = torch.device("cpu")
OFFLOAD = placement.OFFLOAD  # a CPU side's device_map: weights past the free memory on disk


def reference_side(dtype: torch.dtype = torch.float32, role: str = "reference") -> Side:
    """The CPU side the target is held to (float32 unless asked otherwise)."""
    return Side(role, CPU, dtype)


@dataclass(frozen=True)
class Target:
    """DEVICE and DTYPE of a run, resolved once: the selection (and why), its backend, the dtype."""

    cfg: RunConfig
    selection: devices.Selection
    backend: devices.Backend
    dtype: torch.dtype

    @property
    def device(self) -> torch.device:
        return self.selection.device

    @property
    def reason(self) -> str:
        return self.selection.reason

    @property
    def dtype_name(self) -> str:
        return devices.dtype_name(self.dtype)

    @property
    def side(self) -> Side:
        return Side("target", self.device, self.dtype, self.cfg.device_map)

    @property
    def label(self) -> str:
        return self.side.label

    def load(self) -> LoadedModel:
        """The recipe's model on the target, in eval mode."""
        return load(self.cfg, self.side, self.backend)


def target(cfg: RunConfig) -> Target:
    """Select DEVICE, resolve DTYPE there and make the backend: the one place a stage does so.

    Raises DeviceError (saying what exists here) when the device or the dtype cannot be used.
    """
    sel = devices.select(cfg.device)
    return Target(cfg, sel, devices.backend(sel), devices.resolve_dtype(sel, cfg.dtype))


def load(cfg: RunConfig, side: Side, backend: devices.Backend | None = None) -> LoadedModel:
    """The recipe's model for one side, in eval mode: the target as configured, a CPU side
    whole on the CPU (or with disk offload). A side the free memory cannot hold is refused
    before anything is loaded (MemoryBudgetError with the figures and the ways out)."""
    admit(cfg, side, backend)
    args = {**cfg.recipe_args(), "device_map": side.device_map}  # a CPU side: whole on the CPU
    with timed(f"load {side.role} ({side.label})"):
        loaded = models.get(cfg.model).load(side.device, side.dtype, **args,
                                            backend=backend or side.backend)
    for module in loaded.components.values():
        module.eval()
    if cfg.fault and side.role == "target":
        from helpers import faults

        planted = faults.plant(cfg.fault, loaded)
        loaded.notes.append(f"FAULT planted on this side: {cfg.fault} ({planted.fault.magnitude})"
                            if planted else f"FAULT {cfg.fault}: this model has no "
                            f"{faults.get(cfg.fault).needs}, nothing planted")
    return loaded


# ---- will it fit? ---------------------------------------------------------------------------


def estimate(cfg: RunConfig, side: Side, backend: devices.Backend | None = None) -> Estimate:
    """What `side` needs on the host, its device (and the disk, offloaded) against what is free
    there now; nothing is loaded (helpers.models.footprint)."""
    from helpers.device import memory

    free = {"host": memory.host_free()}
    if side.device.type != "cpu" and not side.device_map:  # a spread map: accelerate plans it
        free["device"] = (backend or side.backend).free_memory()
    if side.device_map == OFFLOAD:
        free["disk"] = memory.disk_free(placement.offload_dir())
    return footprint.estimate(models.get(cfg.model), cfg.profile, side.role, str(side.device),
                              side.dtype_name, model_dir=cfg.model_dir, seed=cfg.seed,
                              offload=side.device_map == OFFLOAD, free=free)


def admit(cfg: RunConfig, side: Side, backend: devices.Backend | None = None) -> Estimate:
    """The side's estimate when it fits; MemoryBudgetError (figures, ways out) when it does not."""
    est = estimate(cfg, side, backend)
    if not est.fits:
        raise _refusal(cfg, side, est)
    return est


def _refusal(cfg: RunConfig, side: Side, est: Estimate) -> MemoryBudgetError:
    """The figures of a side that does not fit, and the ways out with theirs."""
    ways = {k: estimate(cfg, v) for k, v in _alternatives(cfg, side).items()}
    return MemoryBudgetError(footprint.refusal(est),
                             footprint.ways_out(side.role, cfg.reference_fit, cfg.profile, ways))


def fitted(cfg: RunConfig, side: Side) -> Side:
    """The CPU side a stage should load: `side` when it fits, else the way out REFERENCE_FIT
    names (offload: disk offload; bfloat16: the reference in bfloat16) when that fits, else
    MemoryBudgetError before anything is loaded. A side whose configs cannot be read (a
    MODEL_DIR that is missing or broken) is returned as it is: its load fails, as a row."""
    try:
        est = estimate(cfg, side)
    except Exception:  # noqa: BLE001 - the load names what is wrong with the folder
        return side
    if est.fits:
        return side
    way = _alternatives(cfg, side).get(cfg.reference_fit)
    if way is not None and estimate(cfg, way).fits:
        return way
    admit(cfg, side)  # raises: neither the side nor the chosen way out fits
    return side


def fit_notes(side: Side) -> list[str]:
    """What the report says of a CPU side that took a way out of REFERENCE_FIT."""
    if side.device_map == OFFLOAD:
        return [footprint.OFFLOAD_NOTE]
    if side.role == "reference" and side.dtype == torch.bfloat16:
        return [footprint.BFLOAT16_COST]
    return []


def _alternatives(cfg: RunConfig, side: Side) -> dict[str, Side]:
    """The ways out REFERENCE_FIT can take for this side (none for the target)."""
    if side.role == "target" or side.device.type != "cpu":
        return {}
    out = {}
    if (cfg.profile != "full-shape" and models.get(cfg.model).disk_offload
            and compat.disk_offload_supported()):
        out["offload"] = Side(side.role, side.device, side.dtype, OFFLOAD)
    if side.role == "reference" and side.dtype != torch.bfloat16:
        out["bfloat16"] = Side(side.role, side.device, torch.bfloat16, side.device_map)
    return out


def fit_report(cfg: RunConfig) -> str:
    """Every side a full run loads (target, CPU reference, float64 golden, CPU baseline in the
    target's dtype), estimated against the memory free now: `make fit`, before a run."""
    tgt = target(cfg)
    sides = [tgt.side, reference_side(), reference_side(torch.float64, "golden")]
    if tgt.dtype != torch.float32:
        sides.append(reference_side(tgt.dtype, "baseline"))
    out = []
    for side in sides:
        est = estimate(cfg, side, tgt.backend if side.role == "target" else None)
        out.append(est.text() if est.fits else str(_refusal(cfg, side, est)))
    return "\n".join(out)
