"""Stage 4 (accuracy parity), the audio components on every shipped fixture: each clip through
the recipe's audio components on the selected device and on the CPU in float32, with parity,
token tables and players. (Their real-time factors are the performance stage's; the model's
tasks end to end are stage 6's.)

What is compared, per fixture:
  front end   the Whisper log-mel (float32 STFT on each side) device vs CPU: helpers.parity
              compare() and msprobe's whole-network rule; the difference is shown as a heatmap
  tokenizer   token ids device vs CPU over the tokens that cover the clip (agreement, %), and
              the pooled encoder states under the whole-network rule
  codec       its codes device vs CPU (agreement, %; BiCodec: the 32 global and the 50 Hz
              semantic tokens together and apart); then the CPU's codes decoded on each side
              (the decoder's numerics on equal input, as when it speaks an LM's tokens):
              waveform SNR (dB), cosine, log-mel distance (dB); the dtype upstream would use
              (BiCodec: float16 on CUDA) is recorded next to the run's
  vocoder     the clip's 100-band log-mel vocoded on each side: waveform SNR, cosine, mel distance
Both sides (helpers.stages.kit.Side) hold the same weights: the reference is built or read on
the CPU in float32 (tiny: the recipe's cache folder, the same files recipe.load reads;
full-shape: the recipe's seed) and the device copy is that module moved to the device and cast
to the run's dtype.

Every failure (a fixture that does not load, a component that raises) is a row, not a crash.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers import audio, models, parity, players
from helpers.config import RunConfig
from helpers.models import audio_components as ac
from helpers.models.base import Recipe
from helpers.records import Check
from helpers.stages.kit import Section, Side, Stage, Target, failure_text, reference_side
from helpers.tables import table

REFERENCE_DTYPE = torch.float32
DB_PER_NEPER = 20.0 / math.log(10.0)  # ln-magnitude mel difference -> dB
NETWORK_SOURCE = "msprobe-network"
PLAYERS_DEFAULT = ("en_fox", "zh_weather", "en_stereo_48k")


def snr_limit() -> tuple[float, str]:
    """The waveform SNR floor: msprobe's whole-network cosine 0.99, expressed as SNR."""
    cos = parity.thresholds()["network"]["cosine_soft"]
    snr = parity.snr_for_cosine(cos)
    return round(snr, 1), (f"{parity.source(NETWORK_SOURCE)}: cosine >= {cos}, as SNR "
                           f"= -10 log10(1/{cos}^2 - 1) = {snr:.1f} dB")


def agreement_limit() -> tuple[str, float, str]:
    """Token agreement (%): the GPA report's top-1 agreement rule for float32."""
    rule = parity.thresholds()["logits_float32"]["top1_agreement_pct"]
    return rule["op"], rule["limit"], parity.source(rule["source"]) + " (top-1 agreement)"


# ---- setup ----------------------------------------------------------------------------------

@dataclass
class AudioRun:
    """The components on both sides: the target (dev) and the CPU float32 reference (ref)."""

    model: str
    profile: str
    parts: list[str]
    dev: Side
    ref: Side
    reason: str  # device selection reason
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # component -> why it is missing
    modules: dict[str, dict[str, nn.Module]] = field(
        default_factory=lambda: {"target": {}, "reference": {}})  # side role -> name -> module
    # the target dtype of each component (COMPONENT_DTYPES: the run's DTYPE, or upstream's rule)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)

    def module(self, side: Side, name: str) -> nn.Module:
        return self.modules[side.role][name]

    def dtype(self, side: Side, name: str) -> torch.dtype:
        """The dtype `name` runs in on `side` (the reference: always its float32)."""
        return self.dtypes.get(name, side.dtype) if side is self.dev else side.dtype

    def dtype_name(self, side: Side, name: str) -> str:
        return str(self.dtype(side, name)).removeprefix("torch.")


# component_dtype knob: "run" = every component in the run's DTYPE; "upstream" = each as its
# upstream code runs it on this device type (helpers.models.audio_components.upstream_dtype:
# BiCodec float16 on CUDA, float32 elsewhere; the GLM tokenizer float32), others in DTYPE
COMPONENT_DTYPES = ("run", "upstream")


def check_component_dtype(rule: str) -> None:
    if rule not in COMPONENT_DTYPES:
        from helpers.errors import ConfigError

        raise ConfigError(f"accuracy_parity.component_dtype is {rule!r}",
                          f"use one of {', '.join(COMPONENT_DTYPES)}")


def component_dtype(name: str, dev: Side, rule: str) -> torch.dtype:
    """The target dtype of component `name` under `rule` (see COMPONENT_DTYPES)."""
    check_component_dtype(rule)
    chosen = ac.upstream_dtype(name, dev.device.type) if rule == "upstream" else ""
    return getattr(torch, chosen) if chosen else dev.dtype


def load_reference(recipe: Recipe, cfg: RunConfig, names: list[str]) -> dict[str, nn.Module]:
    """The audio components on the CPU in float32, with the recipe's weights for cfg.seed
    (tiny: its cache folder; full-shape: its seeds; real: MODEL_DIR's saves of the classes)."""
    from helpers.models import cache, weights

    order = recipe.component_names()
    out: dict[str, nn.Module] = {}
    with weights.quiet():
        if cfg.profile in ("tiny", "real"):
            root = (cache.ensure(recipe, cfg.seed)[0] if cfg.profile == "tiny"
                    else Path(cfg.model_dir).expanduser())
            configs = ac.read_configs(recipe, root)
            for n in names:
                out[n] = weights.read(ac.loader(n), recipe.component_dir(root, n),
                                      f"{recipe.name} {n}", configs[n], REFERENCE_DTYPE, None)
        else:
            for n in names:
                skel = weights.skeleton(ac.loader(n), ac.config(n, cfg.profile), REFERENCE_DTYPE)
                out[n] = weights.materialize(skel, {"": "cpu"}, cfg.seed + order.index(n))
    return out


def prepare(tgt: Target, component_dtypes: str = "run") -> AudioRun:
    """Load the reference components on the CPU and copy them to the run's target, each in
    its dtype (see COMPONENT_DTYPES; a bad rule is a ConfigError before anything loads)."""
    check_component_dtype(component_dtypes)
    cfg = tgt.cfg
    dev, ref = tgt.side, reference_side(REFERENCE_DTYPE)
    recipe = models.get(cfg.model)
    names = list(recipe.audio_parts)
    run = AudioRun(recipe.name, cfg.profile, [], dev, ref, tgt.reason)
    if cfg.profile == "real":
        root = Path(cfg.model_dir).expanduser()
        for n in [n for n in names if not ac.saved_in(recipe.component_dir(root, n), n)]:
            run.errors[n] = (f"{recipe.component_dir(root, n)} holds no save of "
                             f"{ac.loader(n).__name__}" + (
                                 "" if n in (*ac.RELEASE_FORMAT, "vocoder")
                                 else " (the release's own format is not read)"))
        names = [n for n in names if n not in run.errors]
    for n in names:
        try:
            m = load_reference(recipe, cfg, [n])[n]
            run.modules["reference"][n] = m
            run.dtypes[n] = component_dtype(n, dev, component_dtypes)
            run.modules["target"][n] = copy.deepcopy(m).to(dev.device, run.dtypes[n]).eval()
        except Exception as exc:  # a component that cannot be built is a row
            run.errors[n] = failure_text(exc)
    run.parts = [n for n in names if n in run.modules["target"]]
    if cfg.profile == "tiny":
        run.notes.append("profile tiny: random weights from a fixed seed, so every output is "
                         "noise; the figures show agreement and speed, not quality")
    if cfg.profile == "full-shape":
        run.notes.append("profile full-shape: the real dimensions with random weights; outputs "
                         "are noise, timings are those of the real shapes")
    if run.errors:
        run.notes.append("not run: " + "; ".join(f"{n}: {e}" for n, e in run.errors.items()))
    return run


def components_table(run: AudioRun) -> pd.DataFrame:
    """One row per audio component: kind, class, parameters here and at full shape, role."""
    from helpers.models import weights

    rows = []
    for n in dict.fromkeys([*run.parts, *run.errors]):  # loaded, then the ones that failed
        p = ac.part(n)
        with weights.quiet():
            full = sum(t.numel() for t in weights.skeleton(
                ac.loader(n), ac.config(n, "full-shape"), torch.float32).parameters())
        m = run.modules["reference"].get(n)
        rows.append({"component": n, "kind": p.kind, "class": ac.loader(n).__name__,
                     "parameters (this run)": sum(t.numel() for t in m.parameters()) if m else None,
                     "parameters (full-shape)": full, "in Hz": p.input_rate,
                     "out Hz": p.output_rate or "tokens", "role": p.role,
                     "status": "loaded" if m else run.errors.get(n, "")})
    return pd.DataFrame(rows)


# ---- one fixture ----------------------------------------------------------------------------

@dataclass
class ComponentResult:
    component: str
    kind: str
    ok: bool
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)  # numpy arrays for figures/players


@dataclass
class FixtureResult:
    fixture: audio.Fixture
    ok: bool
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    clip16: np.ndarray | None = None  # mono 16 kHz, what the speech components hear
    mel_dev: np.ndarray | None = None  # [128, frames] Whisper log-mel computed on the device
    mel_ref: np.ndarray | None = None  # the same on the CPU
    frontend: dict[str, Any] = field(default_factory=dict)
    components: dict[str, ComponentResult] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return 0.0 if self.clip16 is None else self.clip16.shape[-1] / 16_000


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def frontend(clip16: np.ndarray, run: AudioRun) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Whisper log-mel on the device and on the CPU (float32 STFT on both) and their comparison."""
    mel_dev = _np(audio.log_mel(clip16, audio.WHISPER, device=run.dev.device))
    mel_ref = _np(audio.log_mel(clip16, audio.WHISPER, device=run.ref.device))
    cmp = parity.compare(mel_dev, mel_ref, "float32")
    ok, why = parity.network_verdict(cmp)
    return mel_dev, mel_ref, {**cmp.to_dict(), "network_ok": ok, "network_detail": why}


def _agreement(a: torch.Tensor, b: torch.Tensor, n: int) -> float:
    """Share of equal ids among the first n positions, in percent."""
    a, b = a.reshape(-1)[:n].cpu(), b.reshape(-1)[:n].cpu()
    return 100.0 * float((a == b).double().mean()) if n else 100.0


def _waveform_metrics(dev: torch.Tensor, ref: torch.Tensor, spec: audio.MelSpec,
                      dtype: str) -> dict[str, Any]:
    """SNR, cosine, network verdict and log-mel distance (dB) of two waveforms."""
    d, r = _np(dev).reshape(-1), _np(ref).reshape(-1)
    n = min(d.shape[0], r.shape[0])
    d, r = d[:n], r[:n]
    cmp = parity.compare(d, r, dtype)
    ok, why = parity.network_verdict(cmp)
    mel_d = audio.log_mel(d, spec).numpy()
    mel_r = audio.log_mel(r, spec).numpy()
    return {"snr_db": parity.snr_db(d, r), "cosine": cmp.cosine, "max_abs": cmp.max_abs,
            "rel_l2": cmp.rel_l2, "mel_distance_db": DB_PER_NEPER * parity.mel_distance(mel_d, mel_r),
            "network_ok": ok, "network_detail": why, "peak_ref": float(np.abs(r).max(initial=0.0))}


def _clip_for(name: str, fx: FixtureResult) -> np.ndarray:
    rate = ac.part(name).input_rate
    if rate == 16_000:
        return fx.clip16
    return audio.load_checked(fx.fixture.path, sr=rate).samples


def run_component(name: str, fx: FixtureResult, run: AudioRun) -> ComponentResult:
    """One component on one fixture, device vs CPU; an exception becomes the row's error."""
    p = ac.part(name)
    res = ComponentResult(name, p.kind, ok=False)
    dtype = run.dtype_name(run.dev, name)
    try:
        clip = _clip_for(name, fx)
        cfg = ac.config_of(name, run.module(run.ref, name))
        ref_in = ac.inputs_for(name, clip, run.ref.device, run.ref.dtype, part_config=cfg)
        dev_in = ac.inputs_for(name, clip, run.dev.device, run.dtype(run.dev, name),
                                part_config=cfg)
        ref = ac.run(name, run.module(run.ref, name), ref_in)
        if p.kind == "tokenizer":
            dev = ac.run(name, run.module(run.dev, name), dev_in)
            n = int(ref["lengths"][0])
            states = parity.compare(dev["states"][:, :n], ref["states"][:, :n], dtype)
            ok, why = parity.network_verdict(states)
            res.metrics = {"tokens": n, "agreement_pct": _agreement(dev["tokens"], ref["tokens"], n),
                           "states_cosine": states.cosine, "states_max_abs": states.max_abs,
                           "network_ok": ok, "network_detail": why}
            res.outputs = {"tokens_dev": dev["tokens"][0, :n].cpu().numpy(),
                           "tokens_ref": ref["tokens"][0, :n].cpu().numpy()}
        else:
            dev = ac.run(name, run.module(run.dev, name), dev_in, codes=ref.get("codes"))
            spec = audio.codec_spec() if p.kind == "codec" else ac.VOCODER_SPEC
            res.metrics = _waveform_metrics(dev["waveform"], ref["waveform"], spec, dtype)
            if "codes" in ref:
                n = ref["codes"].shape[-1]
                res.metrics["codes"] = n
                res.metrics["agreement_pct"] = _agreement(dev["codes"], ref["codes"], n)
            for kind in ("semantic", "global"):  # BiCodec's two token streams, apart
                if f"{kind}_tokens" in ref:
                    t, r = dev[f"{kind}_tokens"], ref[f"{kind}_tokens"]
                    res.metrics[f"{kind}_tokens"] = r.shape[-1]
                    res.metrics[f"{kind}_agreement_pct"] = _agreement(t, r, r.shape[-1])
            res.outputs = {"wave_dev": _np(dev["waveform"][0]), "wave_ref": _np(ref["waveform"][0])}
        res.ok = True
    except Exception as exc:  # failures inside the stage are data
        res.error = failure_text(exc)
    return res


def run_fixture(fixture: audio.Fixture, run: AudioRun) -> FixtureResult:
    """Load and validate one fixture, compare its front end, run every component on it."""
    fx = FixtureResult(fixture, ok=False)
    try:
        clip = audio.load_checked(fixture.path, sr=16_000)
        fx.clip16, fx.warnings = clip.samples, clip.warnings
        fx.mel_dev, fx.mel_ref, fx.frontend = frontend(clip.samples, run)
        fx.ok = True
    except Exception as exc:
        fx.error = failure_text(exc)
        return fx
    for name in run.parts:
        fx.components[name] = run_component(name, fx, run)
    return fx


def select_fixtures(names: str) -> list[audio.Fixture]:
    """The shipped fixtures named in a comma list ('' = all), in the list's order."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    return [audio.fixture(n) for n in wanted] if wanted else audio.fixtures()


def run_all(run: AudioRun, names: str = "") -> list[FixtureResult]:
    return [run_fixture(f, run) for f in select_fixtures(names)]


# ---- tables ---------------------------------------------------------------------------------

def fixtures_table(results: list[FixtureResult]) -> pd.DataFrame:
    rows = [{"fixture": r.fixture.name, "language": r.fixture.language, "text": r.fixture.text,
             "file": f"{r.fixture.sample_rate} Hz, {r.fixture.channels} ch, {r.fixture.subtype}",
             "seconds": round(r.duration_s or r.fixture.duration_s, 3),
             "loaded": r.ok, "warnings / error": r.error or "; ".join(r.warnings) or "none"}
            for r in results]
    return pd.DataFrame(rows)


def parity_table(results: list[FixtureResult], name: str) -> pd.DataFrame:
    """One row per fixture for one component: its parity metrics, or its error."""
    rows = []
    for r in results:
        c = r.components.get(name)
        row: dict[str, Any] = {"fixture": r.fixture.name}
        if c is None:
            row["error"] = r.error or "not run"
        elif not c.ok:
            row["error"] = c.error
        else:
            row.update({k: v for k, v in c.metrics.items() if k != "network_detail"})
            if c.kind == "tokenizer":
                row["first tokens (device)"] = " ".join(map(str, c.outputs["tokens_dev"][:8]))
                row["first tokens (cpu)"] = " ".join(map(str, c.outputs["tokens_ref"][:8]))
        rows.append(row)
    return pd.DataFrame(rows)


# ---- figures and players --------------------------------------------------------------------

def fixture_figure(r: FixtureResult, run: AudioRun) -> Any:
    """Waveform, Whisper log-mel (device) and the device-minus-CPU log-mel difference."""
    from helpers import plots

    fig, (ax_w, ax_m, ax_d) = plots.figure(nrows=3, height=6.0, sharex=True)
    t = np.arange(r.clip16.shape[0]) / 16_000
    ax_w.plot(t, r.clip16, linewidth=0.5)
    ax_w.set_ylabel("amplitude")
    ax_w.set_title(f"{r.fixture.name}: \"{r.fixture.text}\" (16 kHz mono as the models hear it)")
    img = players.show_mel(ax_m, r.mel_dev, audio.WHISPER, title=f"log-mel on {run.dev.device}")
    fig.colorbar(img, ax=ax_m, pad=0.01, label="log-mel")
    diff = r.mel_dev - r.mel_ref
    span = float(np.abs(diff).max(initial=0.0))
    what = f"max |diff| {span:.3g}" if span else "identical: every difference is 0"
    img = players.show_mel(ax_d, diff, audio.WHISPER, cmap="RdBu_r", vmin=-(span or 1.0),
                         vmax=span or 1.0, title=f"{run.dev.device} minus cpu ({what})")
    fig.colorbar(img, ax=ax_d, pad=0.01, label="difference")
    return fig


def input_player(r: FixtureResult, run: AudioRun, st: Stage | None = None) -> Any:
    """The input clip's player with its waveform / log-mel / difference figure (both media);
    with a Stage `st` the figure is also saved as the stage's PNG."""
    caption = (f"input {r.fixture.name} ({r.fixture.language}): \"{r.fixture.text}\"; "
               f"file {r.fixture.sample_rate} Hz {r.fixture.channels} ch, played as the "
               "16 kHz mono the components hear")
    fig = fixture_figure(r, run)
    if st is not None:
        st.save_figure(fig, f"fixture-{r.fixture.name}")
    return players.player(r.clip16, 16_000, caption, fig=fig, figure_on_screen=True)


def tokens_table(r: FixtureResult, name: str, n: int = 16) -> Any:
    """The first n token ids on each side and the positions where they differ (or None)."""
    c = r.components.get(name)
    if c is None or not c.ok or "tokens_dev" not in c.outputs:
        return None
    d, f = c.outputs["tokens_dev"], c.outputs["tokens_ref"]
    differ = [str(i) for i, (a, b) in enumerate(zip(d, f, strict=True)) if a != b]
    rows = [{"side": run_side, f"first {min(n, len(ids))} of {len(ids)} tokens (12.5 Hz)":
             " ".join(str(int(t)) for t in ids[:n])} for run_side, ids in (("device", d), ("cpu", f))]
    rows.append({"side": "differ at", f"first {min(n, len(d))} of {len(d)} tokens (12.5 Hz)":
                 ", ".join(differ) or "nowhere"})
    return table(pd.DataFrame(rows))


def pick(results: list[FixtureResult], names: str) -> list[FixtureResult]:
    """The loaded results whose fixture is in the comma list (the ones given players)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    return [r for r in results if r.ok and r.fixture.name in wanted]


def output_players(r: FixtureResult, name: str, run: AudioRun) -> Any:
    """Device and CPU outputs of one waveform component side by side, SNR in the caption.

    Both are peak-normalized to -1 dBFS before playing and drawing (random tiny weights give
    outputs near -100 dBFS, which would be silence and a blank log-mel); captions say so.
    """
    c = r.components.get(name)
    if c is None or not c.ok or "wave_dev" not in c.outputs:
        return None
    rate = ac.part(name).output_rate
    snr = c.metrics["snr_db"]
    sides = ((c.outputs["wave_dev"], f"{name} output on {run.dev.label} (SNR {snr:.1f} dB vs "
              f"{run.ref.label})"), (c.outputs["wave_ref"], f"{name} output on {run.ref.label}"))
    clips = []
    for x, caption in sides:
        y, text = _normalized(x, caption)
        clips.append((y, rate, text))
    return players.players(clips)


def _normalized(x: np.ndarray, caption: str) -> tuple[np.ndarray, str]:
    peak = float(np.abs(x).max(initial=0.0))
    if peak == 0.0:
        return x, caption + " (all zero)"
    level = 20 * math.log10(peak)
    return x * (10 ** (-1 / 20) / peak), f"{caption}; peak {level:.1f} dBFS, shown at -1 dBFS"


# ---- results --------------------------------------------------------------------------------

def summary(results: list[FixtureResult], run: AudioRun) -> dict[str, Any]:
    """Per component: the worst case over fixtures (JSON values)."""
    out: dict[str, Any] = {}
    for name in run.parts:
        rows = [r.components[name] for r in results if name in r.components]
        good = [c for c in rows if c.ok]
        s: dict[str, Any] = {"kind": ac.part(name).kind, "fixtures_ok": len(good),
                             "fixtures_failed": len(rows) - len(good),
                             "dtype": run.dtype_name(run.dev, name),
                             "upstream_dtype": ac.upstream_dtype(name, run.dev.device.type)}
        if good:
            for key, pick in (("agreement_pct", min), ("snr_db", min), ("cosine", min),
                              ("states_cosine", min), ("mel_distance_db", max),
                              ("semantic_agreement_pct", min), ("global_agreement_pct", min)):
                vals = [c.metrics[key] for c in good if key in c.metrics]
                if vals:
                    s[f"{key}_{pick.__name__}"] = pick(vals)
        out[name] = s
    return out


def results_section(run: AudioRun, results: list[FixtureResult]) -> Section:
    """The section's metrics and checks (results key "audio_fixtures")."""
    metrics = {"model": run.model, "profile": run.profile, "device": str(run.dev.device),
               "dtype": run.dev.dtype_name, "reference": run.ref.label,
               "device_reason": run.reason, "notes": run.notes,
               "components": summary(results, run), "component_errors": run.errors,
               "fixtures": [_fixture_record(r) for r in results]}
    return Section("audio_fixtures", checks=checks(run, results), metrics=metrics)


def _fixture_record(r: FixtureResult) -> dict[str, Any]:
    return {"name": r.fixture.name, "ok": r.ok, "error": r.error, "warnings": r.warnings,
            "seconds": r.duration_s,
            "frontend": {k: v for k, v in r.frontend.items()},
            "components": {n: {"ok": c.ok, "error": c.error, **c.metrics}
                           for n, c in r.components.items()}}


def checks(run: AudioRun, results: list[FixtureResult]) -> list[Check]:
    loaded = sum(r.ok for r in results)
    out = [Check.judge("all fixtures load without errors", loaded, "==", len(results),
                       "data/audio/fixtures.json: every shipped fixture must pass "
                       "helpers.audio validation", detail=f"{loaded} of {len(results)}")]
    for name, why in run.errors.items():
        # at profile real a missing save is a fact about MODEL_DIR (informational); a
        # built-in shape that fails to build is a failure
        judged = None if run.profile == "real" and "holds no " in why else False
        out.append(Check(f"{name}: loaded", "no", "loads", judged,
                         "the recipe's audio components", detail=why))
    for name in run.parts:
        out += _component_checks(name, run, results)
    return out


def _component_checks(name: str, run: AudioRun, results: list[FixtureResult]) -> list[Check]:
    rows = [r.components[name] for r in results if name in r.components]
    good = [c for c in rows if c.ok]
    failed = [f"{c.error}" for c in rows if not c.ok]
    out = [Check.judge(f"{name}: runs on every loaded fixture on both sides", len(good), "==",
                       len(rows), "stage contract: failures are rows, and none is expected",
                       detail="; ".join(failed[:2]) or "no errors")]
    if not good:
        return out
    float32 = run.dtype(run.dev, name) == torch.float32
    if any("agreement_pct" in c.metrics for c in good):
        op, limit, source = agreement_limit()
        what = "tokens" if ac.part(name).kind == "tokenizer" else "codes"
        value = min(c.metrics["agreement_pct"] for c in good)
        if float32:
            out.append(Check.judge(f"{name}: {what} agree device vs CPU (%, lowest fixture)",
                                   value, op, limit, source))
        else:
            out.append(Check(f"{name}: {what} agree device vs CPU (%, lowest fixture)", value,
                             f"{op} {limit} judged at float32 only", None, source,
                             detail=f"{run.dtype_name(run.dev, name)} vs a float32 reference: a "
                             "nearest-code search flips where two codes are almost equally "
                             "near; no published standard for reduced precision"))
    if any("states_cosine" in c.metrics for c in good):
        bad = [c for c in good if not c.metrics["network_ok"]]
        out.append(Check(f"{name}: pooled encoder states within the whole-network rule",
                         min(c.metrics["states_cosine"] for c in good), "every fixture",
                         not bad, parity.source(NETWORK_SOURCE),
                         detail="value: lowest cosine; " + (bad[0].metrics["network_detail"]
                                                            if bad else "all fixtures pass")))
    if any("snr_db" in c.metrics for c in good):
        limit, source = snr_limit()
        value = min(c.metrics["snr_db"] for c in good)
        what = "decoded waveform (CPU codes)" if ac.part(name).kind == "codec" else "waveform"
        out.append(Check.judge(f"{name}: {what} SNR device vs CPU (dB, lowest fixture)",
                               value, ">=", limit, source, unit=" dB"))
    return out
