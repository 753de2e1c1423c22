"""This run's target against a baseline run's saved target (BASELINE=, e.g. an NPU run against
a GPU run made elsewhere): logits, hidden states, teacher-forced steps and audio components,
with the same metrics and rules as the target against the reference, on the inputs both runs
share. A baseline of other weights, or sharing no prompt, is refused naming the hash."""

from __future__ import annotations

import dataclasses

import torch

from helpers import outputs
from helpers.errors import ConfigError
from helpers.stages.accuracy_parity.audio import components_section
from helpers.stages.accuracy_parity.sections import (
    generation_section,
    layers_section,
    logits_section,
)
from helpers.stages.accuracy_parity.sides import Runs, SideRun, prompt_rows, side_run, subset
from helpers.stages.kit import Section

NAME = "baseline_run"
PREFIX = "baseline run: "  # every check of the section, apart from the reference's


def baseline_section(runs: Runs, store: outputs.Store, folder: str) -> Section:
    """The target against BASELINE's saved target; a note only when no BASELINE is given."""
    if not folder:
        return Section(NAME, notes=["No BASELINE run given: the target is compared with the "
                                    "CPU reference only."])
    other = outputs.open_run(folder)
    theirs = other.stage_hashes(outputs.PARITY)
    if theirs["weights"] != store.weights:
        raise ConfigError(f"BASELINE={folder} ran other weights: weights hash "
                          f"{theirs['weights'][:16]} there, {store.weights[:16]} here",
                          "give a baseline run of the same model, profile, seed or MODEL_DIR")
    there = other.index["stages"][outputs.PARITY]["inputs"]
    shared = [n for n, h in store.inputs.items() if there.get(n) == h]
    if not any(n.startswith("prompt:") for n in shared):
        raise ConfigError(f"BASELINE={folder} shares no prompt with this run: inputs hash "
                          f"{theirs['inputs'][:16]} there, {store.hashes.as_dict()['inputs'][:16]}"
                          " here", "give a baseline run made with the same prompts (languages)")
    base = side_run(other, "target")
    sub = _shared_runs(runs, base, list(store.inputs), list(there), shared)
    parts = [logits_section(sub), layers_section(sub)]
    fed = _shared_runs(runs, side_run(other, "reference"), list(store.inputs), list(there),
                       shared, runs.reference)
    why = _generation_gap(sub, fed, other, store)
    parts.append(generation_section(sub) if not why else Section("generation", notes=[why]))
    parts.append(components_section(sub))
    return _merged(parts, _notes(folder, other, base, store, there, shared, why))


def _shared_runs(runs: Runs, base: SideRun, here: list[str], there: list[str],
                 shared: list[str], mine: SideRun | None = None) -> Runs:
    """This run's target (or `mine`) as the target, and `base` of the baseline run as the
    reference, on the shared prompts and fixtures, in this run's order."""
    names = [n for n in here if n.startswith("prompt:") and n in shared]
    fixtures = {n.split(":", 1)[1] for n in shared if n.startswith("fixture:")}
    tgt = subset(mine or runs.target, prompt_rows(here, names), fixtures)
    ref = subset(base, prompt_rows(there, names), fixtures, role="baseline run")
    plan = dataclasses.replace(runs.plan, reference=ref.side, golden="off")
    return Runs(plan, [runs.prompts[i] for i in prompt_rows(here, names)], ref, tgt, None, "",
                [c for c in runs.clips if c.name in fixtures])


def _generation_gap(sub: Runs, fed: Runs, other: outputs.SavedRun, store: outputs.Store) -> str:
    """Why the teacher-forced steps cannot be compared ('' when they can): both targets must
    have been fed the same ids, the ones their CPU references chose (`fed`: the two
    references on the shared prompts)."""
    n_there = other.settings(outputs.PARITY).get("new_tokens")
    if n_there != store.settings.get("new_tokens"):
        return (f"Generation not compared: the baseline run decoded {n_there} new tokens per "
                f"prompt, this one {store.settings.get('new_tokens')}.")
    a, b = fed.target.tokens, fed.reference.tokens
    if a is None or b is None or not torch.equal(a, b):
        return ("Generation not compared: the two runs' CPU references chose other greedy "
                "ids, so their targets were fed other ids.")
    steps = [s.shape[0] for s in sub.target.steps + sub.reference.steps]
    if len(set(steps)) > 1 or not steps:
        return "Generation not compared: the two targets hold no teacher-forced steps alike."
    return ""


def _merged(parts: list[Section], notes: list[str]) -> Section:
    checks = [dataclasses.replace(c, name=PREFIX + c.name) for s in parts for c in s.checks]
    metrics = {s.name: s.metrics for s in parts if s.metrics}
    return Section(NAME, parts[0].table, checks, metrics,
                   notes + [n for s in parts for n in s.notes])


def _notes(folder: str, other: outputs.SavedRun, base: SideRun, store: outputs.Store,
           there: dict[str, str], shared: list[str], why: str) -> list[str]:
    other_content = [n for n in store.inputs if n in there and n not in shared]
    only_here = [n for n in store.inputs if n not in there]
    only_there = [n for n in there if n not in store.inputs]
    notes = [f"Baseline run {other.meta.get('run_id', folder)} ({folder}): its target "
             f"`{base.side.label}` stands where the reference stands in the sections above, "
             "judged by the same metrics and rules; the same weights (hash "
             f"{store.weights[:16]})."]
    if other_content or only_here or only_there:
        notes.append(f"Compared on the {len(shared)} inputs both runs share; left out: "
                     f"{', '.join(other_content) or 'none'} (other content), "
                     f"{', '.join(only_here) or 'none'} (this run only), "
                     f"{', '.join(only_there) or 'none'} (the baseline only).")
    else:
        notes.append(f"Both runs ran the same {len(shared)} inputs.")
    differ = {k: (v, store.settings.get(k)) for k, v in other.settings(outputs.PARITY).items()
              if store.settings.get(k) != v and k not in ("languages", "fixtures")}
    if differ:
        notes.append("Settings that differ (baseline, this run): " + "; ".join(
            f"{k} {a!r}, {b!r}" for k, (a, b) in differ.items()) + ".")
    return notes
