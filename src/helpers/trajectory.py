"""Teacher-forced trajectory parity: is the target's decoding the reference's decoding?

Free-running greedy ids are a poor verdict: where the reference's top-1 and top-2 logits are
nearly tied, a device that rounds differently picks the other id, and every later id differs
although every kernel is right. So the target is fed the reference's ids (prefill, then one
step at a time through its own KV cache, as it decodes) and its logits are compared with the
reference's at every step:

  margin      reference top-1 minus top-2 logit at the step
  stable      margin >= limits.stable_margin: a top-1 that differs here is a finding
  near-tie    margin < stable_margin: a differing top-1 is rounding, so the target's top-1 need
              only be among the reference's top-k (the "top-k hit")
  cosine, relative L2 of the step's logits (float64), KL(reference || target) in nats

Pooled over steps and sequences: the share of stable steps whose top-1 agrees, the near-tie
top-k hit rate, the 5th percentile of cosine and the 95th of relative L2. A non-finite logit at
any step fails the trajectory outright. Limits and their sources live in data/thresholds.json
("trajectory").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from helpers import parity
from helpers.records import Check


@dataclass(frozen=True)
class Limits:
    """The trajectory rule: margin that makes a step stable, and the pooled limits."""

    stable_margin: float
    stable_top1: float  # share of stable steps whose top-1 agrees, at least
    near_tie_k: int
    near_tie_hit: float  # share of near-tie steps whose target top-1 is in the reference top-k
    cosine_p5: float
    rel_l2_p95: float
    source: str

    @classmethod
    def for_dtype(cls, dtype: str) -> Limits:
        """data/thresholds.json "trajectory": the shared rule, then the dtype's overrides."""
        spec = parity.thresholds()["trajectory"]
        values = {**spec["rule"], **spec.get(dtype, {})}
        names = {f.name for f in cls.__dataclass_fields__.values()} - {"source"}
        return cls(**{k: values[k] for k in names},
                   source=parity.source(values.get("source", spec["rule"]["source"])))


@dataclass
class Steps:
    """Per-step metrics of one sequence (arrays of length N, float64 unless said)."""

    margin: np.ndarray
    ref_top1: np.ndarray  # int
    tgt_top1: np.ndarray  # int
    topk_hit: np.ndarray  # bool: target top-1 among the reference's top-k
    cosine: np.ndarray
    rel_l2: np.ndarray
    kl: np.ndarray
    finite: np.ndarray  # bool: every target logit finite at the step

    def __len__(self) -> int:
        return len(self.margin)


def steps(reference: torch.Tensor, target: torch.Tensor, k: int = 5) -> Steps:
    """Per-step metrics of [N, V] reference and target logits (one sequence)."""
    if reference.shape != target.shape or reference.dim() != 2:
        raise ValueError(f"step logits must be two [N, V] of one shape, got "
                         f"{tuple(reference.shape)} and {tuple(target.shape)}")
    r = reference.detach().to("cpu", torch.float64)
    t = target.detach().to("cpu", torch.float64)
    finite = torch.isfinite(t).all(-1)  # [N]
    top2 = r.topk(2, dim=-1).values  # [N, 2]
    ref_top1 = r.argmax(-1)
    tgt_top1 = torch.nan_to_num(t, nan=-math.inf).argmax(-1)
    ref_topk = r.topk(min(k, r.shape[-1]), dim=-1).indices  # [N, k]
    hit = (ref_topk == tgt_top1[:, None]).any(-1)
    tz = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
    dot = (r * tz).sum(-1)
    norm_r, norm_t = r.norm(dim=-1), tz.norm(dim=-1)
    cos = torch.where(norm_r * norm_t > 0, dot / (norm_r * norm_t), torch.ones_like(dot))
    cos = cos.clamp(-1.0, 1.0)
    rel = (tz - r).norm(dim=-1) / norm_r.clamp_min(torch.finfo(torch.float64).tiny)
    logp_r = torch.log_softmax(r, -1)
    logp_t = torch.log_softmax(tz, -1)
    kl = (logp_r.exp() * (logp_r - logp_t)).sum(-1).clamp_min(0.0)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    return Steps(
        margin=(top2[:, 0] - top2[:, 1]).numpy(), ref_top1=ref_top1.numpy(),
        tgt_top1=tgt_top1.numpy(), topk_hit=hit.numpy(),
        cosine=torch.where(finite, cos, nan).numpy(), rel_l2=torch.where(finite, rel, nan).numpy(),
        kl=torch.where(finite, kl, nan).numpy(), finite=finite.numpy())


@dataclass
class Summary:
    """Pooled trajectory metrics over one or more sequences, and the verdict against Limits."""

    sequences: int
    steps: int
    stable_steps: int
    stable_top1: float  # share (NaN when no stable step)
    near_tie_steps: int
    near_tie_hit: float  # share (NaN when no near-tie step)
    cosine_p5: float
    rel_l2_p95: float
    kl_mean: float
    kl_max: float
    nonfinite_steps: int
    first_nonfinite: int  # step index (-1 when none), in the first sequence that has one
    stable_misses: list[int]  # (sequence-local) step indexes of stable steps that disagree

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(seqs: Sequence[Steps], limits: Limits) -> Summary:
    """Pool per-step metrics of several sequences."""
    if not seqs:
        raise ValueError("no sequence to summarize")
    cat = {f: np.concatenate([getattr(s, f) for s in seqs]) for f in Steps.__dataclass_fields__}
    stable = cat["margin"] >= limits.stable_margin
    agree = cat["ref_top1"] == cat["tgt_top1"]
    near = ~stable
    finite = cat["finite"].astype(bool)
    first_bad = next((int(np.argmin(s.finite)) for s in seqs if not s.finite.all()), -1)
    misses = [int(i) for s in seqs for i in np.flatnonzero((s.margin >= limits.stable_margin)
                                                            & (s.ref_top1 != s.tgt_top1))]
    cos, rel, kl = cat["cosine"], cat["rel_l2"], cat["kl"]
    return Summary(
        sequences=len(seqs), steps=int(len(stable)), stable_steps=int(stable.sum()),
        stable_top1=_share(agree[stable]), near_tie_steps=int(near.sum()),
        near_tie_hit=_share(cat["topk_hit"][near].astype(bool)),
        cosine_p5=_pct(cos, 5, finite), rel_l2_p95=_pct(rel, 95, finite),
        kl_mean=float(np.mean(kl[finite])) if finite.any() else math.nan,
        kl_max=float(np.max(kl[finite])) if finite.any() else math.nan,
        nonfinite_steps=int((~finite).sum()), first_nonfinite=first_bad, stable_misses=misses)


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else math.nan


def _pct(values: np.ndarray, q: float, finite: np.ndarray) -> float:
    return float(np.percentile(values[finite], q)) if finite.any() else math.nan


def judge(s: Summary, limits: Limits) -> list[tuple[str, float, str, float, bool]]:
    """(check, value, op, limit, passed) rows; a rule with no step to judge passes vacuously
    only when its count is zero (said by a NaN value); non-finite logits fail every row."""
    ok = s.nonfinite_steps == 0
    rows = [
        ("stable steps: top-1 agreement", s.stable_top1, ">=", limits.stable_top1),
        (f"near-tie steps: top-1 in reference top-{limits.near_tie_k}", s.near_tie_hit, ">=",
         limits.near_tie_hit),
        ("cosine p5 over steps", s.cosine_p5, ">=", limits.cosine_p5),
        ("relative L2 p95 over steps", s.rel_l2_p95, "<=", limits.rel_l2_p95),
    ]
    out = []
    for name, value, op, limit in rows:
        if math.isnan(value):
            passed = ok and name.startswith(("stable", "near-tie"))  # no such step: nothing wrong
        else:
            passed = ok and (value >= limit if op == ">=" else value <= limit)
        out.append((name, value, op, limit, passed))
    out.append(("non-finite steps", float(s.nonfinite_steps), "==", 0.0, ok))
    return out


def checks(prefix: str, s: Summary, limits: Limits) -> list[Check]:
    """The rule's rows as report checks; a rule with no step of its kind is info."""
    out = []
    for name, value, op, limit, passed in judge(s, limits):
        title = f"{prefix}: {name}"
        if math.isnan(value):
            out.append(Check(title, "no such step", f"{op} {limit:g}", None, limits.source))
            continue
        out.append(Check(title, value, f"{op} {limit:g}", passed, limits.source,
                         f"{s.steps} steps over {s.sequences} sequence(s), {s.stable_steps} "
                         "stable"))
    return out


@dataclass(frozen=True)
class Divergence:
    """Where free-running ids first differ, and whether the reference was sure there."""

    index: int  # -1 when identical over the shared length
    margin: float  # the reference's top-1/top-2 margin at that step (NaN when unknown)
    kind: str  # "none" | "near-tie" (expected from rounding) | "stable" (a finding)

    def describe(self) -> str:
        if self.kind == "none":
            return "identical"
        return (f"first differs at step {self.index}, reference margin {self.margin:.4g}: "
                + ("a near-tie, expected from rounding" if self.kind == "near-tie"
                   else "a stable step, a finding"))


def divergence(reference_ids: Sequence[int], target_ids: Sequence[int],
               reference_margins: Sequence[float], limits: Limits) -> Divergence:
    """Explain the first free-running divergence with the reference's margin at that step."""
    n = min(len(reference_ids), len(target_ids))
    idx = next((i for i in range(n) if int(reference_ids[i]) != int(target_ids[i])), -1)
    if idx < 0 and len(reference_ids) == len(target_ids):
        return Divergence(-1, math.nan, "none")
    idx = n if idx < 0 else idx  # one stopped earlier: the step where the other went on
    margin = float(reference_margins[idx]) if idx < len(reference_margins) else math.nan
    kind = "near-tie" if margin < limits.stable_margin else "stable"
    return Divergence(idx, margin, kind)


# ---- vector quantizers: the same rule over code distances --------------------------------------


@dataclass
class Codes:
    """Code agreement of a quantizer, near-ties told apart from findings."""

    total: int
    equal: int
    near_tie: int  # differing codes where the reference's nearest two were within the margin
    clear: int  # differing codes at a clear margin: findings

    @property
    def agreement(self) -> float:
        return self.equal / self.total if self.total else math.nan


def code_margins(states: torch.Tensor, book: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Reference states [N, D] and code book [K, D] -> (nearest id [N], relative margin [N]):
    (second-nearest - nearest squared distance) / mean squared state norm, float64."""
    x = states.detach().reshape(-1, book.shape[-1]).to("cpu", torch.float64)
    b = book.detach().to("cpu", torch.float64)
    dist = (x.pow(2).sum(1, keepdim=True) - 2 * x @ b.t() + b.pow(2).sum(1)[None])  # [N, K]
    two = dist.topk(2, dim=-1, largest=False)
    scale = x.pow(2).sum(1).mean().clamp_min(torch.finfo(torch.float64).tiny)
    rel = (two.values[:, 1] - two.values[:, 0]) / scale
    return two.indices[:, 0].numpy(), rel.numpy()


UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11,
                 "bfloat16": 2.0 ** -8}


def code_margin(dtype: str) -> float:
    """The relative code margin below which `dtype` may pick either code: a multiple of its
    unit roundoff (data/thresholds.json "trajectory.code_margin")."""
    spec = parity.thresholds()["trajectory"]["code_margin"]
    return float(spec["unit_roundoff_multiple"]) * UNIT_ROUNDOFF[dtype]


def codes(reference_ids: Any, target_ids: Any, margins: np.ndarray, margin: float) -> Codes:
    """Count equal codes, and sort differing ones by the reference's relative margin."""
    r = np.asarray(reference_ids).reshape(-1)
    t = np.asarray(target_ids).reshape(-1)
    n = min(len(r), len(t), len(margins))
    diff = r[:n] != t[:n]
    near = diff & (np.asarray(margins[:n]) < margin)
    return Codes(total=int(n), equal=int((~diff).sum()), near_tie=int(near.sum()),
                 clear=int((diff & ~near).sum()))
