"""Whether runs may be compared at all: one model, the same weights and the same inputs.

Runs that saved their outputs (helpers.saved) are held to the hashes there: the weights hash
(every weight tensor, as the float32 reference holds it) must be equal, and the inputs (each
prompt, fixture and clip by its own hash) must overlap; partly different inputs are compared
on what they share, and the notes say so. Runs without saved outputs are held to what they
were told to load (MODEL and PROFILE, and SEED for the random-weight profiles; a MODEL_DIR
path differs from host to host for the same files)."""

from __future__ import annotations

from typing import Any

from helpers.compare.runs import RunFolder
from helpers.errors import ConfigError

RANDOM_PROFILES = ("tiny", "full-shape")  # weights drawn from SEED
SHOWN = 12  # hex digits of a hash in a message or table


def _refuse(what: str, runs: list[RunFolder], values: list[Any], fix: str) -> ConfigError:
    shown = "; ".join(f"{r.label} ({r.dir.name}): {v}" for r, v in zip(runs, values, strict=True))
    return ConfigError(f"the runs hold different {what}, so they are not comparable: {shown}",
                       fix)


def _model(runs: list[RunFolder]) -> None:
    for key in ("model", "profile"):
        values = [r.config.get(key) for r in runs]
        if any(v != values[0] for v in values):
            raise _refuse(f"models ({key.upper()} differs)", runs, values,
                          "compare runs of one model (the same MODEL and PROFILE)")


def _by_parameters(runs: list[RunFolder]) -> list[str]:
    ids = [{"MODEL": r.config.get("model"), "PROFILE": r.config.get("profile"),
            **({"SEED": r.config.get("seed")} if r.config.get("profile") in RANDOM_PROFILES
               else {})} for r in runs]
    for key in ids[0]:
        values = [i.get(key) for i in ids]
        if any(v != values[0] for v in values):
            raise _refuse(f"weights ({key} differs)", runs, values,
                          "compare runs of one model with the same weights (the same MODEL, "
                          "PROFILE and, for random weights, SEED)")
    lacking = ", ".join(f"{r.label} ({r.saved_why})" for r in runs if r.saved is None)
    return [f"Not every run holds saved outputs ({lacking}): their weights are taken to be the "
            "same from their parameters (" + ", ".join(f"{k}={v}" for k, v in ids[0].items())
            + ")."]


def shared_inputs(runs: list[RunFolder]) -> dict[str, str]:
    """The inputs (name -> hash) every run holds with the same content."""
    first = runs[0].saved.input_hashes
    return {k: h for k, h in first.items()
            if all(r.saved.input_hashes.get(k) == h for r in runs[1:])}


def _by_hashes(runs: list[RunFolder]) -> list[str]:
    weights = [r.saved.hashes["weights"] for r in runs]
    if any(w != weights[0] for w in weights):
        raise _refuse("weights (the weights hash differs)", runs,
                      [f"weights hash {w[:SHOWN]}" for w in weights],
                      "compare runs made from the same weights (the same MODEL_DIR files, or "
                      "the same PROFILE and SEED for random weights)")
    shared = shared_inputs(runs)
    if not shared:
        raise _refuse("inputs (no input has the same hash in every run)", runs,
                      [f"inputs hash {r.saved.hashes['inputs'][:SHOWN]}" for r in runs],
                      "compare runs made on the same prompts and audio (the same "
                      "accuracy_parity.languages and fixtures, or the same AUDIO_DIR)")
    notes = [f"Weights hash {weights[0][:SHOWN]} in every run (sha256 of every weight tensor, "
             "from the saved outputs)."]
    total = len(set().union(*(r.saved.input_hashes for r in runs)))
    if len(shared) < total:
        notes.append(f"The runs share {len(shared)} of {total} inputs: the device-against-device "
                     "comparison uses only those they share (the same name and content).")
    return notes


def check(runs: list[RunFolder]) -> list[str]:
    """Raise a ConfigError for runs of different models, weights or inputs, naming what
    differs; return the notes that say how the runs were known to be comparable."""
    _model(runs)
    if all(r.saved is not None for r in runs):
        return _by_hashes(runs)
    return _by_parameters(runs)


def hash_rows(runs: list[RunFolder]) -> dict[tuple[str, str], list[Any]]:
    """Rows of the differences table: the hashes of the saved outputs, where every run has them."""
    if any(r.saved is None for r in runs):
        return {}
    return {("saved outputs", f"{name} hash"): [r.saved.hashes[name][:SHOWN] for r in runs]
            for name in ("weights", "inputs", "settings")}
