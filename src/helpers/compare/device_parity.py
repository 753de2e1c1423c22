"""Device against device: the targets of two runs compared with each other from their saved
outputs, by stage 4's own sections (helpers.stages.accuracy_parity: logits, hidden states,
teacher-forced generation, the float64 golden, the audio components on every fixture) and
stage 6's comparison of its tasks
(helpers.stages.tasks.compare and checks), so every metric and rule is the stages' own.

The first run's target plays stage 4's reference and the other's its target, except that the
run in the coarser dtype is always the target (the rules are those of the coarser dtype, as
in stage 4). Only the prompts both runs hold with the same content are compared; step logits
are compared where both runs' CPU references chose the same greedy ids (each target was fed
its own run's reference ids); msprobe's benchmark ratios (each target's error against the
float64 golden) are computed when both runs hold the golden."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import torch

from helpers import audio, saved
from helpers.compare.identity import shared_inputs
from helpers.compare.runs import RunFolder
from helpers.compare.sections import Table
from helpers.records import Check
from helpers.stages import accuracy_parity as ap
from helpers.stages import tasks as st6
from helpers.stages.accuracy_parity.sides import FixtureClip, prompt_rows, subset
from helpers.tables import checks_frame

NO_OUTPUTS = "runs hold no saved outputs"
# finer first: the run in a dtype further down this list is the target
PRECISION = ("float64", "float32", "bfloat16", "float16")
SECTIONS = (ap.logits_section, ap.layers_section, ap.generation_section, ap.golden_section,
            ap.components_section)


def _placeholder(runs: list[RunFolder], why: str) -> Table:
    frame = pd.DataFrame([{"run": r.side, "saved outputs": r.saved_why or "yes"} for r in runs])
    return Table("parity", "Device against device", frame,
                 [f"No device-against-device comparison: {why}. Each run is compared with its "
                  "own CPU reference in the checks above."])


def _prompt_rows(run: RunFolder, keys: list[str]) -> list[int]:
    """The rows (prompt order of that run's stage 4) of the prompt inputs named by `keys`."""
    return prompt_rows(list(run.saved.index["stages"][saved.PARITY]["inputs"]), keys)


def _same_reference_ids(a: RunFolder, b: RunFolder, rows_a: list[int], rows_b: list[int]) -> bool:
    """Both runs' CPU references chose the same greedy ids on every shared prompt."""
    ta = a.saved.tensor(saved.PARITY, "reference", "tokens")[rows_a]
    tb = b.saved.tensor(saved.PARITY, "reference", "tokens")[rows_b]
    return ta.shape == tb.shape and torch.equal(ta, tb)


def _order(a: RunFolder, b: RunFolder) -> tuple[RunFolder, RunFolder]:
    """(reference, target): the coarser dtype is the target."""
    rank = {d: i for i, d in enumerate(PRECISION)}
    return (b, a) if rank.get(a.dtype, 1) > rank.get(b.dtype, 1) else (a, b)


def pair_runs(a: RunFolder, b: RunFolder) -> tuple[ap.Runs, list[str]]:
    """Stage 4's Runs for target against target, and the notes that say what was compared."""
    ref_run, tgt_run = _order(a, b)
    shared = shared_inputs([ref_run, tgt_run])
    keys = [k for k in shared if k.startswith("prompt:")]
    fixtures = [k.split(":", 1)[1] for k in shared if k.startswith("fixture:")]
    rows_r, rows_t = _prompt_rows(ref_run, keys), _prompt_rows(tgt_run, keys)
    ref = subset(saved.side_run(ref_run.saved, "target"), rows_r, fixtures, "reference")
    tgt = subset(saved.side_run(tgt_run.saved, "target"), rows_t, fixtures, "target")
    settings = ref_run.saved.settings(saved.PARITY)
    notes = [f"Reference side: the target of {ref_run.side}; target side: the target of "
             f"{tgt_run.side}; {len(keys)} shared prompts."]
    if not _same_reference_ids(ref_run, tgt_run, rows_r, rows_t):
        ref.steps, tgt.steps = [], []
        notes.append("The two runs' CPU references chose different greedy ids, so the "
                     "teacher-forced step logits are not compared.")
    golden = None
    if all("golden" in r.saved.roles(saved.PARITY) for r in (ref_run, tgt_run)):
        golden = subset(saved.side_run(ref_run.saved, "golden"), rows_r, fixtures, "golden")
    plan = ap.Plan(tgt.side, ref.side, "on" if golden else "off", "saved outputs",
                   int(settings.get("new_tokens", 0)), tuple(settings.get("languages", ())),
                   model=str(settings.get("model", "")), fixtures=tuple(fixtures),
                   profile=str(settings.get("profile", "")))
    prompts = [_prompt(k) for k in keys]
    note = ("golden: the float64 golden of " + ref_run.side if golden else
            "no golden: not both runs hold the float64 golden")
    clips = [FixtureClip(audio.fixture(name)) for name in fixtures]  # named, not loaded
    return ap.Runs(plan, prompts, ref, tgt, golden, note, clips), notes


def _prompt(key: str) -> ap.Prompt:
    """The shipped prompt an input name (prompt:<lang>:<index>) stands for."""
    _, lang, index = key.split(":")
    return ap.load_prompts((lang,))[int(index)]


def _checks(runs: ap.Runs) -> list[Check]:
    out = []
    for section in SECTIONS:
        if section is ap.generation_section and not runs.target.steps:
            continue  # the references' ids differ: said in the notes
        try:
            out += section(runs).checks
        except Exception as exc:  # a section that cannot run on these outputs is a row
            out.append(Check(f"{section.__name__}: computed", "failed", "no exception", False,
                             "helpers.compare", f"{type(exc).__name__}: {exc}"))
    return out


def _clip_shared(out: Any, shared: dict[str, str]) -> bool:
    """A task output whose clip (and reference voice) both runs hold with the same content."""
    names = [out.clip.split(" ")[0], *([out.voice] if out.voice else [])]
    return all(f"clip:{n}" in shared for n in names)


def _task_side(run: RunFolder, role: str, shared: dict[str, str], plays: str) -> st6.SideTasks:
    side = saved.task_side(run.saved, role)
    side.outputs = {k: o for k, o in side.outputs.items() if _clip_shared(o, shared)}
    side.side = dataclasses.replace(side.side, role=plays)
    return side


def task_checks(a: RunFolder, b: RunFolder) -> tuple[list[Check], list[str]]:
    """Stage 6's checks of one run's task outputs against the other's (the coarser dtype the
    target), on the clips both hold; step logits only where both CPU references chose the
    same ids."""
    ref_run, tgt_run = _order(a, b)
    shared = shared_inputs([ref_run, tgt_run])
    ref = _task_side(ref_run, "target", shared, "reference")
    tgt = _task_side(tgt_run, "target", shared, "target")
    ids_r = _task_side(ref_run, "reference", shared, "reference")
    ids_t = _task_side(tgt_run, "reference", shared, "reference")
    dropped = 0
    for key, out in tgt.outputs.items():
        r, cr, ct = ref.get(*key), ids_r.get(*key), ids_t.get(*key)
        if r is None or cr is None or ct is None or cr.tokens != ct.tokens:
            out.steps = None
            dropped += 1
    tasks = tuple(dict.fromkeys(k[0] for k in (*ref.outputs, *tgt.outputs)))
    runs = st6.TaskRuns(tgt_run.config.get("model", ""), tgt_run.config.get("profile", ""),
                        tasks, [], st6.Resolved(0, "greedy", False, False), tgt, ref)
    checks = [c for c in st6.checks(runs, st6.compare(runs)) if c.name != "inputs usable"]
    notes = [f"Tasks: {len(tgt.outputs)} outputs of {', '.join(tasks)} on the clips both runs "
             "hold; no error rates (they belong to each run against its transcripts)."]
    if dropped:
        notes.append(f"{dropped} task outputs without step logits compared: the two runs' CPU "
                     "references chose different ids there.")
    return checks, notes


def parity(runs: list[RunFolder]) -> Table:
    """Stage 4's checks of every run's target against the first run's (or the reverse, the
    coarser dtype being the target), from the saved outputs."""
    lacking = [r for r in runs if r.saved is None or saved.PARITY not in r.saved.stages]
    if lacking:
        return _placeholder(runs, NO_OUTPUTS + " of stage 4 (" + ", ".join(
            f"{r.label}: {r.saved_why or 'stage 4 not saved'}" for r in lacking) + ")")
    checks, notes = [], []
    for other in runs[1:]:
        pair, said = pair_runs(runs[0], other)
        found = _checks(pair)
        if all(saved.TASKS in r.saved.stages for r in (runs[0], other)):
            more, told = task_checks(runs[0], other)
            found, said = found + more, said + told
        if len(runs) > 2:
            found = [dataclasses.replace(c, name=f"{other.label} vs {runs[0].label}: {c.name}")
                     for c in found]
        checks += found
        notes += said + [pair.golden_note + "."]
    return Table("parity", "Device against device", checks_frame(checks), notes, ("verdict",))
