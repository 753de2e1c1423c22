"""The stage's audio comparison, on the sides run_all loads: the Whisper log-mel front end on
the device vs the CPU per fixture, and every audio component x fixture, target vs reference.

What is compared, per fixture:
  front end   the Whisper log-mel (float32 STFT on each side) device vs CPU: helpers.parity
              compare() and msprobe's whole-network rule, as computed and, for a lower-precision
              target, as the model receives it (cast); the difference is shown as a heatmap
  tokenizer   token ids over the tokens that cover the clip (agreement, %), and the pooled
              encoder states the codes are chosen from, under the whole-network rule
  codec       its codes (agreement, %; BiCodec: the 32 global and the 50 Hz semantic tokens
              together and apart); then the reference's codes decoded on each side (the
              decoder's numerics on equal input): waveform SNR, cosine, log-mel distance (dB)
  vocoder     the clip's audio tokens vocoded on each side: the same waveform metrics
A component without typed outputs (Covo's Whisper encoder and adapter) is compared once, on the
recipe's inputs, by the whole-network rule. Token, waveform metrics and the rules are
helpers.parity's. Every failure (a fixture that does not load, a component that raises) is a
row, not a crash.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers import audio, models, parity, players, trajectory
from helpers.models import audio_components as ac
from helpers.records import Check
from helpers.stages.accuracy_parity.plan import PLAYERS_DEFAULT
from helpers.stages.accuracy_parity.sections import _network_check, _verdict
from helpers.stages.accuracy_parity.sides import RECIPE_INPUTS, FixtureClip, Runs
from helpers.stages.kit import CONTRACT, SAVED_DPI, Section, Stage
from helpers.tables import table

NETWORK_SOURCE = "msprobe-network"

# ---- the front end ----------------------------------------------------------------------------


def frontend_section(runs: Runs) -> Section:
    """Whisper log-mel of every fixture on the target device vs the CPU: as computed (float32
    STFT on the device) and, for a lower-precision target, as the model receives it."""
    p, spec = runs.plan, audio.WHISPER
    dtype = p.target.dtype_name
    tol_dtype = dtype if dtype in ("bfloat16", "float16") else "bfloat16"
    rows = []
    for clip in runs.clips:
        if not clip.ok:
            rows.append({"fixture": clip.name, "as": "log-mel", "error": clip.error})
            continue
        dev, ref = torch.from_numpy(clip.mel_dev), torch.from_numpy(clip.mel_ref)
        rows.append(_frontend_row(clip.name, "float32 on the device", dev, ref, tol_dtype))
        if p.target.dtype != torch.float32:
            rows.append(_frontend_row(clip.name, f"model input ({dtype})", dev.to(p.target.dtype),
                                      ref, tol_dtype))
    frame = pd.DataFrame(rows)
    if "error" in frame and not frame["error"].astype(bool).any():
        frame = frame.drop(columns="error")
    return Section("audio_frontend", frame, _frontend_checks(frame, tol_dtype),
                   _frontend_metrics(frame), [_frontend_note(runs, spec, tol_dtype)])


def _frontend_row(name: str, what: str, t: torch.Tensor, r: torch.Tensor, tol: str,
                  ) -> dict[str, Any]:
    cmp = parity.compare(t, r, tol)
    return {"fixture": name, "as": what, "shape": "x".join(map(str, r.shape)),
            "max_abs": cmp.max_abs, "mean_abs": cmp.mean_abs, "mean_rel": cmp.mean_rel,
            "cosine": cmp.cosine, "within_tol_pct": 100 * cmp.within_tol,
            "nonfinite": cmp.nonfinite, "msprobe_rule": _verdict(cmp), "error": ""}


def _frontend_checks(frame: pd.DataFrame, tol: str) -> list[Check]:
    if "msprobe_rule" not in frame:
        return [Check("audio front end: computed", False, "every fixture", False,
                      CONTRACT, "; ".join(frame["error"]))]
    ok = frame["msprobe_rule"].eq("PASS")
    rule = parity.thresholds()["frontend"]["within_tol_pct"]
    worst = float(frame["within_tol_pct"].min(skipna=False))
    return [Check.judge("audio front end: rows within the whole-network rule", int(ok.sum()), "==",
                        len(frame), parity.source(NETWORK_SOURCE),
                        detail="; ".join(frame.loc[~ok, "fixture"].astype(str))),
            Check.judge(f"audio front end: worst share within {tol} tolerance (%)", worst,
                        rule["op"], rule["limit"], parity.source(rule["source"]))]


def _frontend_metrics(frame: pd.DataFrame) -> dict[str, Any]:
    if "max_abs" not in frame:
        return {"rows": len(frame)}
    return {"rows": len(frame), "max_abs": float(frame["max_abs"].max()),
            "mean_rel": float(frame["mean_rel"].max()),
            "cosine_min": float(frame["cosine"].min()),
            "within_tol_pct_min": float(frame["within_tol_pct"].min())}


def _frontend_note(runs: Runs, spec: audio.MelSpec, tol: str) -> str:
    dev = runs.plan.target.device
    extra = (" The target device is the CPU, so the float32 rows compare the CPU with itself "
             "(exactly zero); the model-input rows show the cast to the target dtype."
             if dev.type == "cpu" else "")
    return (f"{spec.name} log-mel (n_fft {spec.n_fft}, hop {spec.hop_length}, {spec.n_mels} "
            f"bins) of every fixture at {spec.sample_rate} Hz, on `{dev}` vs the CPU; elements "
            f"within {tol} tolerance as in the Covo report.{extra}")


# ---- the components ---------------------------------------------------------------------------


def _typed(name: str) -> bool:
    return name in ac.PARTS


def components_section(runs: Runs) -> Section:
    """Each audio component x fixture, target vs reference: one row per output (a component
    without typed outputs: one row per output on the recipe's inputs), the checks, and per
    component the worst case over fixtures."""
    if not runs.reference.components and not runs.reference.failed("inputs"):
        return Section("audio_components", notes=[
            f"The {runs.plan.model} recipe has no audio components (only its language model, "
            "compared through the logits above)."])
    rows: list[dict[str, Any]] = []
    checks = [_fixtures_check(runs), *_missing_checks(runs)]
    for name in runs.reference.components:
        why = runs.target.failed(name) or runs.reference.failed(name)
        if why:
            checks.append(Section.failure(f"audio component {name}", why).checks[0])
            continue
        mine = [r for key in runs.reference.components[name] for r in _rows(runs, name, key)]
        rows += mine
        checks += (_typed_checks(runs, name, mine) if _typed(name)
                   else [r["_check"] for r in mine if "_check" in r])
    shown_rows = {(r["component"], r["input"]): r for r in rows}
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    metrics = {"dtype": runs.plan.target.dtype_name, "reference": runs.plan.reference.label,
               "component_dtypes": runs.target.dtypes, "components": summary(runs, rows),
               "fixtures": [_fixture_record(c) for c in runs.clips]}
    note = ("Each component runs on the same inputs on both sides, so every row is that "
            "component's own error, not an accumulated one; a typed component runs on every "
            "fixture from the clip (its front end on each side's device), a codec decodes the "
            "reference's codes on both sides.")
    return Section("audio_components", pd.DataFrame(rows), checks, metrics, [note],
                   data={"rows": shown_rows})


def _rows(runs: Runs, name: str, key: str) -> list[dict[str, Any]]:
    """The rows of one component on one input (a fixture, or the recipe's inputs)."""
    t = runs.target.components.get(name, {}).get(key)
    r = runs.reference.components[name][key]
    inputs = runs.reference.inputs_note.get(name, "") if key == RECIPE_INPUTS else key
    base = {"component": name, "input": inputs}
    if t is None:
        why = runs.target.errors.get(f"{name} on {key}", "not run on the target")
        return [{**base, "error": why}]
    if _typed(name):
        return [{**base, **_typed_metrics(name, t, r, runs.target.dtypes.get(name, "float32"))}]
    out = []
    for k in r:
        cmp = parity.compare(t[k], r[k], runs.plan.target.dtype_name)
        label = f"audio component {name}" + ("" if k == "output" else f" {k}")
        out.append({**base, "output": k, "shape": "x".join(map(str, r[k].shape)),
                    "rel_l2_pct": 100 * cmp.rel_l2, "max_abs": cmp.max_abs,
                    "mean_abs": cmp.mean_abs, "mean_rel": cmp.mean_rel, "cosine": cmp.cosine,
                    "within_tol_pct": 100 * cmp.within_tol, "nonfinite": cmp.nonfinite,
                    "msprobe_rule": _verdict(cmp),
                    "_check": _network_check(f"{label}: whole-network rule", cmp)})
    return out


def _typed_metrics(name: str, t: dict[str, torch.Tensor], r: dict[str, torch.Tensor],
                   dtype: str) -> dict[str, Any]:
    """Token agreement, encoder states and waveform metrics of one typed component on one clip."""
    kind = ac.part(name).kind
    if kind == "tokenizer":
        n = int(r["lengths"][0])
        states = parity.compare(t["states"][:, :n], r["states"][:, :n], dtype)
        ok, why = parity.network_verdict(states)
        codes = trajectory.codes(r["tokens"][0, :n], t["tokens"][0, :n], r["margins"][:n].numpy(),
                                 trajectory.code_margin(dtype))
        return {"tokens": n, "agreement_pct": _agree(t["tokens"][0, :n], r["tokens"][0, :n]),
                "near_tie_codes": codes.near_tie, "clear_code_misses": codes.clear,
                "states_cosine": states.cosine, "states_max_abs": states.max_abs,
                "network_ok": ok, "network_detail": why,
                "_tokens": (t["tokens"][0, :n].numpy(), r["tokens"][0, :n].numpy())}
    spec = audio.codec_spec() if kind == "codec" else ac.VOCODER_SPEC
    m = parity.waveform_metrics(t["waveform"][0], r["waveform"][0], spec, dtype)
    if "codes" in r:
        m.update(codes=r["codes"].shape[-1], agreement_pct=_agree(t["codes"], r["codes"]))
    for stream in ("semantic", "global"):  # BiCodec's two token streams, apart
        if f"{stream}_tokens" in r:
            m[f"{stream}_tokens"] = r[f"{stream}_tokens"].shape[-1]
            m[f"{stream}_agreement_pct"] = _agree(t[f"{stream}_tokens"], r[f"{stream}_tokens"])
    m["_waves"] = (t["waveform"][0].numpy(), r["waveform"][0].numpy())
    return m


def _agree(t: torch.Tensor, r: torch.Tensor) -> float:
    return parity.token_agreement(t, r)["agreement_pct"]


def _fixtures_check(runs: Runs) -> Check:
    loaded = sum(c.ok for c in runs.clips)
    return Check.judge("all fixtures load without errors", loaded, "==", len(runs.clips),
                       "data/audio/fixtures.json: every shipped fixture must pass "
                       "helpers.audio validation", detail=f"{loaded} of {len(runs.clips)}")


def _missing_checks(runs: Runs) -> list[Check]:
    """A typed component the recipe has that did not load on the reference: a fact about
    MODEL_DIR at profile real (informational), a failure of a built-in shape otherwise."""
    if runs.reference.failed():
        return []
    missing = [n for n in models.get(runs.plan.model).audio_parts if n not in runs.reference.components]
    return [Check(f"{n}: loaded", "no", "loads", None if runs.plan.profile == "real" else False,
                  "the recipe's audio components", detail="the recipe left it out (see the "
                  "model loading stage's notes)") for n in missing]


def _typed_checks(runs: Runs, name: str, rows: list[dict[str, Any]]) -> list[Check]:
    """Runs on every fixture; ids agree (judged at float32); states; waveform SNR."""
    good = [r for r in rows if "error" not in r]
    failed = [r["error"] for r in rows if "error" in r]
    out = [Check.judge(f"{name}: runs on every loaded fixture on both sides", len(good), "==",
                       sum(c.ok for c in runs.clips), CONTRACT,
                       detail="; ".join(failed[:2]) or "no errors")]
    if not good:
        return out
    dtype = runs.target.dtypes.get(name, "float32")
    if any("clear_code_misses" in r for r in good):
        near = sum(r["near_tie_codes"] for r in good)
        out.append(Check.judge(f"{name}: codes that differ at a clear margin (of all fixtures)",
                               sum(r["clear_code_misses"] for r in good), "==", 0,
                               parity.source("calibrated"), detail=f"{near} differ at a "
                               f"near-tie ({dtype} may pick either code: the reference's two "
                               f"nearest within {trajectory.code_margin(dtype):.3g} of the "
                               "mean squared state norm)"))
    if any("agreement_pct" in r for r in good):
        op, limit, source = parity.agreement_rule()
        what = "tokens" if ac.part(name).kind == "tokenizer" else "codes"
        label = f"{name}: {what} agree device vs CPU (%, lowest fixture)"
        value = min(r["agreement_pct"] for r in good)
        out.append(Check.judge(label, value, op, limit, source) if dtype == "float32" else
                   Check(label, value, f"{op} {limit} judged at float32 only", None, source,
                         detail=f"{dtype} vs a float32 reference: a nearest-code search flips "
                         "where two codes are almost equally near; no published standard for "
                         "reduced precision"))
    if any("states_cosine" in r for r in good):
        bad = [r for r in good if not r["network_ok"]]
        out.append(Check(f"{name}: pooled encoder states within the whole-network rule",
                         min(r["states_cosine"] for r in good), "every fixture", not bad,
                         parity.source(NETWORK_SOURCE),
                         detail="value: lowest cosine; " + (bad[0]["network_detail"] if bad
                                                            else "all fixtures pass")))
    if any("snr_db" in r for r in good):
        floor, source = parity.snr_rule()
        what = "decoded waveform (CPU codes)" if ac.part(name).kind == "codec" else "waveform"
        out.append(Check.judge(f"{name}: {what} SNR device vs CPU (dB, lowest fixture)",
                               min(r["snr_db"] for r in good), ">=", floor, source, unit=" dB"))
        limit, source = parity.level_rule()
        out.append(Check.judge(f"{name}: {what} level device vs CPU (|dB|, largest fixture)",
                               max(abs(r["level_db"]) for r in good), "<=", limit, source,
                               unit=" dB"))
    return out


SUMMARY = (("agreement_pct", min), ("snr_db", min), ("cosine", min), ("states_cosine", min),
           ("mel_distance_db", max), ("semantic_agreement_pct", min),
           ("global_agreement_pct", min), ("rel_l2_pct", max))


def summary(runs: Runs, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per component: the worst case over its inputs (JSON values)."""
    out: dict[str, Any] = {}
    for name in runs.reference.components:
        mine = [r for r in rows if r["component"] == name]
        good = [r for r in mine if "error" not in r]
        s: dict[str, Any] = {"inputs_ok": len(good), "inputs_failed": len(mine) - len(good),
                             "dtype": runs.target.dtypes.get(name)}
        if _typed(name):
            s.update(kind=ac.part(name).kind,
                     upstream_dtype=ac.upstream_dtype(name, runs.plan.target.device.type))
        for key, worst in SUMMARY:
            vals = [r[key] for r in good if key in r]
            if vals:
                s[f"{key}_{worst.__name__}"] = worst(vals)
        out[name] = s
    return out


def _fixture_record(c: FixtureClip) -> dict[str, Any]:
    return {"name": c.name, "ok": c.ok, "error": c.error, "warnings": c.warnings,
            "seconds": c.duration_s}


def components_notes(runs: Runs) -> list[str]:
    """What the components ran in, and what the profile's weights mean for their outputs."""
    p = runs.plan
    notes = [f"components: {p.component_dtype}: " + ", ".join(
        f"{n} {d}" for n, d in runs.target.dtypes.items()) +
        f"; reference: `{p.reference.label}`, same weights"]
    if p.profile == "tiny":
        notes.append("profile tiny: random weights from a fixed seed, so every output is "
                     "noise; the figures show agreement and speed, not quality")
    if p.profile == "full-shape":
        notes.append("profile full-shape: the real dimensions with random weights; outputs "
                     "are noise, timings are those of the real shapes")
    return notes


# ---- tables -----------------------------------------------------------------------------------


def fixtures_table(runs: Runs) -> pd.DataFrame:
    rows = [{"fixture": c.name, "language": c.fixture.language, "text": c.fixture.text,
             "file": f"{c.fixture.sample_rate} Hz, {c.fixture.channels} ch, {c.fixture.subtype}",
             "seconds": round(c.duration_s or c.fixture.duration_s, 3), "loaded": c.ok,
             "warnings / error": c.error or "; ".join(c.warnings) or "none"} for c in runs.clips]
    return pd.DataFrame(rows)


def components_table(runs: Runs) -> pd.DataFrame:
    """One row per typed audio component: kind, class, parameters here and at full shape,
    role, the dtype it ran in on the target."""
    from helpers.models import weights

    rows = []
    for n in [n for n in runs.reference.components if _typed(n)]:
        p = ac.part(n)
        with weights.quiet():
            full = sum(t.numel() for t in weights.skeleton(
                ac.loader(n), ac.config(n, "full-shape"), torch.float32).parameters())
        rows.append({"component": n, "kind": p.kind, "class": ac.loader(n).__name__,
                     "parameters (full-shape)": full, "in Hz": p.input_rate,
                     "out Hz": p.output_rate or "tokens", "role": p.role,
                     "dtype (target)": runs.target.dtypes.get(n)})
    return pd.DataFrame(rows)


def parity_table(sec: Section, name: str) -> pd.DataFrame:
    """One row per fixture for one component: its parity metrics, or its error."""
    frame = sec.table
    if frame.empty:
        return frame
    sub = frame[frame["component"] == name].drop(columns=["component"])
    drop = [c for c in sub.columns if c in ("network_detail", "peak_ref") or sub[c].isna().all()]
    return sub.drop(columns=drop)


# ---- figures and players ----------------------------------------------------------------------


def pick(runs: Runs, names: str = PLAYERS_DEFAULT) -> list[FixtureClip]:
    """The loaded clips whose fixture is in the comma list (the ones given players)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    return [c for c in runs.clips if c.ok and c.name in wanted]


def fixture_figure(c: FixtureClip, runs: Runs) -> Any:
    """Waveform, Whisper log-mel (device) and the device-minus-CPU log-mel difference."""
    from helpers import plots

    dev = runs.plan.target.device
    fig, (ax_w, ax_m, ax_d) = plots.stacked(3, height=6.0, titled=(1, 2))
    t = np.arange(c.samples16.shape[0]) / 16_000
    ax_w.plot(t, c.samples16, linewidth=0.5)
    ax_w.set_ylabel("amplitude")
    ax_w.set_title(f"{c.name}: \"{c.fixture.text}\" (16 kHz mono as the models hear it)")
    img = players.show_mel(ax_m, c.mel_dev, audio.WHISPER, title=f"log-mel on {dev}")
    plots.colorbar(img, ax_m, "log-mel")
    diff = c.mel_dev - c.mel_ref
    span = float(np.abs(diff).max(initial=0.0))
    what = f"max |diff| {span:.3g}" if span else "identical: every difference is 0"
    img = players.show_mel(ax_d, diff, audio.WHISPER, cmap="RdBu_r", vmin=-(span or 1.0),
                           vmax=span or 1.0, title=f"{dev} minus cpu ({what})")
    plots.colorbar(img, ax_d, "difference")
    return fig


def input_player(c: FixtureClip, runs: Runs, st: Stage | None = None) -> Any:
    """The input clip's player with its waveform / log-mel / difference figure (both media);
    with a Stage `st` the figure is also saved as the stage's PNG (drawn once for equal clips
    and log-mels: players.cached_png)."""
    caption = (f"input {c.name} ({c.fixture.language}): \"{c.fixture.text}\"; file "
               f"{c.fixture.sample_rate} Hz {c.fixture.channels} ch, played as the 16 kHz mono "
               "the components hear")
    from PIL import Image

    if st is None:
        return players.player(c.samples16, 16_000, caption, fig=fixture_figure(c, runs),
                              figure_on_screen=True)
    what = ("fixture", c.name, c.fixture.text, str(runs.plan.target.device), SAVED_DPI)
    png = players.cached_png(what, [c.samples16, c.mel_dev, c.mel_ref],
                             lambda: _saved_png(fixture_figure(c, runs)), drawn_by=[__file__])
    path = st.save_png(png, f"fixture-{c.name}")
    with Image.open(path) as saved:
        png64 = players.image_base64(saved, scale=players.DPI / SAVED_DPI)
    return players.player(c.samples16, 16_000, caption, figure_on_screen=True, png=png64)


def _saved_png(fig: Any) -> bytes:
    """A figure as the stage saves it (kit.Stage.save_figure), as PNG bytes; closed after."""
    import io

    import matplotlib.pyplot as plt

    from helpers import plots

    buf = io.BytesIO()
    plots.translate(fig)
    plots.save_png(fig, buf, SAVED_DPI)
    plt.close(fig)
    return buf.getvalue()


def _row(sec: Section, name: str, fixture: str) -> dict[str, Any] | None:
    return sec.data.get("rows", {}).get((name, fixture))


def shown(sec: Section, runs: Runs, c: FixtureClip, name: str, n: int = 16) -> Any:
    """What one component on one fixture shows: its first token ids on both sides and where
    they differ (a tokenizer), or its two waveform outputs side by side (SNR in the caption,
    peak-normalized for listening and drawing); None when it did not run."""
    row = _row(sec, name, c.name)
    if row is None:
        return None
    if "_tokens" in row:
        d, f = row["_tokens"]
        differ = [str(i) for i, (a, b) in enumerate(zip(d, f, strict=True)) if a != b]
        head = f"first {min(n, len(d))} of {len(d)} tokens (12.5 Hz)"
        rows = [{"side": side, head: " ".join(str(int(t)) for t in ids[:n])}
                for side, ids in (("device", d), ("cpu", f))]
        rows.append({"side": "differ at", head: ", ".join(differ) or "nowhere"})
        return table(pd.DataFrame(rows))
    if "_waves" not in row:
        return None
    p = runs.plan
    clips = []
    for x, caption in ((row["_waves"][0], f"{name} output on {p.target.label} (SNR "
                        f"{row['snr_db']:.1f} dB vs {p.reference.label})"),
                       (row["_waves"][1], f"{name} output on {p.reference.label}")):
        y, level = parity.peak_normalize(x)
        text = (caption + " (all zero)" if level == -np.inf else
                f"{caption}; peak {level:.1f} dBFS, shown at -1 dBFS")
        clips.append((y, ac.part(name).output_rate, text))
    return players.players(clips)
