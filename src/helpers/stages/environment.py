"""Stage 1: what machine and software stack produced the report's numbers."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
import platform
import re
import sys
from typing import Any

import pandas as pd
import psutil

from helpers import compat
from helpers import device as dev
from helpers.config import RunConfig
from helpers.device import facts
from helpers.errors import DeviceError
from helpers.provenance import git_state
from helpers.records import Check
from helpers.stages.kit import target
from helpers.tables import show_value
from helpers.tables import table as show

NOT_INSTALLED = "not installed"
PACKAGES = ("torch", "torch_npu", "transformers", "tokenizers", "safetensors", "accelerate",
            "numpy", "scipy", "soundfile", "soxr", "papermill", "nbconvert", "nbclient",
            "ipykernel", "matplotlib", "pandas")
# Variables that change what an NPU/GPU run computes or how it is scheduled.
ENV_PATTERNS = (r"^ASCEND_", r"^TASK_QUEUE_ENABLE$", r"^TORCH_NPU_", r"^PYTORCH_NPU_",
                r"^HCCL_", r"^CUDA_VISIBLE_DEVICES$", r"^CUDA_LAUNCH_BLOCKING$",
                r"^PYTORCH_CUDA_ALLOC_CONF$", r"^CUBLAS_WORKSPACE_CONFIG$", r"^NVIDIA_",
                r"^OMP_NUM_THREADS$", r"^MKL_NUM_THREADS$", r"^HF_HUB_OFFLINE$",
                r"^TRANSFORMERS_OFFLINE$", r"^HF_HOME$", r"^LD_PRELOAD$", r"^TORCH_CPP_LOG_LEVEL$",
                r"^RANK$", r"^LOCAL_RANK$", r"^WORLD_SIZE$")
# Shown even when unset, so a reader sees they were looked at.
# (torch_npu 2.9.0.post1 reads TORCH_NPU_DISABLED_WARNING; newer releases the other name)
ENV_ALWAYS = ("ASCEND_RT_VISIBLE_DEVICES", "TASK_QUEUE_ENABLE", "TORCH_NPU_DISABLED_WARNING",
              "TORCH_NPU_WARNING_DISABLE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = NOT_INSTALLED
    return out


def platform_info() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": facts.cpu_name(),
        "cpu_logical_cores": psutil.cpu_count(logical=True),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "memory_total_gib": round(vm.total / 2**30, 2),
        "memory_available_gib": round(vm.available / 2**30, 2),
    }


def env_vars() -> dict[str, str]:
    found = {k: v for k, v in os.environ.items() if any(re.match(p, k) for p in ENV_PATTERNS)}
    for k in ENV_ALWAYS:
        found.setdefault(k, "(unset)")
    return dict(sorted(found.items()))


def tested_range(versions: dict[str, str]) -> dict[str, dict[str, str]]:
    """python, torch and transformers: installed, the oldest and newest tested, and where the
    installed one stands ("inside the tested range" / "outside: ... newer than the newest")."""
    where = compat.stack_placement({n: "" if versions.get(n, NOT_INSTALLED) == NOT_INSTALLED
                                    else versions[n] for n in compat.TESTED})
    return {n: {"installed": versions.get(n, NOT_INSTALLED), "oldest tested": lo,
                "newest tested": hi, "placement": where[n]}
            for n, (lo, hi) in compat.TESTED.items()}


def collect(cfg: RunConfig) -> dict[str, Any]:
    """Every fact of the environment record, grouped by section."""
    try:
        tgt = target(cfg)
        dtype, dtype_error = tgt.dtype_name, ""
    except DeviceError as exc:
        if "DTYPE" not in str(exc):
            raise  # the device itself cannot be used: nothing here to describe
        # the dtype cannot run on this device: its facts are still worth recording
        tgt = target(dataclasses.replace(cfg, dtype="auto"))
        dtype, dtype_error = "unsupported", str(exc)
    sel, backend = tgt.selection, tgt.backend
    versions = {**package_versions(), **dev.stack_versions()}
    return {
        "versions": versions,
        "tested_range": tested_range(versions),
        "platform": platform_info(),
        "device": {"requested": sel.requested, "selected": str(sel.device),
                   "backend": sel.backend, "reason": sel.reason, "dtype": dtype,
                   "dtype_error": dtype_error,
                   "supported_dtypes": ", ".join(backend.supported_dtypes()),
                   **{f"property.{k}": v for k, v in backend.properties().items()}},
        "numerics": dev.numeric_settings(sel),
        "env": env_vars(),
        "git": git_state(),
    }


def checks(env: dict[str, Any]) -> list[Check]:
    """Verdicts on the environment: the target dtype runs here; torch_npu pairs with torch;
    where the stack stands against the tested range (info: a newer release may well run)."""
    out = [Check("target dtype is supported on the device", env["device"]["dtype"],
                 "in supported dtypes", not env["device"]["dtype_error"],
                 "device backend dtype table", env["device"]["dtype_error"])]
    v = env["versions"]
    if v.get("torch_npu", NOT_INSTALLED) != NOT_INSTALLED:
        base = lambda s: ".".join(s.split("+")[0].split(".")[:2])  # noqa: E731 - major.minor
        out.append(Check("torch_npu release matches torch", f"{v['torch_npu']} / {v['torch']}",
                         "same major.minor", base(v["torch_npu"]) == base(v["torch"]),
                         "torch_npu release notes: each torch_npu release pairs with one torch release"))
    outside = [p["placement"] for p in env["tested_range"].values()
               if p["placement"] != compat.INSIDE]
    out.append(Check("software stack is inside the tested range",
                     "outside" if outside else "inside",
                     compat.tested_text(), None, "releases tested by make test and make test-stacks",
                     "; ".join(outside) or compat.INSIDE))
    out.append(Check("project tree is committed", not env["git"].get("dirty"), "committed", None,
                     "reproducibility: the commit identifies the code",
                     "informational: a dirty tree means the commit alone does not reproduce the run"))
    return out


def tested_table(rows: dict[str, dict[str, str]]) -> Any:
    """The tested-range section: one row per package."""
    return show(pd.DataFrame([{"package": n, **r} for n, r in rows.items()]))


def table(section: dict[str, Any], key: str = "item") -> Any:
    """One section of the record as a two-column table (yes / no, a dash for nothing)."""
    return show(pd.DataFrame({key: list(section),
                              "value": [show_value(v) for v in section.values()]}))
