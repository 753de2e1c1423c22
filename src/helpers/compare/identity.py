"""Whether runs may be compared at all: one model, the same weights and the same inputs.

Runs of different models or weights are refused, naming what differs; without saved outputs
the weights are known by what the run was told to load (MODEL and PROFILE, and SEED for the
random-weight profiles), since a MODEL_DIR path differs from host to host for the same files."""

from __future__ import annotations

from typing import Any

import pandas as pd

from helpers.compare.runs import RunFolder
from helpers.compare.sections import Table
from helpers.errors import ConfigError

RANDOM_PROFILES = ("tiny", "full-shape")  # weights drawn from SEED


def _weights_identity(run: RunFolder) -> dict[str, Any]:
    cfg = run.config
    out = {"MODEL": cfg.get("model"), "PROFILE": cfg.get("profile")}
    if cfg.get("profile") in RANDOM_PROFILES:
        out["SEED"] = cfg.get("seed")
    return out


def _refuse(what: str, runs: list[RunFolder], values: list[Any], fix: str) -> ConfigError:
    shown = "; ".join(f"{r.label} ({r.dir.name}): {v}" for r, v in zip(runs, values, strict=True))
    return ConfigError(f"the runs hold different {what}, so they are not comparable: {shown}",
                       fix)


def check(runs: list[RunFolder]) -> list[str]:
    """Raise a ConfigError for runs of different models or weights; return the notes that say
    how the weights were known to be the same."""
    ids = [_weights_identity(r) for r in runs]
    for key in ids[0]:
        values = [i.get(key) for i in ids]
        if any(v != values[0] for v in values):
            raise _refuse(f"weights ({key} differs)", runs, values,
                          "compare runs of one model with the same weights (the same MODEL, "
                          "PROFILE and, for random weights, SEED)")
    return ["The runs hold no saved outputs: their weights are taken to be the same from "
            "their parameters (" + ", ".join(f"{k}={v}" for k, v in ids[0].items()) + ")."]


def hash_rows(runs: list[RunFolder]) -> dict[tuple[str, str], list[Any]]:
    """Rows of the differences table for the hashes of the saved outputs (none yet)."""
    return {}


def parity_placeholder(runs: list[RunFolder]) -> Table:
    frame = pd.DataFrame([{"comparison": "device against device", "status":
                           "runs hold no saved outputs"}])
    return Table("parity", "Device against device", frame,
                 ["Neither run holds saved outputs (the target's logits, ids and audio "
                  "outputs of stages 4 and 6), so the two devices cannot be compared with "
                  "each other directly; each is compared with its own CPU reference above."])
