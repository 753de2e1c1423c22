"""Stage 6 (tasks): the model's own tasks end to end, on the target and on the CPU
reference, with identical inputs and weights.

  gpa               stt (speech -> text), tts-a (text + a reference voice -> speech) and vc
                    (source speech + a reference voice -> speech), helpers.tasks.gpa
  covo-audio-chat   a2t (speech -> text reply) and a2ta (speech -> text and speech reply), two
                    rounds of one dialogue each, helpers.tasks.covo
Inputs: the shipped fixtures, or AUDIO_DIR (helpers.tasks.inputs: every file that cannot be used
is a row). tts-a speaks clip i's transcript (without one: a shipped sentence of its language,
helpers.tasks.inputs.spoken) in clip i+1's voice; vc converts clip i to clip i+1's voice; a
covo dialogue hears clip i then clip i+1.

Each side loads the whole model (kit.load: the reference on the CPU in float32, the target as
configured; the same files or seeds, so the same weights), runs a warm-up task (not timed),
runs every task, keeps its outputs on the host and is freed before the next side loads.

Compared per task and input: the prompt's audio tokens (each side tokenizes the clip itself),
the generated ids (agreement and first diverging position), the decoded text of both sides,
word / character error rates against the clip's transcript (helpers.tasks.metrics), and for
audio outputs the waveform SNR and log-mel distance when both sides generated the same ids;
time to first token, time to first audio and the end-to-end real-time factor per side.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers import audio, generate, models, outputs, parity, trajectory
from helpers import players as playback
from helpers.config import RunConfig
from helpers.knobs import setting
from helpers.models.base import weight_digests
from helpers.records import Check
from helpers.stages import kit
from helpers.stages.kit import Section, Side, Target, failure_text, reference_side
from helpers.tasks import metrics, sampled
from helpers.tasks.inputs import TaskClip, spoken, spoken_note
from helpers.tasks.inputs import clips as task_clips
from helpers.tasks.results import TaskOutput

REFERENCE_DTYPE = torch.float32
TINY_NEW_TOKENS = 24  # random weights never stop on their own: a short, fixed budget
SEEDS_RANDOM, SEEDS_REAL = 3, 5  # samples per input with decoding=release (knob tasks.seeds)
RANDOM_ROUNDTRIPS = 1  # inputs per task transcribed back with random weights (their speech is noise)
WARM_UP_S = 1.0  # the untimed warm-up task hears this much of the first clip
TASKS = {"gpa": ("stt", "tts-a", "vc"), "covo-audio-chat": ("a2t", "a2ta")}
TIMING_PROTOCOL = ("helpers.bench.Clock: the host clock from a synchronized start, each event "
                   "stamped after a synchronize; one untimed warm-up task per side first")


@dataclass(frozen=True)
class Settings:
    """The stage's knobs, each with its help; notebook 06's parameters cell mirrors them."""

    fixtures: str = setting("", "shipped fixtures to use, comma-separated; empty: all")
    max_new_tokens: int = setting(0, "0: the release's budget (gpa 512, covo 2048); random "
                                     "weights: 24")
    decoding: str = setting("greedy", "greedy, or release: each task's published sampling, "
                                      "fixed seed")
    audio_ids_only: str = setting("auto", "auto: on for random weights (they rarely emit audio "
                                          "ids), off for real")
    roundtrip: bool = setting(True, "transcribe tts-a / vc outputs with the model's own stt")
    roundtrip_inputs: int = setting(0, "inputs per task and language whose output is "
                                       "transcribed back (0: every input with real weights, 1 "
                                       "with random ones)")
    seeds: int = setting(0, "seeds per input and side when decoding is release (0: 3 with "
                            "random weights, 5 with real ones)")
    players: int = setting(1, "inputs per task with a speech output shown with players")


@dataclass
class Resolved:
    """The stage knobs, resolved for the run's profile."""

    max_new_tokens: int
    decoding: str
    audio_ids_only: bool
    roundtrip: bool
    seeds: int = 1  # samples per input and side (decoding=release), the first is seed `seed`
    roundtrip_inputs: int = 0  # inputs per task and language transcribed back (0: every one)
    notes: list[str] = field(default_factory=list)


def settings(cfg: RunConfig, max_new_tokens: int = 0, decoding: str = "greedy",
             audio_ids_only: str = "auto", roundtrip: bool = True, seeds: int = 0,
             roundtrip_inputs: int = 0) -> Resolved:
    """max_new_tokens 0 = the release's (gpa 512, covo 2048) for real weights, TINY_NEW_TOKENS
    for random ones; audio_ids_only auto = on for random weights (they would rarely emit an
    audio id, so the audio path would never run), off for real ones; seeds 0 = 3 samples per
    input with random weights, 5 with real ones (decoding=release only); roundtrip_inputs 0 =
    every input's output transcribed back with real weights, the first input's of each
    language per task with random ones (the transcript of noise is noise: one per language
    proves the path and keeps both rates, WER and CER)."""
    from helpers.errors import ConfigError
    from helpers.tasks import covo, gpa

    generate.check_decoding(decoding)
    if audio_ids_only not in ("auto", "on", "off"):
        raise ConfigError(f"tasks.audio_ids_only is {audio_ids_only!r}",
                          "use auto, on or off")
    if max_new_tokens < 0:
        raise ConfigError(f"tasks.max_new_tokens is {max_new_tokens}",
                          "give 0 (the release's budget) or a positive number")
    if seeds < 0:
        raise ConfigError(f"tasks.seeds is {seeds}",
                          "give 0 (3 with random weights, 5 with real ones) or a positive number")
    if roundtrip_inputs < 0:
        raise ConfigError(f"tasks.roundtrip_inputs is {roundtrip_inputs}",
                          "give 0 (every input with real weights, 1 with random ones) or a "
                          "positive number")
    real = cfg.profile == "real"
    fam = models.get(cfg.model).task_family
    release = gpa.MAX_NEW_TOKENS if fam == "gpa" else covo.MAX_NEW_TOKENS
    n = max_new_tokens or (release if real else TINY_NEW_TOKENS)
    only = audio_ids_only == "on" or (audio_ids_only == "auto" and not real)
    samples = (seeds or (SEEDS_REAL if real else SEEDS_RANDOM)) if decoding == "release" else 1
    trips = roundtrip_inputs or (0 if real else RANDOM_ROUNDTRIPS)
    s = Resolved(n, decoding, only, roundtrip, samples, trips)
    if samples > 1:
        s.notes.append(f"decoding=release: every input sampled with {samples} seeds (seed "
                       f"{cfg.seed} to {cfg.seed + samples - 1}) on both sides; the first seed's "
                       "outputs fill the tables, all of them the distributions")
    if not real:
        s.notes.append(f"profile {cfg.profile}: random weights, so transcripts and voices are "
                       "noise and error rates are meaningless (info rows); device-vs-CPU "
                       f"agreement is still judged. Decoding stops after {n} new ids (random "
                       "weights rarely choose the end token).")
    if roundtrip and trips:
        s.notes.append(f"round trip (the model's own stt of a tts-a / vc output): the first "
                       f"{trips} input(s) of each language per task; the others are not "
                       "transcribed (tasks.roundtrip_inputs=0 with real weights: every input)")
    if only:
        s.notes.append("audio outputs restricted to audio ids (audio_ids_only): tts-a / vc / "
                       "a2ta choose only among the audio tokens and the end token, so the codec "
                       "or vocoder path runs; the releases do not restrict")
    return s


# ---- one side ----------------------------------------------------------------------------

@dataclass
class SideTasks:
    side: Side
    outputs: dict[tuple[str, str], TaskOutput] = field(default_factory=dict)
    # decoding=release: the further seeds' outputs, (task, input, seed offset >= 1) -> output
    # (without waveform and step logits)
    samples: dict[tuple[str, str, int], TaskOutput] = field(default_factory=dict)
    error: str = ""  # the side could not load or run at all
    weights: str = ""  # the reference's weights hash (helpers.saved.weights_hash)

    def get(self, task: str, clip: str) -> TaskOutput | None:
        return self.outputs.get((task, clip))


def _pairs(clips: list[TaskClip]) -> list[tuple[TaskClip, TaskClip]]:
    """(clip i, clip i+1), cyclic over the usable clips (one clip pairs with itself)."""
    ok = [c for c in clips if c.usable]
    return [(c, ok[(i + 1) % len(ok)]) for i, c in enumerate(ok)]


def _guard(side: SideTasks, task: str, clip: str, fn: Any) -> list[TaskOutput]:
    try:
        out = fn()
        return out if isinstance(out, list) else [out]
    except Exception as exc:  # one failing task is a row, not a crashed stage
        return [TaskOutput(task, clip, error=failure_text(exc))]


def run_gpa(pipe: Any, side: SideTasks, clips: list[TaskClip], s: Resolved) -> None:
    pairs = _pairs(clips)
    jobs = []
    back = transcribed_back(clips, s)
    for clip, voice in pairs:
        trip = clip.name in back
        jobs.append(("stt", clip.name, False, lambda c=clip: pipe.stt(c)))
        jobs.append(("tts-a", clip.name, trip,
                     lambda c=clip, v=voice: pipe.tts(spoken(c).text, v, c.name)))
        jobs.append(("vc", clip.name, trip, lambda c=clip, v=voice: pipe.vc(c, v)))
    for task, name, trip, fn in jobs:
        for out in _guard(side, task, name, fn):
            if trip and out.wave is not None and out.wave.size and not out.error:
                try:
                    out.roundtrip = pipe.transcribe(out.wave, f"{task} {name}")
                except Exception as exc:
                    out.extra["roundtrip_error"] = failure_text(exc)
            side.outputs[out.key] = out


def transcribed_back(clips: list[TaskClip], s: Resolved) -> set[str]:
    """The inputs whose tts-a / vc outputs are transcribed back: every usable one, or the first
    roundtrip_inputs of each language (the rate is WER for English, CER for Chinese)."""
    if not s.roundtrip:
        return set()
    seen: dict[str, int] = {}
    chosen = set()
    for clip in (c for c in clips if c.usable):
        if not s.roundtrip_inputs or seen.get(clip.language, 0) < s.roundtrip_inputs:
            chosen.add(clip.name)
        seen[clip.language] = seen.get(clip.language, 0) + 1
    return chosen


def run_covo(pipe: Any, side: SideTasks, clips: list[TaskClip], s: Resolved) -> None:
    del s
    for task in TASKS["covo-audio-chat"]:
        for a, b in _pairs(clips)[::2]:
            for out in _guard(side, task, f"{a.name} (round 1)",
                              lambda t=task, x=a, y=b: pipe.dialogue(t, x, y if y is not x
                                                                      else None)):
                side.outputs[out.key] = out


def run_side(cfg: RunConfig, side: Side, clips: list[TaskClip], s: Resolved,
             leader: SideTasks | None = None, free: bool = True) -> SideTasks:
    """Load the model for `side`, warm up, run every task, and (free) collect its memory for
    the side that loads next; with a leader (the reference's outputs) every task is also
    teacher-forced on the leader's prompt and ids."""
    from helpers.tasks import covo, gpa

    res = SideTasks(side)
    loaded = None
    try:
        loaded = kit.load(cfg, side)
        if side.role == "reference":
            res.weights = outputs.weights_hash(weight_digests(loaded, (torch.float32,)))
        fam = loaded.recipe.task_family
        kind = gpa.Pipeline if fam == "gpa" else covo.Pipeline
        pipe = kind(loaded, side.backend, s.max_new_tokens, s.decoding, cfg.seed,
                    s.audio_ids_only)
        usable = [c for c in clips if c.usable]
        if usable:  # warm-up: lazy initialisation and first-call costs stay out of the timings
            piece = warm_up_clip(usable[0])  # not a task's input: nothing of it is reused
            pipe.max_new = 2
            (pipe.stt(piece) if fam == "gpa" else pipe.dialogue("a2t", piece, None))
            pipe.max_new = s.max_new_tokens
        pipe.leader = dict(leader.outputs) if leader is not None else None
        run = run_gpa if fam == "gpa" else run_covo
        run(pipe, res, clips, s)
        pipe.leader = None  # further seeds: sampled on their own, compared as distributions
        for k in range(1, s.seeds):
            pipe.seed = cfg.seed + k
            more = SideTasks(side)
            run(pipe, more, clips, s)
            for out in more.outputs.values():
                out.wave, out.steps = None, None
                res.samples[(out.task, out.clip, k)] = out
    except Exception as exc:
        res.error = failure_text(exc)
    finally:
        del loaded
        if free:  # a full collection costs a fifth of a second: only where a side loads next
            gc.collect()
            side.backend.empty_cache()
    return res


def warm_up_clip(clip: TaskClip) -> TaskClip:
    """The first WARM_UP_S seconds of a clip, as an input of its own (the warm-up task's)."""
    x = clip.samples16[: int(WARM_UP_S * 16_000)]  # type: ignore[index]
    return TaskClip(f"warm-up ({clip.name})", clip.path, clip.origin, samples16=x)


@dataclass
class TaskRuns:
    """Both sides' outputs, the inputs and the settings."""

    model: str
    profile: str
    tasks: tuple[str, ...]
    clips: list[TaskClip]
    settings: Resolved
    target: SideTasks
    reference: SideTasks
    reason: str = ""
    skipped: str = ""  # why the stage does not apply to this recipe ("" = it ran)
    seed: int = 0  # the first sampling seed (decoding=release)
    store: outputs.Store | None = None  # where the sides were saved, the reference came from

    @property
    def keys(self) -> list[tuple[str, str]]:
        seen = dict.fromkeys([*self.reference.outputs, *self.target.outputs])
        return sorted(seen, key=lambda k: (self.tasks.index(k[0]) if k[0] in self.tasks else 99,
                                           k[1]))


def run_all(tgt: Target, audio_dir: str = "", fixtures: str = "", s: Resolved | None = None,
            run_dir: str = "") -> TaskRuns:
    """The reference first (reused when the reference cache or REFERENCE= has it), then the
    target, on the same clips; with a run_dir both sides are saved (helpers.saved)."""
    cfg = tgt.cfg
    s = s or settings(cfg)
    recipe = models.get(cfg.model)
    fam = recipe.task_family
    if not fam:  # not a failure: the stage does not apply, and says so
        why = (f"{recipe.name} ({type(recipe).__name__}) has no speech tasks: the tasks run for "
               "gpa and covo-audio-chat, and recipes built on them")
        s.notes.insert(0, why)
        return TaskRuns(recipe.name, cfg.profile, (), [], s, SideTasks(tgt.side),
                        SideTasks(reference_side(REFERENCE_DTYPE)), tgt.reason, skipped=why)
    clips = task_clips(audio_dir, fixtures)
    if fam == "gpa":
        s.notes.extend(spoken_note(clips))
    store = stage_store(tgt, clips, s, run_dir) if run_dir else None
    ref = store.reused("reference") if store is not None else None
    if ref is None:  # computed here: refused before any load when it cannot be held
        ref_side = kit.fitted(cfg, reference_side(REFERENCE_DTYPE))
        s.notes.extend(kit.fit_notes(ref_side))
        ref = run_side(cfg, ref_side, clips, s)
    dev = run_side(cfg, tgt.side, clips, s, leader=ref, free=False)  # the last side
    if store is not None:
        store.weights = ref.weights
        for side in (ref, dev):
            store.keep(side)
        if ref.side.dtype == REFERENCE_DTYPE:  # a lower-precision way out is never cached
            store.fill_cache([ref])
        s.notes.insert(0, f"The {store.note}.")
    return TaskRuns(recipe.name, cfg.profile, TASKS[fam], clips, s, dev, ref, tgt.reason,
                    seed=cfg.seed, store=store)


def stage_store(tgt: Target, clips: list[TaskClip], s: Resolved, run_dir: str) -> outputs.Store:
    """Where the stage saves its sides and finds its reference: each clip's bytes, transcript
    and language, and the settings that decide the outputs."""
    inputs = {f"clip:{c.name}": outputs.digest([outputs.file_digest(c.path) if c.path.is_file()
                                                else c.error, c.text, c.language]) for c in clips}
    cfg = tgt.cfg
    settings = {"model": cfg.model, "profile": cfg.profile, "seed": cfg.seed,
                "target_dtype": tgt.dtype_name,  # every resolved knob, notes aside
                **{k: v for k, v in dataclasses.asdict(s).items() if k != "notes"}}
    return outputs.store(outputs.TASKS, (pack, task_side), run_dir, cfg, inputs, settings,
                         tgt.label)


# ---- saved outputs: the one conversion each way (helpers.outputs writes and reads the files) ---

def pack(side: SideTasks) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A side as saved: outputs/<i>/<field> tensors, and the JSON fields of each output."""
    tensors, rows, more = {}, [], []
    for i, out in enumerate(side.outputs.values()):
        mine, fields = out.saved()
        tensors.update({f"outputs/{i}/{k}": v for k, v in mine.items()})
        rows.append(fields)
    for j, ((_task, _clip, k), out) in enumerate(side.samples.items()):  # further seeds
        mine, fields = out.saved()
        tensors.update({f"samples/{j}/{name}": v for name, v in mine.items()})
        more.append({**fields, "seed_offset": k})
    return tensors, {"side": side.side.record(), "error": side.error, "weights": side.weights,
                     "outputs": rows, "samples": more}


def task_side(saved_run: outputs.SavedRun, role: str = "target") -> SideTasks:
    """A side rebuilt from saved outputs: the stage's comparison works on it."""
    meta = saved_run.side_meta(outputs.TASKS, role)
    tensors = saved_run.tensors(outputs.TASKS, role)
    side = SideTasks(Side.from_record(meta["side"]), error=meta["error"],
                     weights=meta["weights"])
    for i, fields in enumerate(meta["outputs"]):
        mine = {k.rsplit("/", 1)[1]: v for k, v in tensors.items()
                if k.startswith(f"outputs/{i}/")}
        out = TaskOutput.from_saved(mine, fields)
        side.outputs[out.key] = out
    for j, fields in enumerate(meta.get("samples", [])):
        mine = {k.rsplit("/", 1)[1]: v for k, v in tensors.items()
                if k.startswith(f"samples/{j}/")}
        fields = dict(fields)
        k = int(fields.pop("seed_offset"))
        out = TaskOutput.from_saved(mine, fields)
        side.samples[(out.task, out.clip, k)] = out
    return side


# ---- comparison --------------------------------------------------------------------------

def _rate(out: TaskOutput | None, clip: TaskClip | None, which: str) -> dict[str, Any]:
    """The error rate of a transcript (stt: the output; tts-a / vc: the round trip)."""
    if out is None or out.error or clip is None or not clip.text:
        return {"rate": None, "why": "no transcript" if clip is not None and not clip.text
                else "no output"}
    hyp = out.text if which == "text" else out.roundtrip
    if hyp is None:
        return {"rate": None, "why": "not transcribed back"}
    return metrics.error_rate(clip.text, hyp, clip.language)


def _waveform_metrics(a: np.ndarray, b: np.ndarray, rate: int) -> dict[str, Any]:
    """SNR and log-mel distance (dB) of two task outputs (the codec front end at their rate)."""
    spec = audio.codec_spec(sample_rate=rate) if rate != 16_000 else audio.codec_spec()
    m = parity.waveform_metrics(a, b, spec)
    return {k: m[k] for k in ("snr_db", "level_db", "mel_distance_db") if k in m}


def _trajectory_row(d: TaskOutput, r: TaskOutput, limits: trajectory.Limits) -> dict[str, Any]:
    """The target's teacher-forced step logits against the reference's own, and the free-running
    divergence explained by the reference's margin there."""
    if d.steps is None or r.steps is None or not len(r.steps):
        why = d.extra.get("teacher_forced_error", "")
        return {"teacher-forced steps": 0, **({"teacher-forced error": why} if why else {})}
    n = min(len(d.steps), len(r.steps))
    st = trajectory.steps(r.steps[:n], d.steps[:n], limits.near_tie_k)
    one = trajectory.summarize([st], limits)
    div = trajectory.divergence(r.tokens, d.tokens, st.margin, limits)
    text, kind = div.describe(), div.kind
    if kind != "none" and d.prompt != r.prompt:  # each side tokenized the clip itself
        text, kind = (f"first differs at step {div.index}, after a different prompt (each side "
                      "tokenized the clip: see the prompt ids)"), "prompt"
    return {"teacher-forced steps": n, "_steps": st,
            "stable top-1 %": 100 * one.stable_top1, "near-tie hit %": 100 * one.near_tie_hit,
            "cosine p5": one.cosine_p5, "rel L2 p95 %": 100 * one.rel_l2_p95,
            "divergence": text, "divergence kind": kind}


def compare(runs: TaskRuns) -> pd.DataFrame:
    """One row per task and input: both sides' outputs, agreement, error rates, timings."""
    by_name = {c.name: c for c in runs.clips}
    limits = trajectory.Limits.for_dtype(runs.target.side.dtype_name)
    rows = []
    for task, name in runs.keys:
        d, r = runs.target.get(task, name), runs.reference.get(task, name)
        heard = name.split(" (round")[0]
        clip = by_name.get(heard)
        if task == "tts-a" and clip is not None:
            clip = spoken(clip)  # scored against the text it spoke
        row: dict[str, Any] = {"task": task, "input": name,
                               "reference text": clip.text if clip else ""}
        err = (d.error if d else "not run") or (r.error if r else "not run")
        if err:
            row["error"] = err
            rows.append(row)
            continue
        prompt = parity.token_agreement(d.prompt, r.prompt)
        gen = parity.token_agreement(d.tokens, r.tokens)
        row.update(_trajectory_row(d, r, limits))
        # stt is scored on its transcript, tts-a / vc on the round trip; a chat reply (covo)
        # is not a transcript of what it heard, so it has no error rate
        which = {"stt": "text", "tts-a": "roundtrip", "vc": "roundtrip"}.get(task)
        none = {"rate": None, "why": "a reply, not a transcript"}
        rd, rr = (_rate(d, clip, which), _rate(r, clip, which)) if which else (none, none)
        row.update({
            "target output": (d.text or "(empty)") if task not in ("tts-a", "vc") else
            f"{len(d.semantic)} audio ids, {d.audio_out_s:.2f} s",
            "reference output": (r.text or "(empty)") if task not in ("tts-a", "vc") else
            f"{len(r.semantic)} audio ids, {r.audio_out_s:.2f} s",
            "prompt agreement %": prompt["agreement_pct"],
            "agreement %": gen["agreement_pct"], "first divergence": gen["first_divergence"],
            "identical": gen["identical"], "ids (target/reference)":
                f"{gen['tokens_target']}/{gen['tokens_reference']}",
            "metric": rd.get("metric") or rr.get("metric") or "",
            "rate target": rd["rate"], "rate reference": rr["rate"],
            "TTFT target s": d.first_token_s, "TTFT reference s": r.first_token_s,
            "first audio target s": d.first_audio_s, "first audio reference s": r.first_audio_s,
            "RTF target": d.rtf, "RTF reference": r.rtf})
        if task in ("tts-a", "vc", "a2ta") and d.wave is not None and r.wave is not None:
            if gen["identical"]:
                row.update(_waveform_metrics(d.wave, r.wave, d.rate))
        if task == "a2ta":
            row["target output"] = (d.text or "") + f" [{len(d.semantic)} audio ids]"
            row["reference output"] = (r.text or "") + f" [{len(r.semantic)} audio ids]"
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "error" not in frame:
        frame["error"] = None
    return frame


def _sample(out: TaskOutput, clip: TaskClip | None, seed: int) -> dict[str, Any]:
    """One output's measures for the distributions (helpers.tasks.sampled)."""
    if clip is not None and out.task == "tts-a":
        clip = spoken(clip)
    which = {"stt": "text", "tts-a": "roundtrip", "vc": "roundtrip"}.get(out.task)
    rate = _rate(out, clip, which)["rate"] if which else None
    return {"task": out.task, "input": out.clip, "seed": seed, "generated ids": len(out.tokens),
            "speech seconds": out.audio_out_s or None, "error rate": rate}


def sampled_pairs(runs: TaskRuns) -> pd.DataFrame:
    """decoding=release: every seed's outputs of both sides, paired by task, input and seed
    (helpers.tasks.sampled.paired); empty for greedy decoding."""
    if runs.settings.seeds <= 1:
        return sampled.paired(sampled.per_sample({}))
    by_name = {c.name: c for c in runs.clips}
    recs: dict[str, list[dict[str, Any]]] = {}
    for label, side in (("target", runs.target), ("reference", runs.reference)):
        outs = [(o, 0) for o in side.outputs.values()]
        outs += [(o, k) for (_t, _c, k), o in side.samples.items()]
        recs[label] = [_sample(o, by_name.get(o.clip.split(" (round")[0]), runs.seed + k)
                       for o, k in outs if not o.error]
    return sampled.paired(sampled.per_sample(recs))


def sampled_view(runs: TaskRuns) -> Section:
    """The distributions' table (per task and measure) and the pairs (data["pairs"]), or why
    there are none."""
    pairs = sampled_pairs(runs)
    if runs.settings.seeds <= 1 or pairs.empty:
        why = ("decoding is greedy: one deterministic output per input, compared id by id above"
               if runs.settings.decoding != "release" else "no pair of outputs to compare")
        return Section("sampled", notes=[why])
    judged = "judged" if runs.profile == "real" else "shown, not judged (random weights)"
    note = (f"{runs.settings.seeds} seeds x {pairs['input'].nunique()} inputs per task, "
            f"{judged}; mean and percentile-bootstrap {sampled.LEVEL:.0%} interval over the "
            f"pairs ({sampled.BOOTSTRAP_RESAMPLES} resamples, generator seed "
            f"{sampled.BOOTSTRAP_SEED}).")
    return Section("sampled", sampled.summary(pairs), notes=[note], data={"pairs": pairs})


# ---- tables ------------------------------------------------------------------------------

def inputs_table(runs: TaskRuns) -> pd.DataFrame:
    return pd.DataFrame([{"input": c.name, "from": c.origin, "language": c.language,
                          "transcript": c.text or "-", "seconds": round(c.seconds, 3),
                          "used": "yes" if c.usable else "no",
                          "why not / warnings": c.error or "; ".join(c.warnings) or "-"}
                         for c in runs.clips])


TASK_COLUMNS = ("input", "reference text", "target output", "reference output", "metric",
                "rate target", "rate reference", "teacher-forced steps", "stable top-1 %",
                "near-tie hit %", "cosine p5", "rel L2 p95 %", "agreement %", "divergence",
                "snr_db", "mel_distance_db", "error")


def task_table(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    if frame.empty:
        return frame
    sub = frame[frame["task"] == task]
    return sub[[c for c in TASK_COLUMNS if c in sub.columns and sub[c].notna().any()]]


TIMING_COLUMNS = ("TTFT target s", "TTFT reference s", "first audio target s",
                  "first audio reference s", "RTF target", "RTF reference")


def timing_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task: the median over inputs of each timing (NaN-free medians only)."""
    if frame.empty or "TTFT target s" not in frame:
        return pd.DataFrame()
    rows = []
    for task, sub in frame.groupby("task", sort=False):
        row: dict[str, Any] = {"task": task, "inputs": len(sub)}
        for col in TIMING_COLUMNS:
            vals = pd.to_numeric(sub[col], errors="coerce").dropna()
            row[col] = float(vals.median()) if len(vals) else None
        rows.append(row)
    return pd.DataFrame(rows)


# ---- players -----------------------------------------------------------------------------

def players(runs: TaskRuns, per_task: int = Settings.players) -> list[tuple[str, Any]]:
    """(heading, players) for the first inputs of each task with a speech output: what the
    task heard (tts-a: the reference voice; vc: the source and the reference voice; a2ta: the
    user's turn) and each side's output, peak-normalized for listening (captions say so)."""
    by_name = {c.name: c for c in runs.clips}
    shown: list[tuple[str, Any]] = []
    counts: dict[str, int] = {}
    for task, name in runs.keys:
        d, r = runs.target.get(task, name), runs.reference.get(task, name)
        if counts.get(task, 0) >= per_task or d is None or r is None or d.error or r.error:
            continue
        if not any(o.wave is not None and o.wave.size for o in (d, r)):
            continue  # a text output (stt, a2t): its table row says it all
        counts[task] = counts.get(task, 0) + 1
        heard = [(by_name.get(name.split(" (round")[0]), "input")]
        if task == "tts-a":
            heard = [(by_name.get(d.voice), "reference voice")]
        elif task == "vc":
            heard.append((by_name.get(d.voice), "reference voice"))
        clips = [(c.samples16, 16_000, f"{what} {c.name}: \"{c.text or '-'}\"")
                 for c, what in heard if c is not None and c.usable]
        for side, out in ((runs.target, d), (runs.reference, r)):
            if out.wave is not None and out.wave.size:
                clips.append((out.wave, out.rate, f"{task} output on {side.side.label}; "
                              f"{len(out.semantic)} audio ids"))
        text = (f" (text: \"{spoken(by_name[name]).text}\")" if task == "tts-a"
                and name in by_name else "")
        shown.append((f"{task}: {name}{text}", playback.players(clips, normalize=True)))
    return shown


# ---- results and checks --------------------------------------------------------------------

def checks(runs: TaskRuns, frame: pd.DataFrame) -> list[Check]:
    out: list[Check] = []
    used = sum(c.usable for c in runs.clips)
    out.append(Check("inputs usable", f"{used}/{len(runs.clips)}", "every input", None if (
        runs.clips and runs.clips[0].origin == "AUDIO_DIR") else used == len(runs.clips),
        "helpers.tasks.inputs validation (a user's unusable file is a row, not a failure)",
        detail="; ".join(f"{c.name}: {c.error}" for c in runs.clips if c.error)[:300] or "-"))
    for side in (runs.reference, runs.target):
        if side.error:
            out.append(Check(f"tasks run on {side.side.label}", "no", "runs", False,
                             "stage contract", detail=side.error))
    if frame.empty:
        return out
    errors = frame[frame["error"].notna()] if "error" in frame else frame.iloc[0:0]
    out.append(Check.judge("tasks run on both sides (rows without an error)",
                           len(frame) - len(errors), "==", len(frame),
                           "stage contract: failures are rows, and none is expected",
                           detail="; ".join(errors["error"].astype(str).head(2)) or "no errors"))
    ok = frame[frame["error"].isna()] if "error" in frame else frame
    op, limit, source = parity.agreement_rule()
    limits = trajectory.Limits.for_dtype(runs.target.side.dtype_name)
    real = runs.profile == "real"
    for task in runs.tasks:
        sub = ok[ok["task"] == task]
        if sub.empty:
            continue
        # a gpa prompt holds the clip's audio token ids (each side tokenizes the clip; stage 4
        # judges the quantizers); a covo prompt holds placeholders for continuous features
        compared = [("agreement %", "generated ids, free-running")]
        if task in ("stt", "tts-a", "vc"):
            compared.insert(0, ("prompt agreement %", "prompt ids (the clip's audio tokens)"))
        for col, what in compared:
            kinds = sub.get("divergence kind", pd.Series(dtype=str)).value_counts().to_dict()
            out.append(Check(f"{task}: {what} agree target vs reference (%, lowest input)",
                             float(sub[col].min()), f"info ({op} {limit} was the rule)", None,
                             source, detail="explained, not judged: divergences at a near-tie "
                             f"{kinds.get('near-tie', 0)}, at a stable step "
                             f"{kinds.get('stable', 0)}, after a different prompt "
                             f"{kinds.get('prompt', 0)} (see the teacher-forced checks)"))
        seqs = [x for x in sub.get("_steps", pd.Series(dtype=object))
                if isinstance(x, trajectory.Steps)]
        if seqs:
            pooled = trajectory.summarize(seqs, limits)
            out.extend(trajectory.checks(f"{task}: teacher-forced ids", pooled, limits))
        failed = sub.get("teacher-forced error", pd.Series(dtype=object)).dropna()
        if len(failed):  # an input without step logits for another reason (a later round
            # after one longer than TRAJECTORY_STEPS) is counted in the detail of the checks above
            out.append(Check(f"{task}: teacher-forced ids compared", f"{len(seqs)}/{len(sub)}",
                             "every input", False, "stage contract",
                             detail="; ".join(failed.astype(str).head(2))))
        rates = sub.dropna(subset=["rate target", "rate reference"])
        for metric, group in rates.groupby("metric", sort=True):  # WER (en) and CER (zh) apart
            drop = float(metrics.drop_points(group["rate target"].mean(),
                                             group["rate reference"].mean()))
            label = "" if task == "stt" else " (round trip: the model's own stt of its output)"
            name = f"{task}: {metric} drop target vs reference (points){label}"
            detail = f"mean over {len(group)} input(s); normalization: {metrics.NORMALIZATION}"
            if real:
                out.append(Check.judge(name, drop, "<=", metrics.MAX_DROP_POINTS,
                                       metrics.DROP_SOURCE, detail=detail))
            else:
                out.append(Check(name, drop, f"<= {metrics.MAX_DROP_POINTS}", None,
                                 metrics.DROP_SOURCE, detail="random weights: an error rate "
                                 "of noise means nothing; shown, not judged. " + detail))
        if "snr_db" in sub and sub["snr_db"].notna().any():
            lim, src = parity.snr_rule()
            out.append(Check.judge(f"{task}: waveform SNR target vs reference where the ids "
                                   "agree (dB, lowest input)", float(sub["snr_db"].min()), ">=",
                                   lim, src, unit=" dB"))
            lim, src = parity.level_rule()
            out.append(Check.judge(f"{task}: waveform level target vs reference where the ids "
                                   "agree (|dB|, largest input)",
                                   float(sub["level_db"].abs().max()), "<=", lim, src, unit=" dB"))
        rtf = pd.to_numeric(sub["RTF target"], errors="coerce").dropna()
        if len(rtf):
            out.append(Check(f"{task}: end-to-end real-time factor on the target (median)",
                             round(float(rtf.median()), 4), "measured, not judged", None,
                             TIMING_PROTOCOL))
    if runs.settings.seeds > 1:
        out.extend(sampled.checks(sampled.summary(sampled_pairs(runs)), judged=real))
    return out


def record(st: Any, runs: TaskRuns, frame: pd.DataFrame) -> None:
    """The stage's results: its section, or the reason it was skipped."""
    if runs.skipped:
        st.skip(runs.skipped)
        return
    st.record(results_section(runs, frame))


def _sampled_metrics(runs: TaskRuns) -> dict[str, Any]:
    pairs = sampled_pairs(runs)
    return {"seeds": runs.settings.seeds, "pairs": pairs.to_dict("records"),
            "summary": sampled.summary(pairs).to_dict("records") if len(pairs) else [],
            "bootstrap": {"resamples": sampled.BOOTSTRAP_RESAMPLES, "level": sampled.LEVEL,
                          "seed": sampled.BOOTSTRAP_SEED}}


def results_section(runs: TaskRuns, frame: pd.DataFrame) -> Section:
    shown = frame.drop(columns=["_steps"], errors="ignore")
    records = shown.replace({np.nan: None}).to_dict("records") if not frame.empty else []
    metrics_ = {"model": runs.model, "profile": runs.profile,
                "target": runs.target.side.label, "reference": runs.reference.side.label,
                "device_reason": runs.reason, "tasks": list(runs.tasks),
                "settings": {"max_new_tokens": runs.settings.max_new_tokens,
                             "decoding": runs.settings.decoding,
                             "audio_ids_only": runs.settings.audio_ids_only,
                             "roundtrip": runs.settings.roundtrip,
                             "roundtrip_inputs": runs.settings.roundtrip_inputs,
                             "seeds": runs.settings.seeds},
                "normalization": metrics.NORMALIZATION, "timing_protocol": TIMING_PROTOCOL,
                "inputs": inputs_table(runs).to_dict("records"), "rows": records,
                "timings": timing_table(frame).replace({np.nan: None}).to_dict("records"),
                "outputs": {side: [o.record() for o in s.outputs.values()] for side, s in
                            (("target", runs.target), ("reference", runs.reference))},
                "sampled": _sampled_metrics(runs),
                "reference_source": runs.store.metric() if runs.store else {},
                "notes": runs.settings.notes}
    return Section("tasks", checks=checks(runs, frame), metrics=metrics_)
