"""Stage 2 (model loading): the tables, chart, metrics and checks its notebook shows.

The notebook loads the model through the run's target (helpers.stages.kit.target); everything
it records or displays about that load comes from here.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch

from helpers import parity
from helpers.models.base import LoadedModel, Recipe, human, total_row
from helpers.records import Check

NAN_SOURCE = ("MindStudio probe whole-network rule: any NaN/Inf means the "
              "accuracy standard is not reached")
MB = 1e6


def metrics(loaded: LoadedModel, memory: dict[str, Any]) -> dict[str, Any]:
    """The loading facts plus device memory after load (bytes; None where the backend has none)."""
    out = loaded.metrics()
    for key in ("allocated", "reserved", "peak_allocated", "peak_reserved", "host_rss", "peak_rss"):
        out[f"memory_{key}"] = memory.get(key)
    alloc = memory.get("allocated")
    out["allocated_over_weights"] = round(alloc / out["bytes_total"], 4) if alloc else None
    return out


def timings_table(loaded: LoadedModel) -> pd.DataFrame:
    """The load split; the parts plus the tokenizer add up to about load_seconds."""
    labels = {
        "config_init_s": "config and init (configs, placement plan; random init for full-shape)",
        "tokenizer_s": "tokenizer",
        "weights_read_s": "weight read (from_pretrained)",
        "to_device_s": "move to device",
        "load_seconds": "total load (one timer around all of the above)",
        "imports_s": "first import of the modeling code in this process (outside the total)",
        "cache_build_s": "one-time tiny cache build (outside the total)",
    }
    rows = [{"phase": labels[k], "key": k, "seconds": round(loaded.timings.get(k, 0.0), 4)}
            for k in labels]
    return pd.DataFrame(rows).set_index("phase")


def components_table(loaded: LoadedModel) -> pd.DataFrame:
    """One row per component as loaded: class, parameters, MB, dtype, devices."""
    df = pd.DataFrame(loaded.rows())
    df["MB"] = (df.pop("bytes") / MB).round(2)
    return df.set_index("component")


def chart(loaded: LoadedModel) -> Any:
    """Parameters and bytes per component as loaded, side by side (log scale when they span >100x)."""
    from helpers import plots

    rows = loaded.rows()
    names = [r["component"] for r in rows]
    fig, (ax_p, ax_b) = plots.figure(ncols=2, width=9.0, height=3.4)
    for ax, key, scale, title, unit in ((ax_p, "parameters", 1e6, "Parameters", "millions"),
                                        (ax_b, "bytes", MB, "Weight memory as loaded", "MB")):
        values = [r[key] / scale for r in rows]
        ax.bar(names, values, color=plots.PALETTE[: len(names)])
        if min(values) > 0 and max(values) / min(values) > 100:
            ax.set_yscale("log")
        ax.set_title(f"{title} ({loaded.recipe.name}, {loaded.profile})")
        ax.set_ylabel(unit)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    return fig


def placement_table(loaded: LoadedModel) -> pd.DataFrame:
    """Module -> device, as used (with DEVICE_MAP=auto, one row per planned module)."""
    rows = [{"module": k, "device": v} for k, v in loaded.placement.items()]
    return pd.DataFrame(rows).set_index("module")


def placement_backend(tgt: Any, loaded: LoadedModel) -> Any:
    """The target's backend over every device the loaded model is placed on (DEVICE_MAP=auto
    spreads it): memory after load is each device's and their total, not the first card's."""
    return tgt.backend.spanning(loaded.placement.values())


def device_memory_table(backend: Any) -> pd.DataFrame | None:
    """One row per device of the placement and their total, MB; None for one device or a CPU."""
    rows = backend.memory_rows()
    if len(rows) < 2:
        return None
    return pd.DataFrame([{"device": r["device"], **{k: round(r[k] / MB, 1) for k in r
                                                     if k != "device"}} for r in rows]
                        ).set_index("device")


def memory_table(memory: dict[str, Any]) -> pd.DataFrame:
    """Device and host memory after load, MB ("n/a" where the backend has no allocator)."""
    rows = [{"memory": k, "MB": round(v / MB, 1) if v is not None else "n/a"}
            for k, v in memory.items()]
    return pd.DataFrame(rows).set_index("memory")


def size_profile(recipe: Recipe) -> str:
    """The profile that shows the real model's size: full-shape where the recipe has one."""
    return "full-shape" if "full-shape" in recipe.profiles else "real"


def describe_table(recipe: Recipe, profile: str, model_dir: str = "") -> pd.DataFrame:
    """recipe.describe plus a total row, with GB per dtype; nothing is allocated."""
    rows = recipe.describe(profile, model_dir if profile == "real" else "")
    rows.append(total_row(rows))
    df = pd.DataFrame(rows)
    for col in [c for c in df.columns if c.startswith("bytes_")]:
        df[col.replace("bytes_", "GB ")] = (df.pop(col) / 1e9).round(3)
    keep = [c for c in df.columns if c not in ("input_embeddings", "output_embeddings", "tied")]
    return df[keep].set_index("component")


def checks(loaded: LoadedModel, model_dir: str = "") -> list[Check]:
    """Finite weights, count = the recipe's shape, reference figures, the tiny load floor."""
    recipe = loaded.recipe
    out = [finite_check(loaded), count_check(loaded, model_dir)]
    if "full-shape" in recipe.profiles:
        out += reference_checks(recipe)
    if loaded.profile == "tiny":
        rule = parity.thresholds()["model_loading"]["tiny_load_seconds"]
        out.append(Check.judge(f"tiny profile loads in under {rule['limit']:g} s",
                               round(loaded.timings["load_seconds"], 3), rule["op"],
                               rule["limit"], parity.source(rule["source"]), unit=" s"))
    return out


def finite_check(loaded: LoadedModel) -> Check:
    """Every loaded weight is finite (a corrupt read or a float16 overflow shows up here)."""
    bad = 0
    with torch.no_grad():
        for m in loaded.components.values():
            for p in m.parameters():
                if p.is_floating_point():
                    bad += int((~torch.isfinite(p)).sum())
    return Check.judge("model loads with finite weights (NaN/Inf count)", bad, "==", 0, NAN_SOURCE)


def count_check(loaded: LoadedModel, model_dir: str = "") -> Check:
    """Loaded parameters == the count of the same profile's shape built on the meta device."""
    profile = loaded.profile
    rows = loaded.recipe.describe(profile, model_dir if profile == "real" else "")
    expected = sum(r["parameters"] for r in rows)
    source = ("config.json in MODEL_DIR, counted on the meta device" if profile == "real"
              else f"recipe {loaded.recipe.name} {profile} shape, counted on the meta device")
    return Check.judge("parameter count matches the recipe's shape", loaded.parameters_total,
                       "==", expected, source, detail=f"expected {expected:,} ({human(expected)})")


def reference_checks(recipe: Recipe) -> list[Check]:
    """The full-shape counts (meta device) against the published figures, within their rounding."""
    rows = {r["component"]: r for r in recipe.describe("full-shape")}
    counts = {"total": sum(r["parameters"] for r in rows.values())}
    for name, r in rows.items():
        counts[name] = r["parameters"]
        for side in ("input_embeddings", "output_embeddings"):
            if side in r:
                counts[f"{name}.{side}"] = r[side]
    out = []
    for ref in recipe.references:
        n = counts[ref.key] if ref.key in counts else sum(counts[k] for k in ref.key.split("+"))
        diff = abs(n - ref.value)
        out.append(Check(
            name=f"full-shape {ref.key} parameters match the published {ref.label}",
            value=n, threshold=f"{ref.label} ± {human(ref.tolerance)} (rounding of the figure)",
            passed=bool(diff <= ref.tolerance and math.isfinite(diff)), source=ref.source,
            detail=f"{n:,} = {human(n)}; off by {human(diff)}",
        ))
    return out
