"""Per-probe verdicts: a status and the metrics behind it, from device, CPU and golden outputs.

Rules (the row's `rule` names the one applied):
  benchmark    float outputs with a float64 golden: msprobe's benchmark standard, the error
               ratios device-vs-golden over CPU-same-dtype-vs-golden (RMSE and mean relative
               error <= 2, max relative error <= 10; data/thresholds.json "error_ratio").
  float64      float64 outputs: the golden is the CPU result itself, so the device must agree
               with it within msprobe's float32 tolerance (the strictest published) everywhere.
  network      no golden could be computed: device vs CPU under msprobe's whole-network rule.
  exact        integer / boolean outputs: device equals CPU element for element.
  binary       replayed operators that only move, select or exactly transform data (views,
               copies, concatenation, padding, gather, casts, rounding): bit-identical to the
               CPU, as msprobe's binary-consistency standard requires for such operators.
  distribution random draws: the same fixed generator seed gives the same draws twice on the
               device, and a chi-square goodness-of-fit test against the expected counts gives
               p >= 0.001.
  run          only that the operation runs (uninitialized memory, random ops in a trace).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from helpers import parity
from helpers.device import dtype_name

STATUSES = ("ok", "fallback", "mismatch", "unsupported", "crashed", "timeout", "skipped")
SEVERITY = {"ok": 0, "skipped": 1, "fallback": 2, "mismatch": 3, "unsupported": 4,
            "timeout": 5, "crashed": 6}
FAILED = ("unsupported", "crashed", "timeout")
CHI2_ALPHA = 1e-3
CHI2_SOURCE = ("Pearson chi-square goodness-of-fit at significance 0.001 (this project's "
               "choice: one false alarm in a thousand runs)")
RULES = {
    "benchmark": parity.source("msprobe-benchmark"),
    "float64": parity.source("msprobe") + " (float32 tolerance, the strictest published)",
    "network": parity.source("msprobe-network"),
    "exact": "integer and boolean results must be identical",
    "binary": ("MindStudio probe binary-consistency standard (BinaryCompareStandard in msprobe's "
               "api_precision_standard.yaml: pad, gather, reshape, transpose, select, round, "
               "neg, ... must be bit-identical)"),
    "distribution": CHI2_SOURCE,
    "run": "not compared: the output is random or uninitialized memory",
}
RULE_TEXT = {
    "benchmark": ("float outputs, float64 golden available",
                  "RMSE and mean relative error ratios <= 2, max relative error ratio <= 10 "
                  "(device vs golden over CPU vs golden); no NaN/Inf the CPU does not have"),
    "float64": ("float64 outputs", "every element within msprobe's float32 tolerance of the "
                "CPU float64 result"),
    "network": ("float outputs without a golden", "cosine >= 0.99 or max abs <= 0.001; "
                "cosine >= 0.9; max abs <= 1; no NaN/Inf (device vs CPU)"),
    "exact": ("integer / boolean outputs", "identical to the CPU, element for element"),
    "binary": ("replayed data-movement and exact operators (views, copies, cat, pad, gather, "
               "casts, round, neg)", "bit-identical to the CPU (NaN where the CPU has NaN)"),
    "distribution": ("random draws (fixed generator)", "the same seed draws the same twice; "
                     "chi-square p >= 0.001 against the expected counts"),
    "run": ("raised, skipped, random or uninitialized outputs", "only whether it runs"),
}
NAN = float("nan")


@dataclass
class Verdict:
    status: str
    rule: str
    cosine: float = NAN
    max_abs: float = NAN
    max_rel: float = NAN
    mean_rel: float = NAN
    error_ratio: float = NAN  # msprobe RMSE ratio (device vs golden over CPU vs golden)
    ratio_mean_rel: float = NAN
    ratio_max_rel: float = NAN
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(statuses: list[str]) -> str:
    """The most severe status of a list (ok for an empty list)."""
    return max(statuses, key=SEVERITY.__getitem__, default="ok")


def flatten(out: Any) -> list[torch.Tensor]:
    """Outputs as a flat list of CPU tensors; Python numbers become 0-d tensors."""
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu()]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten(o)]
    if isinstance(out, bool):
        return [torch.tensor(out)]
    if isinstance(out, int):
        return [torch.tensor(out, dtype=torch.int64)]
    if isinstance(out, float):
        return [torch.tensor(out, dtype=torch.float64)]
    return []  # None, dtypes, sizes: nothing numeric to compare


def _is_float(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point or t.dtype.is_complex


def _real_dtype(t: torch.Tensor) -> str:
    if t.dtype.is_complex:
        return "float64" if t.dtype == torch.complex128 else "float32"
    return dtype_name(t.dtype)


def _vector(ts: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([parity.to64(t).ravel() for t in ts]) if ts else np.zeros(0)


def _structure_problem(dev: list[torch.Tensor], cpu: list[torch.Tensor]) -> str:
    if len(dev) != len(cpu):
        return f"the device returns {len(dev)} output tensor(s), the CPU {len(cpu)}"
    for i, (d, c) in enumerate(zip(dev, cpu, strict=True)):
        if d.dtype != c.dtype:
            return (f"output {i}: the device returns {str(d.dtype)[6:]} where the CPU returns "
                    f"{str(c.dtype)[6:]}")
        if d.shape != c.shape:
            return f"output {i}: shape {list(d.shape)} on the device, {list(c.shape)} on the CPU"
    return ""


def judge(dev_out: Any, cpu_out: Any, golden_out: Any | None) -> Verdict:
    """Status of one probe from its device, CPU (same dtype) and float64 golden outputs."""
    dev, cpu = flatten(dev_out), flatten(cpu_out)
    problem = _structure_problem(dev, cpu)
    if problem:
        return Verdict("mismatch", "exact", message=problem)
    exact = [(d, c) for d, c in zip(dev, cpu, strict=True) if not _is_float(d)]
    floats = [(d, c) for d, c in zip(dev, cpu, strict=True) if _is_float(d)]
    exact_msg = _exact_problem(exact)
    if not floats:
        return _exact_verdict(exact, exact_msg)
    golden = flatten(golden_out) if golden_out is not None else None
    fdev, fcpu = [d for d, _ in floats], [c for _, c in floats]
    gold = [g for g in golden if _is_float(g)] if golden is not None else None
    verdict = _float_verdict(fdev, fcpu, gold)
    if exact_msg and verdict.status == "ok":
        verdict.status, verdict.message = "mismatch", exact_msg
    return verdict


def judge_binary(dev_out: Any, cpu_out: Any) -> Verdict:
    """Bit-identical outputs (NaN matches NaN): for operators that do no rounding arithmetic."""
    dev, cpu = flatten(dev_out), flatten(cpu_out)
    problem = _structure_problem(dev, cpu)
    if problem:
        return Verdict("mismatch", "binary", message=problem)
    diff, n = 0, 0
    for d, c in zip(dev, cpu, strict=True):
        same = d == c
        if _is_float(d):
            same |= torch.isnan(d) & torch.isnan(c)
        diff += int((~same).sum())
        n += d.numel()
    if diff:
        return Verdict("mismatch", "binary", message=(
            f"{diff} of {n} elements differ from the CPU (an operator that only moves or "
            "exactly transforms data must match bit for bit)"))
    return Verdict("ok", "binary", cosine=1.0, max_abs=0.0, max_rel=0.0, mean_rel=0.0)


def _exact_problem(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> str:
    for i, (d, c) in enumerate(pairs):
        if not torch.equal(d, c):
            n = int((d != c).sum())
            return f"integer output {i}: {n} of {d.numel()} elements differ from the CPU"
    return ""


def _exact_verdict(pairs: list[tuple[torch.Tensor, torch.Tensor]], problem: str) -> Verdict:
    diffs = [(d.double() - c.double()).abs().max().item() for d, c in pairs if d.numel()]
    v = Verdict("mismatch" if problem else "ok", "exact", max_abs=max(diffs, default=0.0),
                message=problem)
    if not problem:
        v.cosine, v.max_rel, v.mean_rel = 1.0, 0.0, 0.0
    return v


def _float_verdict(dev: list[torch.Tensor], cpu: list[torch.Tensor],
                   golden: list[torch.Tensor] | None) -> Verdict:
    dtype = _real_dtype(dev[0])
    d, c = _vector(dev), _vector(cpu)
    if dtype == "float64":
        return _float64_verdict(d, c)
    g = _vector(golden) if golden else None
    if g is None or g.size != d.size:
        return _network_verdict(d, c, dtype)
    return _benchmark_verdict(d, c, g, dtype)


def _metrics(v: Verdict, cmp: parity.Comparison) -> Verdict:
    v.cosine, v.max_abs, v.max_rel, v.mean_rel = cmp.cosine, cmp.max_abs, cmp.max_rel, cmp.mean_rel
    return v


def _benchmark_verdict(d: np.ndarray, c: np.ndarray, g: np.ndarray, dtype: str) -> Verdict:
    dev_cmp = parity.compare(d, g, dtype)
    if np.array_equal(d, c):  # the CPU's very bits: the same error against the golden
        cpu_cmp, ratios = dev_cmp, {"rmse": 1.0, "mean_rel": 1.0, "max_rel": 1.0}
    else:
        cpu_cmp = parity.compare(c, g, dtype)
        ratios = parity.error_ratios(d, c, g, dtype)
    v = _metrics(Verdict("ok", "benchmark"), dev_cmp)
    v.error_ratio, v.ratio_mean_rel, v.ratio_max_rel = (
        ratios["rmse"], ratios["mean_rel"], ratios["max_rel"])
    if dev_cmp.nonfinite > cpu_cmp.nonfinite:
        v.status = "mismatch"
        v.message = f"{dev_cmp.nonfinite} NaN/Inf values where the golden is finite"
    elif not parity.ratios_pass(ratios):
        v.status = "mismatch"
        v.message = _ratio_message(ratios)
    return v


def _ratio_message(ratios: dict[str, float]) -> str:
    limits = parity.thresholds()["error_ratio"]
    over = [f"{k} ratio {ratios[k]:.3g} > {limits[k]['max']:g}" for k in limits
            if not ratios[k] <= limits[k]["max"]]
    return "error ratio over msprobe's benchmark limit: " + ", ".join(over)


def _float64_verdict(d: np.ndarray, c: np.ndarray) -> Verdict:
    cmp = parity.compare(d, c, "float32")
    v = _metrics(Verdict("ok", "float64"), cmp)
    if cmp.within_tol < 1.0 or cmp.nonfinite:
        v.status = "mismatch"
        v.message = (f"{(1.0 - cmp.within_tol) * 100:.3g}% of elements outside the float32 "
                     f"tolerance of the CPU float64 result")
    return v


def _network_verdict(d: np.ndarray, c: np.ndarray, dtype: str) -> Verdict:
    cmp = parity.compare(d, c, dtype)
    ok, why = parity.network_verdict(cmp)
    v = _metrics(Verdict("ok" if ok else "mismatch", "network"), cmp)
    v.message = "no float64 golden; device vs CPU: " + why
    return v


def judge_distribution(draws: torch.Tensor, repeat: torch.Tensor,
                       expected: torch.Tensor) -> Verdict:
    """Counts per category from the device (twice, same seed) against the expected counts."""
    obs, exp = parity.to64(draws).ravel(), parity.to64(expected).ravel()
    same = torch.equal(draws.cpu(), repeat.cpu())
    p = chi2_pvalue(obs, exp * obs.sum() / exp.sum())
    cmp = parity.compare(obs, exp, "float32")
    v = _metrics(Verdict("ok", "distribution"), cmp)
    v.message = f"chi-square p = {p:.3g} against the expected counts"
    if not same:
        v.status, v.message = "mismatch", "the same generator seed gave different draws; " + v.message
    elif not p >= CHI2_ALPHA:
        v.status = "mismatch"
        v.message += f" (< {CHI2_ALPHA:g})"
    return v


def chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson chi-square goodness-of-fit p-value, k - 1 degrees of freedom: the chi-square
    survival function is the regularized upper incomplete gamma Q(df / 2, x / 2)."""
    stat = float(((observed - expected) ** 2 / expected).sum())
    df = observed.size - 1
    q = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                torch.tensor(stat / 2, dtype=torch.float64))
    return float(q)


def short_error(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, shortened to `limit` characters."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    msg = f"{type(exc).__name__}: {first}"
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."
