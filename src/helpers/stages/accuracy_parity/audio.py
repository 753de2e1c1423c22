"""The stage's audio sections: the Whisper log-mel front end on the device vs the CPU, and
every audio component of the recipe on identical inputs."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from helpers import audio, parity
from helpers.records import Check
from helpers.stages.accuracy_parity.plan import Plan
from helpers.stages.accuracy_parity.sections import _info, _network_check, _verdict
from helpers.stages.accuracy_parity.sides import Runs
from helpers.stages.kit import CONTRACT, Section


def frontend_section(p: Plan) -> Section:
    """Whisper log-mel of every shipped fixture on the target device vs the CPU: as computed
    (float32 STFT on the device) and, for a lower-precision target, as the model receives it
    (cast to the target dtype)."""
    spec, dtype = audio.WHISPER, p.target.dtype_name
    tol_dtype = dtype if dtype in ("bfloat16", "float16") else "bfloat16"
    rows = []
    for fx in audio.fixtures():
        try:
            wave = audio.load_fixture(fx.name, spec.sample_rate)
            ref = audio.log_mel(wave, spec, device="cpu")  # [M, N] float32
            dev = audio.log_mel(wave, spec, device=p.target.device)
        except Exception as exc:  # one bad clip is a row, not a crashed stage
            rows.append({"fixture": fx.name, "as": "log-mel", "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append(_frontend_row(fx.name, "float32 on the device", dev, ref, tol_dtype))
        if p.target.dtype != torch.float32:
            rows.append(_frontend_row(fx.name, f"model input ({dtype})", dev.to(p.target.dtype),
                                      ref, tol_dtype))
    frame = pd.DataFrame(rows)
    if "error" in frame and not frame["error"].astype(bool).any():
        frame = frame.drop(columns="error")
    return Section("audio_frontend", frame, _frontend_checks(frame, tol_dtype),
                   _frontend_metrics(frame), [_frontend_note(p, spec, tol_dtype)])


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
                        len(frame), parity.source("msprobe-network"),
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


def _frontend_note(p: Plan, spec: audio.MelSpec, tol: str) -> str:
    same = p.target.device.type == "cpu"
    extra = (" The target device is the CPU, so the float32 rows compare the CPU with itself "
             "(exactly zero); the model-input rows show the cast to the target dtype."
             if same else "")
    return (f"{spec.name} log-mel (n_fft {spec.n_fft}, hop {spec.hop_length}, {spec.n_mels} "
            f"bins) of every shipped fixture at {spec.sample_rate} Hz, on `{p.target.device}` "
            f"vs the CPU; elements within {tol} tolerance as in the Covo report.{extra}")


def components_section(runs: Runs) -> Section:
    """Each audio component of the recipe on identical inputs, target vs reference: float
    outputs by the whole-network rule, token / code outputs by their agreement."""
    names = list(runs.reference.inputs)
    if not names:
        why = runs.reference.failed("inputs")
        if why:
            return Section.failure("audio_components", why)
        return Section("audio_components", notes=[
            f"The {runs.plan.model} recipe has no audio components (only its language model, "
            "compared through the logits above)."])
    rows, checks = [], []
    for name in names:
        why = runs.target.failed(name) or runs.reference.failed(name)
        if why:
            checks.append(Section.failure(f"audio component {name}", why).checks[0])
            continue
        t, r = runs.target.components[name], runs.reference.components[name]
        for key in r:
            row, check = _component_row(name, key, t[key], r[key], runs, r.get("lengths"))
            rows.append(row)
            checks.append(check)
    metrics = {f"{row['component']}.{row['output']}": {
        k: row[k] for k in ("rel_l2_pct", "cosine", "agreement_pct") if k in row}
        for row in rows}
    note = ("Each component runs once on the same inputs on both sides (inputs cast to the "
            "side's dtype), so every row is that component's own error, not an accumulated one; "
            "a codec decodes the reference's codes on both sides.")
    return Section("audio_components", pd.DataFrame(rows), checks, metrics, [note])


def agreement(t: torch.Tensor, r: torch.Tensor, lengths: torch.Tensor | None = None) -> float:
    """Share (%) of equal elements; for [B, N] ids with per-row lengths [B], only the first
    lengths[b] of row b (the tokens that cover real audio, not the zero padding)."""
    if t.shape != r.shape:
        return 0.0
    same = t == r
    if lengths is not None and same.dim() == 2 and lengths.shape == same.shape[:1]:
        keep = torch.arange(same.shape[1])[None, :] < lengths[:, None].cpu()  # [B, N]
        return 100 * float(same[keep].double().mean()) if keep.any() else 100.0
    return 100 * float(same.double().mean())


def _component_row(name: str, key: str, t: torch.Tensor, r: torch.Tensor, runs: Runs,
                   lengths: torch.Tensor | None = None) -> tuple[dict[str, Any], Check]:
    base = {"component": name, "output": key, "inputs": runs.reference.inputs_note.get(name, ""),
            "shape": "x".join(map(str, r.shape))}
    label = f"audio component {name}" + ("" if key == "output" else f" {key}")
    if not r.is_floating_point():  # token ids / codes: share of equal elements
        pct = agreement(t, r, lengths if key != "lengths" else None)
        rule, dtype = parity.thresholds()["logits_float32"]["top1_agreement_pct"], runs.plan.target.dtype_name
        name_ = f"{label}: agreement (%)"
        src = parity.source(rule["source"]) + " (top-1 agreement rule)"
        check = (Check.judge(name_, pct, rule["op"], rule["limit"], src) if dtype == "float32"
                 else _info(name_, pct, f"info at {dtype} (float32: {rule['op']} {rule['limit']})",
                            src))
        return {**base, "agreement_pct": pct}, check
    cmp = parity.compare(t, r, runs.plan.target.dtype_name)
    row = {**base, "rel_l2_pct": 100 * cmp.rel_l2, "max_abs": cmp.max_abs,
           "mean_abs": cmp.mean_abs, "mean_rel": cmp.mean_rel, "cosine": cmp.cosine,
           "within_tol_pct": 100 * cmp.within_tol, "nonfinite": cmp.nonfinite,
           "msprobe_rule": _verdict(cmp)}
    return row, _network_check(f"{label}: whole-network rule", cmp)
