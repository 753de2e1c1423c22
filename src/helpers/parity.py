"""Comparison metrics (float64, each inside its mathematical range), dtype-aware tolerances
and verdicts. Thresholds come from data/thresholds.json, each with its named source."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from helpers import paths
from helpers.device import dtype_name
from helpers.records import read_json


@lru_cache(maxsize=1)
def thresholds() -> dict[str, Any]:
    return read_json(paths.DATA / "thresholds.json")


def source(key: str) -> str:
    """The full citation for a source key of thresholds.json."""
    return thresholds()["sources"].get(key, key)


@dataclass(frozen=True)
class Tolerance:
    dtype: str
    rtol: float
    small_value: float
    source: str


def tolerance(dtype: str) -> Tolerance:
    """msprobe's per-dtype tolerance; float64 and integer dtypes use float32's (the strictest)."""
    name = dtype_name(dtype)
    table = thresholds()["tolerance"]
    row = table.get(name, table["float32"])
    return Tolerance(name, row["rtol"], row["small_value"], source(row["source"]))


def to64(x: Any) -> np.ndarray:
    """Any tensor/array as a float64 numpy array on the host (complex -> real view)."""
    if hasattr(x, "detach"):
        import torch

        x = x.detach()
        if x.is_complex():
            x = torch.view_as_real(x)
        x = x.to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of the flattened arrays, computed on max-abs-scaled vectors (so
    large magnitudes cannot overflow) and clipped to [-1, 1]. Two all-zero vectors are
    identical (1.0); one all-zero vector against a non-zero one scores 0.0."""
    a, b = to64(a).ravel(), to64(b).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    if np.array_equal(a, b):  # exactly 1, not 1 - 2e-16 from rounding in the norms
        return 1.0
    sa, sb = np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0)
    if sa == 0.0 and sb == 0.0:
        return 1.0
    if sa == 0.0 or sb == 0.0:
        return 0.0
    a, b = a / sa, b / sb
    c = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return min(1.0, max(-1.0, c))


def rel_l2(target: Any, reference: Any) -> float:
    """||target - reference||_2 / ||reference||_2 (0 when both are zero, inf if only ref is)."""
    t, r = to64(target).ravel(), to64(reference).ravel()
    # scale both by one common factor so squares of large values cannot overflow
    scale = max(np.abs(t).max(initial=0.0), np.abs(r).max(initial=0.0))
    if np.isfinite(scale) and scale > 0.0:
        t, r = t / scale, r / scale
    num, den = float(np.linalg.norm(t - r)), float(np.linalg.norm(r))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def snr_db(target: Any, reference: Any) -> float:
    """Signal-to-noise ratio of target against reference in dB, float64:
    10 log10(sum(reference^2) / sum((target - reference)^2)).

    Range (-inf, +inf]: +inf when the arrays are identical, -inf when the reference is all
    zero and the target is not; NaN when either side holds NaN/Inf. Both arrays are scaled by
    one common factor first, so squares of large values cannot overflow.
    """
    t, r = to64(target).ravel(), to64(reference).ravel()
    if t.shape != r.shape:
        raise ValueError(f"shapes differ: target {t.shape} vs reference {r.shape}")
    if not (np.isfinite(t).all() and np.isfinite(r).all()):
        return float("nan")
    scale = max(np.abs(t).max(initial=0.0), np.abs(r).max(initial=0.0))
    if scale > 0.0:
        t, r = t / scale, r / scale
    noise, signal = float(np.sum((t - r) ** 2)), float(np.sum(r**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def mel_distance(target_log_mel: Any, reference_log_mel: Any) -> float:
    """Mean absolute difference of two log-mel spectrograms in their own log unit, float64,
    range [0, +inf) (NaN when either holds NaN/Inf). For natural-log magnitude mels (the codec
    / vocoder front end, helpers.audio.codec_spec) multiply by 20 / ln 10 = 8.686 for dB."""
    t, r = to64(target_log_mel), to64(reference_log_mel)
    if t.shape != r.shape:
        raise ValueError(f"shapes differ: target {t.shape} vs reference {r.shape}")
    if not (np.isfinite(t).all() and np.isfinite(r).all()):
        return float("nan")
    return float(np.mean(np.abs(t - r))) if t.size else 0.0


def snr_for_cosine(cosine_value: float) -> float:
    """The SNR (dB) an error orthogonal to the signal gives at this cosine similarity:
    cos = 1 / sqrt(1 + N/S), so SNR = -10 log10(1 / cos^2 - 1) (cosine 0.99 -> 17.0 dB)."""
    if not 0.0 < cosine_value <= 1.0:
        raise ValueError(f"cosine must be in (0, 1], got {cosine_value}")
    if cosine_value == 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 / cosine_value**2 - 1.0)


@dataclass(frozen=True)
class Comparison:
    """Target versus reference, elementwise, all in float64."""

    n: int
    cosine: float
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    rel_l2: float
    rmse: float
    within_tol: float  # share of elements within the dtype's msprobe tolerance, in [0, 1]
    nonfinite: int  # NaN/Inf elements in the target that the reference does not have
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BLOCK = 1 << 22  # elements: larger inputs are compared block by block (float64 temporaries
# of 32 MiB, not of the whole tensor: teacher-forced logits over a 180k vocabulary hold 10^8)


def _flat(x: Any) -> Any:
    """`x` flattened, without a copy where it can be: a detached torch tensor (on its device;
    complex -> real view) or a numpy array."""
    if hasattr(x, "detach"):
        import torch

        x = x.detach()
        return (torch.view_as_real(x) if x.is_complex() else x).reshape(-1)
    return np.asarray(x).reshape(-1)


def compare(target: Any, reference: Any, dtype: str = "float32") -> Comparison:
    """Elementwise comparison. Relative errors use msprobe's small-value rule: where
    |reference| < small_value, the error is judged absolutely against small_value instead of
    being divided by a near-zero number. Metrics cover the elements finite on both sides;
    NaN/Inf in the target alone are counted (nonfinite) and void cosine, max abs and relative
    L2. One pass over the inputs, BLOCK elements at a time (float64 temporaries of bounded
    size; the sums accumulated in float64 across blocks, in torch's threads)."""
    import torch

    ft, fr = _flat(target), _flat(reference)
    if ft.shape != fr.shape:
        raise ValueError(f"shapes differ: target {tuple(np.shape(target))} vs reference "
                         f"{tuple(np.shape(reference))}")
    tol = tolerance(dtype)
    n = int(ft.shape[0])
    if n == 0:
        return Comparison(0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0, tol.dtype)
    s = _Sums()
    for i in range(0, n, BLOCK):
        s.add(_as64(ft[i:i + BLOCK], torch), _as64(fr[i:i + BLOCK], torch), tol, torch)
    return s.result(n, tol, lambda: _scaled_norms(ft, fr, n, s.t_max, s.r_max, s.equal))


def _as64(x: Any, torch: Any) -> Any:
    """A block as a float64 torch tensor on the host (a view when it already is one)."""
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return x.to("cpu", torch.float64)


class _Sums:
    """compare()'s float64 running sums over the blocks of the elements finite on both sides."""

    def __init__(self) -> None:
        self.bad = self.m = self.ok = 0
        self.err_sum = self.err2 = self.rel_sum = self.err_max = self.rel_max = 0.0
        self.t_max = self.r_max = self.dot = self.tt = self.rr = 0.0
        self.equal = True

    def add(self, t: Any, r: Any, tol: Tolerance, torch: Any) -> None:
        # a NaN or Inf anywhere makes t @ t or r @ r non-finite: only then are the elements
        # sorted (overflowing squares of finite values land there too, and are kept)
        tt, rr = float(t @ t), float(r @ r)
        if not (math.isfinite(tt) and math.isfinite(rr)):
            t_ok, r_ok = torch.isfinite(t), torch.isfinite(r)
            self.bad += int((~t_ok & r_ok).sum())
            finite = t_ok & r_ok
            t, r = t[finite], r[finite]
            tt, rr = float(t @ t), float(r @ r)
        if not t.numel():
            return
        d = t - r
        err, mag = d.abs(), r.abs()
        small = mag < tol.small_value
        rel = torch.where(small, 0.0, err / mag)  # [m]; the divisions by 0 are not taken
        limit = torch.where(small, tol.small_value, tol.rtol * mag)
        self.ok += int((err <= limit).sum())
        self.m += t.numel()
        self.err_sum += float(err.sum())
        self.err2 += float(d @ d)
        self.rel_sum += float(rel.sum())
        block_max = float(err.max())
        self.err_max = max(self.err_max, block_max)
        self.rel_max = max(self.rel_max, float(rel.max()))
        # max |t| in one pass, no |t| temporary (exact, as t.abs().max())
        self.t_max = max(self.t_max, float(torch.linalg.vector_norm(t, math.inf)))
        self.r_max = max(self.r_max, float(mag.max()))
        self.dot += float(t @ r)
        self.tt += tt
        self.rr += rr
        self.equal = self.equal and block_max == 0.0  # finite t and r equal where t - r is 0

    def result(self, n: int, tol: Tolerance, scaled: Any) -> Comparison:
        """The comparison; `scaled` computes (cosine, relative L2) on max-scaled values, for
        magnitudes whose squares overflow float64 (the plain sums are used otherwise)."""
        m, nan = self.m, float("nan")
        if self.bad:
            cos, l2 = nan, math.inf
        elif not all(map(math.isfinite, (self.dot, self.tt, self.rr, self.err2))):
            cos, l2 = scaled()
        else:
            cos, l2 = self._norms()
        return Comparison(
            n=n, cosine=cos, max_abs=math.inf if self.bad else self.err_max,
            mean_abs=self.err_sum / m if m else 0.0, max_rel=self.rel_max,
            mean_rel=self.rel_sum / m if m else 0.0, rel_l2=l2,
            rmse=math.sqrt(self.err2 / m) if m else 0.0, within_tol=float(self.ok) / float(n),
            nonfinite=self.bad, dtype=tol.dtype)

    def _norms(self) -> tuple[float, float]:
        if self.equal or (self.t_max == 0.0 and self.r_max == 0.0):
            cos = 1.0
        elif self.t_max == 0.0 or self.r_max == 0.0:
            cos = 0.0
        else:
            cos = min(1.0, max(-1.0, self.dot / (math.sqrt(self.tt) * math.sqrt(self.rr))))
        if self.rr == 0.0:
            return cos, 0.0 if self.err2 == 0.0 else math.inf
        return cos, math.sqrt(self.err2) / math.sqrt(self.rr)


def _finite_blocks(ft: Any, fr: Any, n: int) -> Any:
    """(target, reference, NaN/Inf in the target only) per block: the elements finite on both
    sides, in float64."""
    for i in range(0, n, BLOCK):
        t, r = to64(ft[i:i + BLOCK]), to64(fr[i:i + BLOCK])
        t_ok, r_ok = np.isfinite(t), np.isfinite(r)
        finite = t_ok & r_ok
        bad = int((~t_ok & r_ok).sum())
        yield (t, r, bad) if finite.all() else (t[finite], r[finite], bad)


def _scaled_norms(ft: Any, fr: Any, n: int, t_max: float, r_max: float,
                  equal: bool) -> tuple[float, float]:
    """(cosine, relative L2) over the elements finite on both sides, block by block, on
    max-scaled values (as cosine() and rel_l2() scale), for magnitudes near float64's range."""
    scale = max(t_max, r_max)
    dot = tt = rr = diff = ref = 0.0
    for tf, rf, _ in _finite_blocks(ft, fr, n):
        if t_max > 0.0 and r_max > 0.0:
            a, b = tf / t_max, rf / r_max
            dot, tt, rr = dot + float(a @ b), tt + float(a @ a), rr + float(b @ b)
        if scale > 0.0 and math.isfinite(scale):
            a, b = tf / scale, rf / scale
            d = a - b
            diff, ref = diff + float(d @ d), ref + float(b @ b)
    if equal or (t_max == 0.0 and r_max == 0.0):
        cos = 1.0
    elif t_max == 0.0 or r_max == 0.0:
        cos = 0.0
    else:
        cos = min(1.0, max(-1.0, dot / (math.sqrt(tt) * math.sqrt(rr))))
    if ref == 0.0:
        return cos, 0.0 if diff == 0.0 else math.inf
    return cos, math.sqrt(diff) / math.sqrt(ref)


def network_verdict(cmp: Comparison) -> tuple[bool, str]:
    """msprobe's whole-network rule: not reached if (cosine < 0.99 and max abs > 0.001), or
    cosine < 0.9, or max abs > 1, or any NaN/Inf in the target."""
    th = thresholds()["network"]
    if cmp.nonfinite:
        return False, f"{cmp.nonfinite} NaN/Inf values in the target"
    if not cmp.cosine >= th["cosine_hard"]:  # a NaN cosine fails too
        return False, f"cosine {cmp.cosine:.6f} < {th['cosine_hard']}"
    if cmp.max_abs > th["max_abs_hard"]:
        return False, f"max abs error {cmp.max_abs:.3g} > {th['max_abs_hard']}"
    if cmp.cosine < th["cosine_soft"] and cmp.max_abs > th["max_abs_soft"]:
        return False, (f"cosine {cmp.cosine:.6f} < {th['cosine_soft']} and max abs "
                       f"{cmp.max_abs:.3g} > {th['max_abs_soft']}")
    return True, "within msprobe's whole-network rule"


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        return 1.0 if num == 0.0 else math.inf
    return num / den


def error_ratios(target: Any, reference: Any, golden: Any, dtype: str) -> dict[str, float]:
    """msprobe 'benchmark' standard: the target's error against a float64 golden divided by
    the reference's error (same dtype, other device) against the same golden. A ratio of 1
    means the device is exactly as accurate as the reference device."""
    return ratios_of(compare(target, golden, dtype), compare(reference, golden, dtype))


def ratios_of(device: Comparison, reference: Comparison) -> dict[str, float]:
    """error_ratios from the two comparisons against the golden, already made."""
    return {"rmse": _ratio(device.rmse, reference.rmse),
            "mean_rel": _ratio(device.mean_rel, reference.mean_rel),
            "max_rel": _ratio(device.max_rel, reference.max_rel)}


def ratios_pass(ratios: dict[str, float]) -> bool:
    limits = thresholds()["error_ratio"]
    return all(ratios[k] <= limits[k]["max"] for k in limits)


def _row_blocks(*xs: Any) -> Any:
    """The rows of the last axis of each of `xs`, a block of rows at a time, in float64."""
    rows = [x.detach().reshape(-1, x.shape[-1]) if hasattr(x, "detach")
            else np.asarray(x).reshape(-1, np.shape(x)[-1]) for x in xs]
    step = max(1, BLOCK // max(1, rows[0].shape[-1]))
    for i in range(0, rows[0].shape[0], step):
        yield [to64(r[i:i + step]) for r in rows]


def topk_agreement(target_logits: Any, ref_logits: Any, k: int = 5) -> tuple[float, float]:
    """(top-1 agreement in [0, 1], mean top-k overlap in [0, k]) over the last axis."""
    same, overlaps = [], []
    for t, r in _row_blocks(target_logits, ref_logits):
        same.append(t.argmax(-1) == r.argmax(-1))
        kk = min(k, t.shape[-1])
        # the k largest per row, unordered (a set overlap needs no order; a partition is O(V))
        tk = np.argpartition(-t, kk - 1, axis=-1)[:, :kk]
        rk = np.argpartition(-r, kk - 1, axis=-1)[:, :kk]
        overlaps += [len(set(a) & set(b)) for a, b in zip(tk, rk, strict=True)]
    top1 = float(np.mean(np.concatenate(same) if same else np.zeros(0, dtype=bool)))
    return top1, float(np.mean(overlaps))


def kl_divergence(ref_logits: Any, target_logits: Any) -> float:
    """Mean KL(reference || target) in nats over the rows of the last axis; >= 0, or NaN
    when a NaN (or +Inf) on either side leaves it undefined. Float64, in torch's threads."""
    import torch

    parts = []
    for r, t in _row_blocks(ref_logits, target_logits):
        r, t = torch.from_numpy(r), torch.from_numpy(t)
        if any(bool((x.isnan() | x.isposinf()).any()) for x in (r, t)):
            return float("nan")
        lr, lt = torch.log_softmax(r, -1), torch.log_softmax(t, -1)
        p = lr.exp()
        # tokens the reference gives no mass (masked to -inf) add nothing, whatever the target says
        parts.append(torch.where(p > 0.0, p * (lr - lt), 0.0).sum(-1))
    mean = float(torch.cat(parts).mean()) if parts else float("nan")
    return mean if math.isnan(mean) else max(0.0, mean)


# ---- token ids ----------------------------------------------------------------------------


def token_agreement(target: Any, reference: Any) -> dict[str, Any]:
    """Token agreement of two id sequences (lists or tensors, flattened): equal positions over
    the longer length (%), their count, the first position where they differ (None when the
    two are identical; the shorter length when one is a prefix of the other), both lengths."""
    a, b = _ids(target), _ids(reference)
    n = max(len(a), len(b))
    same = [x == y for x, y in zip(a, b, strict=False)]
    first = next((i for i, s in enumerate(same) if not s),
                 None if len(a) == len(b) else min(len(a), len(b)))
    return {"agreement_pct": 100.0 * sum(same) / n if n else 100.0, "matches": sum(same),
            "first_divergence": first, "tokens_target": len(a), "tokens_reference": len(b),
            "identical": first is None}


def _ids(x: Any) -> list[int]:
    if hasattr(x, "detach"):
        return [int(v) for v in x.detach().reshape(-1).cpu().tolist()]
    return [int(v) for v in np.asarray(x).reshape(-1).tolist()]


def agreement_rule() -> tuple[str, float, str]:
    """(op, limit, source) of token agreement (%): the GPA report's float32 top-1 rule."""
    rule = thresholds()["logits_float32"]["top1_agreement_pct"]
    return rule["op"], rule["limit"], source(rule["source"]) + " (top-1 agreement)"


# ---- waveforms ----------------------------------------------------------------------------

DB_PER_NEPER = 20.0 / math.log(10.0)  # natural-log magnitude mel difference -> dB


def snr_rule() -> tuple[float, str]:
    """(floor in dB, source) of waveform SNR: msprobe's whole-network cosine 0.99 as SNR."""
    cos = thresholds()["network"]["cosine_soft"]
    snr = snr_for_cosine(cos)
    return round(snr, 1), (f"{source('msprobe-network')}: cosine >= {cos}, as SNR "
                           f"= -10 log10(1/{cos}^2 - 1) = {snr:.1f} dB")


def level_db(target: Any, reference: Any) -> float:
    """Loudness of target over reference, 20 log10(rms_t / rms_r) in dB: 0 when equal; a gain
    error shows here whatever the SNR (a 10 % gain is 0.83 dB; its SNR is 20 dB)."""
    t, r = to64(target).ravel(), to64(reference).ravel()
    rt, rr = float(np.sqrt(np.mean(t * t))), float(np.sqrt(np.mean(r * r)))
    if rt == rr:
        return 0.0
    if rt == 0.0 or rr == 0.0:
        return math.inf if rt > rr else -math.inf
    return 20.0 * math.log10(rt / rr)


def level_rule() -> tuple[float, str]:
    """(largest |level difference| in dB, source) of two waveforms decoded from equal ids."""
    rule = thresholds()["waveform_level"]
    return float(rule["max_abs_db"]), f"{source(rule['source'])}: {rule['note']}"


def waveform_metrics(target: Any, reference: Any, spec: Any, dtype: str = "float32",
                     ) -> dict[str, Any]:
    """Two waveforms over their common length: SNR (dB), cosine, max abs, relative L2,
    msprobe's whole-network verdict, the log-mel distance in dB (`spec`: a helpers.audio
    MelSpec with a natural-log magnitude mel) and the reference's peak; {} when one is empty."""
    from helpers import audio

    t, r = to64(target).ravel(), to64(reference).ravel()
    n = min(t.shape[0], r.shape[0])
    if n == 0:
        return {}
    t, r = t[:n], r[:n]
    cmp = compare(t, r, dtype)
    ok, why = network_verdict(cmp)
    mel_t = audio.log_mel(t.astype(np.float32), spec).numpy()
    mel_r = audio.log_mel(r.astype(np.float32), spec).numpy()
    return {"snr_db": snr_db(t, r), "level_db": level_db(t, r), "cosine": cmp.cosine,
            "max_abs": cmp.max_abs,
            "rel_l2": cmp.rel_l2, "mel_distance_db": DB_PER_NEPER * mel_distance(mel_t, mel_r),
            "network_ok": ok, "network_detail": why, "peak_ref": float(np.abs(r).max())}


def peak_normalize(x: Any, dbfs: float = -1.0) -> tuple[np.ndarray, float]:
    """(x scaled so its peak sits at `dbfs`, its own peak in dBFS); an all-zero x stays as it
    is (peak -inf). For listening and drawing only: metrics use the raw samples."""
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.abs(x).max(initial=0.0))
    if peak == 0.0:
        return x, -math.inf
    return x * np.float32(10 ** (dbfs / 20) / peak), 20 * math.log10(peak)
