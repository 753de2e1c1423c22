"""The stage's sections over the model's text path: logits, hidden states layer by layer,
the float64 golden, greedy generation and determinism; each a table with its checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers import parity, trajectory
from helpers.records import VERDICTS, Check
from helpers.stages.accuracy_parity.plan import LOGIT_LABELS, Plan, Prompt
from helpers.stages.accuracy_parity.sides import Runs
from helpers.stages.kit import Section
from helpers.tables import checks_frame, table

# ---- display, and the rules every section uses
# Column headings as the report prints them (the frames keep their snake_case keys)
HEADINGS = {
    "rel_l2_pct": "rel L2 (%)", "max_abs": "max abs", "mean_abs": "mean abs",
    "mean_rel": "mean rel", "top1_pct": "top-1 (%)", "top5_overlap": "top-5 (of 5)",
    "kl": "KL (nats)", "within_tol_pct": "within tol (%)", "nonfinite": "NaN/Inf",
    "msprobe_rule": "msprobe rule", "increase_pct": "increase (points)",
    "target_vs_golden_pct": "target vs f64 (%)", "reference_vs_golden_pct": "reference vs f64 (%)",
    "target_rel_l2_pct": "target rel L2 (%)", "reference_rel_l2_pct": "reference rel L2 (%)",
    "target_rmse": "target RMSE", "reference_rmse": "reference RMSE", "rmse_ratio": "RMSE ratio",
    "comparator_rel_l2_pct": "comparator rel L2 (%)", "comparator_rmse": "comparator RMSE",
    "mean_rel_ratio": "mean rel ratio", "max_rel_ratio": "max rel ratio",
    "agreement_pct": "agreement (%)", "match_pct": "match (%)",
    "first_divergence": "first divergence", "max_abs_difference": "max abs difference",
    "bitwise_equal": "bitwise equal", "stable_steps": "stable steps",
    "stable_top1_pct": "stable top-1 (%)", "near_tie_hit_pct": "near-tie top-k hit (%)",
    "cosine_p5": "cosine p5", "rel_l2_p95_pct": "rel L2 p95 (%)", "kl_max": "KL max (nats)",
    "free_running": "free-running match",
}
RULE_NAMES = {"logits_float32": "the GPA report's float32 thresholds",
              "network": "msprobe's whole-network rule"}
HIDDEN = {"logits": ("mean_abs", "within_tol_pct", "nonfinite")}  # in the summary instead


def display_frame(sec: Section) -> Any:
    """A section's table as the report shows it: readable headings, 4 significant digits
    (a KL of 5.6e-07 must not print as 0.000001), cosines to 7, empty cells for NaN."""
    frame = sec.table if not sec.table.empty else checks_frame(sec.checks)
    frame = frame.drop(columns=[c for c in HIDDEN.get(sec.name, ()) if c in frame])
    floats = [c for c in frame.select_dtypes("float").columns if c != "cosine"]
    frame = frame.rename(columns=HEADINGS)
    styled = table(frame).format("{:.4g}", subset=[HEADINGS.get(c, c) for c in floats],
                                 na_rep="")
    if "cosine" in frame:
        styled = styled.format("{:.7g}", subset=["cosine"], na_rep="")
    return styled


def _info(name: str, value: Any, note: str, source: str, detail: str = "") -> Check:
    return Check(name, value, note, None, source, detail)


def _verdict(cmp: parity.Comparison) -> str:
    ok, why = parity.network_verdict(cmp)
    return VERDICTS.PASS if ok else f"{VERDICTS.FAIL} ({why})"


def _network_check(name: str, cmp: parity.Comparison) -> Check:
    ok, why = parity.network_verdict(cmp)
    th = parity.thresholds()["network"]
    return Check(name, f"cosine {cmp.cosine:.8f}, max abs {cmp.max_abs:.3g}", th["rule"], ok,
                 parity.source(th["source"]), why)


def _rules(dtype: str) -> list[str]:
    table = parity.thresholds()["parity_rules"]
    return table.get(dtype, table["float32"] if dtype == "float64" else table["bfloat16"])


# -- identical weights

WEIGHTS_SOURCE = ("stage contract: every side runs the reference's weights, each cast to its "
                  "own dtype, so a difference is the device's, not the model's")


def weights_section(runs: Runs) -> Section:
    """Every side holds the reference's weights: per tensor, the sha256 of the reference's
    weights cast on the CPU to the side's dtype against the side's own."""
    ref = runs.reference
    why = ref.failed("weights")
    if why:
        return Section.failure("weights", why)
    rows, checks = [], []
    for other in (runs.target, runs.golden):
        if other is None:
            continue
        why = other.failed("weights")
        if why:
            checks.append(Section.failure(f"weights ({other.side.role})", why).checks[0])
            continue
        dtype = other.side.dtype_name
        mine, want = other.digests.get(dtype, {}), ref.digests.get(dtype, {})
        names = sorted(set(mine) | set(want))
        differ = [n for n in names if mine.get(n) != want.get(n)]
        rows.append({"side": other.side.role, "config": other.side.label, "tensors": len(names),
                     "identical": len(names) - len(differ),
                     "first differing": differ[0] if differ else "none"})
        checks.append(Check.judge(
            f"weights: the {other.side.role} holds the reference's weights in {dtype} "
            "(tensors identical)", len(names) - len(differ), "==", len(names),
            WEIGHTS_SOURCE, detail=(f"differ: {', '.join(differ[:3])}" if differ
                                    else "sha256 of every tensor equal")))
    note = (f"sha256 of each of the {len(ref.digests.get(ref.side.dtype_name, {}))} weight "
            "tensors, the reference's cast on the CPU to each side's dtype against that "
            "side's own: equal means the sides compute with the same numbers.")
    return Section("weights", pd.DataFrame(rows), checks, {"rows": rows}, [note])


# -- logits

def _logit_row(p: Prompt, t: torch.Tensor, r: torch.Tensor, dtype: str,
               top: tuple[float, float]) -> dict[str, Any]:
    cmp = parity.compare(t, r, dtype)
    top1, top5 = top
    return {"lang": p.lang, "prompt": p.text, "tokens": int(t.shape[0]),
            "rel_l2_pct": 100 * cmp.rel_l2, "cosine": cmp.cosine, "max_abs": cmp.max_abs,
            "mean_abs": cmp.mean_abs, "top1_pct": 100 * top1, "top5_overlap": top5,
            "kl": parity.kl_divergence(r, t), "within_tol_pct": 100 * cmp.within_tol,
            "nonfinite": cmp.nonfinite, "msprobe_rule": _verdict(cmp)}


def pooled_topk(per_prompt: list[tuple[float, float]], rows: list[int]) -> tuple[float, float]:
    """parity.topk_agreement over every prompt's rows together, from each prompt's own: both
    are whole counts (rows whose top-1 ids agree, top-k ids shared) over the rows, so each
    prompt's counts come back exactly and their sum over all rows is the pooled figure."""
    n = sum(rows)
    same = sum(round(top1 * k) for (top1, _), k in zip(per_prompt, rows, strict=True))
    shared = sum(round(topk * k) for (_, topk), k in zip(per_prompt, rows, strict=True))
    return same / n, shared / n


def logits_section(runs: Runs) -> Section:
    """Per-prompt table; pooled summary (all prompts and positions) judged by the target dtype's
    rules: the GPA report's thresholds for float32, msprobe's whole-network rule always."""
    why = runs.target.failed("forward") or runs.reference.failed("forward")
    if why:
        return Section.failure("logits", why)
    t, r, dtype = runs.target, runs.reference, runs.plan.target.dtype_name
    tops = [parity.topk_agreement(tl, rl, 5) for tl, rl in zip(t.logits, r.logits, strict=True)]
    rows = [_logit_row(p, tl, rl, dtype, top) for p, tl, rl, top in zip(
        runs.prompts, t.logits, r.logits, tops, strict=True)]
    tc, rc = torch.cat(t.logits), torch.cat(r.logits)  # [sum S, V]
    cmp = parity.compare(tc, rc, dtype)
    top1, top5 = pooled_topk(tops, [len(x) for x in t.logits])
    summary = {"rel_l2_pct": 100 * cmp.rel_l2, "cosine": cmp.cosine,
               "top1_agreement_pct": 100 * top1, "top5_overlap": top5,
               "max_abs": cmp.max_abs, "mean_abs": cmp.mean_abs,
               "kl": parity.kl_divergence(rc, tc), "within_tol_pct": 100 * cmp.within_tol,
               "nonfinite": cmp.nonfinite, "positions": int(tc.shape[0]), "prompts": len(rows)}
    checks = _logit_checks(summary, cmp, rows, dtype)
    note = (f"{len(rows)} prompts, {summary['positions']} positions, vocabulary "
            f"{tc.shape[-1]:,}: target `{runs.plan.target.label}` vs reference "
            f"`{runs.plan.reference.label}`. Judged by "
            f"{' and '.join(RULE_NAMES[r] for r in _rules(dtype) if r in RULE_NAMES)}.")
    return Section("logits", pd.DataFrame(rows), checks, summary, [note])


def _logit_checks(summary: dict[str, Any], cmp: parity.Comparison, rows: list[dict[str, Any]],
                  dtype: str) -> list[Check]:
    th, rules = parity.thresholds(), _rules(dtype)
    checks = [_network_check("logits: msprobe whole-network rule", cmp),
              Check.judge("logits: NaN/Inf values in the target", summary["nonfinite"], "==", 0,
                          parity.source("msprobe-network")),
              Check.judge("logits: prompts within the whole-network rule",
                          sum(row["msprobe_rule"] == "PASS" for row in rows), "==", len(rows),
                          parity.source("msprobe-network"))]
    for key, rule in th["logits_float32"].items():
        name = f"logits: {LOGIT_LABELS.get(key, key)}"
        if "logits_float32" in rules:
            checks.append(Check.judge(name, summary[key], rule["op"], rule["limit"],
                                      parity.source(rule["source"])))
        else:
            checks.append(_info(name, summary[key], f"info at {dtype} (float32: {rule['op']} "
                                f"{rule['limit']})", parity.source(rule["source"])))
    tol = parity.tolerance(dtype)
    checks += [_info("logits: KL(reference || target), nats", summary["kl"], "info", "measured"),
               _info("logits: max abs error", summary["max_abs"], "info", "measured"),
               _info("logits: elements within the dtype tolerance (%)", summary["within_tol_pct"],
                     f"info (rtol {tol.rtol:.3g}, small {tol.small_value:.3g})", tol.source)]
    return checks


# -- hidden states, layer by layer

def layer_frame(runs: Runs) -> pd.DataFrame:
    """Per hidden state (embeddings, each layer): target vs reference pooled over prompts, the
    increase of relative L2 over the state before, and each side against the golden."""
    t, r, g = runs.target, runs.reference, runs.golden
    th, rh = torch.cat(t.hidden, dim=1), torch.cat(r.hidden, dim=1)  # [L+1, sum S, H]
    gh = torch.cat(g.hidden, dim=1) if g is not None and not g.failed("forward") else None
    dtype = runs.plan.target.dtype_name
    rows, prev = [], 0.0
    for i, name in enumerate(r.layer_names):
        cmp = parity.compare(th[i], rh[i], dtype)
        row = {"index": i, "state": name, "rel_l2_pct": 100 * cmp.rel_l2, "cosine": cmp.cosine,
               "max_abs": cmp.max_abs, "increase_pct": 100 * (cmp.rel_l2 - prev),
               "nonfinite": cmp.nonfinite}
        if gh is not None:
            row["target_vs_golden_pct"] = 100 * parity.rel_l2(th[i], gh[i])
            row["reference_vs_golden_pct"] = 100 * parity.rel_l2(rh[i], gh[i])
        rows.append(row)
        prev = cmp.rel_l2
    return pd.DataFrame(rows)


def largest_increase(frame: pd.DataFrame) -> tuple[int, str, float]:
    """(index, name, increase in %) of the state that adds the most relative error; a
    non-finite error counts as the largest."""
    inc = frame["increase_pct"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(frame["rel_l2_pct"].to_numpy(dtype=np.float64))
    i = int(np.argmax(bad)) if bad.any() else int(np.nanargmax(inc))
    return i, str(frame["state"].iloc[i]), float(inc[i])


def layers_section(runs: Runs) -> Section:
    why = runs.target.failed("forward") or runs.reference.failed("forward")
    if why:
        return Section.failure("layers", why)
    frame = layer_frame(runs)
    i, name, inc = largest_increase(frame)
    last = frame.iloc[-1]
    metrics = {"largest_increase_state": name, "largest_increase_index": i,
               "largest_increase_pct": inc, "final_rel_l2_pct": float(last["rel_l2_pct"]),
               "rel_l2_pct": frame["rel_l2_pct"].tolist()}
    checks = [_info("layers: state that adds the most error", name, "info", "measured",
                    f"relative L2 rises by {inc:.4g} percentage points there"),
              _info("layers: relative L2 of the last hidden state (%)",
                    float(last["rel_l2_pct"]), "info", "measured")]
    nonfinite = int(frame["nonfinite"].sum())
    checks.append(Check.judge("layers: NaN/Inf values in the target's hidden states", nonfinite,
                              "==", 0, parity.source("msprobe-network")))
    note = (f"Relative L2 of target vs reference per hidden state, pooled over "
            f"{len(runs.prompts)} prompts. The error grows most at **{name}** "
            f"(+{inc:.4g} points).")
    return Section("layers", frame, checks, metrics, [note])


# -- golden

def golden_section(runs: Runs) -> Section:
    """Target and its comparator each against the float64 golden; msprobe's error ratios,
    judged when the two share a dtype (the benchmark standard's setting). The comparator is
    the CPU in the target's dtype (the baseline) where it ran that output, else the reference."""
    g = runs.golden
    if g is None:
        check = _info("golden: float64 comparison", "not run", "info", "stage knob golden",
                      runs.golden_note)
        return Section("golden", checks=[check], notes=[runs.golden_note])
    why = g.failed("forward") or runs.target.failed("forward") or runs.reference.failed("forward")
    if why:
        return Section.failure("golden", why)
    rows, checks = [], []
    for name, key in _golden_outputs(g):
        t, gold = key(runs.target), key(g)
        cmp = next((c for c in (runs.baseline, runs.reference)
                    if c is not None and key(c) is not None), None)
        if t is None or gold is None or cmp is None:
            continue
        row, check = _golden_row(name, t, key(cmp), gold, runs.plan, cmp.side)
        ref = key(runs.reference) if cmp is not runs.reference else None
        if ref is not None:  # float32's own error, next to the baseline's
            row["reference_rel_l2_pct"] = 100 * parity.compare(
                ref, gold, runs.plan.target.dtype_name).rel_l2
        rows.append(row)
        checks.append(check)
    notes = [runs.golden_note]
    if runs.baseline is not None:
        notes.append(f"Comparator: the CPU in {runs.baseline.side.dtype_name} (the baseline) "
                     "wherever it ran the output, so the ratios measure the target's error "
                     f"beyond what {runs.baseline.side.dtype_name} itself costs.")
    return Section("golden", pd.DataFrame(rows), checks, {"rows": rows}, notes)


def _golden_outputs(g: Any) -> list[tuple[str, Any]]:
    """(label, side -> that output on the host or None) for every output the golden has."""
    def cat(get: Any) -> Any:
        def pick(r: Any) -> Any:
            parts = get(r)
            return torch.cat(parts) if parts else None
        return pick

    out = [("logits", cat(lambda r: r.logits)),
           ("last hidden state", cat(lambda r: [h[-1] for h in r.hidden])),
           ("teacher-forced step logits", cat(lambda r: r.steps))]
    for name, by_input in g.components.items():
        for given, outs in by_input.items():  # the golden runs one input per component
            for k, v in outs.items():
                if v.is_floating_point() and k != "margins":  # margins: derived, not an output
                    label = name if k == "output" else f"{name} {k}"
                    out.append((label, lambda r, n=name, i=given, k=k: r.components.get(
                        n, {}).get(i, {}).get(k)))
    return out


def _golden_row(name: str, t: torch.Tensor, r: torch.Tensor, gold: torch.Tensor, p: Plan,
                cmp: Any) -> tuple[dict[str, Any], Check]:
    dtype = p.target.dtype_name
    judged = cmp.dtype == p.target.dtype
    tg, rg = parity.compare(t, gold, dtype), parity.compare(r, gold, dtype)
    ratios = parity.ratios_of(tg, rg)
    row = {"output": name, "comparator": cmp.role, "target_rel_l2_pct": 100 * tg.rel_l2,
           "reference_rel_l2_pct": 100 * rg.rel_l2, "comparator_rel_l2_pct": 100 * rg.rel_l2,
           "target_rmse": tg.rmse, "comparator_rmse": rg.rmse, "rmse_ratio": ratios["rmse"],
           "mean_rel_ratio": ratios["mean_rel"], "max_rel_ratio": ratios["max_rel"]}
    limits = parity.thresholds()["error_ratio"]
    rule = ", ".join(f"{k} <= {v['max']:g}" for k, v in limits.items())
    src = parity.source(limits["rmse"]["source"])
    detail = ", ".join(f"{k} {v:.3g}" for k, v in ratios.items()) + f" (vs the {cmp.role})"
    if judged:
        ok = parity.ratios_pass(ratios)
        row["verdict"] = VERDICTS.of(ok)
        return row, Check(f"golden: {name} error ratio", detail, rule, ok, src)
    row["verdict"] = VERDICTS.INFO
    return row, _info(f"golden: {name} error ratio", detail,
                      f"info: target {dtype} vs {cmp.role} {cmp.dtype_name} ({rule} applies "
                      "to equal dtypes)", src)


# -- greedy generation

def generation_section(runs: Runs) -> Section:
    """Generated ids, judged teacher-forced (helpers.trajectory): the target fed the reference's
    greedy ids, its logits compared step by step; free-running agreement shown and explained."""
    n = runs.plan.new_tokens
    if n == 0:
        return Section("generation", notes=["new_tokens = 0: no generation"])
    why = (runs.reference.failed("generate")
           or runs.target.failed("teacher-forced", "generate"))
    if why:
        return Section.failure("generation", why)
    if len(runs.target.steps) != len(runs.prompts) or len(runs.reference.steps) != len(runs.prompts):
        return Section.failure("generation", "no teacher-forced logits for every prompt (the "
                               "target must run after the reference, fed its ids)")
    limits = trajectory.Limits.for_dtype(runs.plan.target.dtype_name)
    rows, seqs, kinds, matches = [], [], [], []
    for i, p in enumerate(runs.prompts):
        st = trajectory.steps(runs.reference.steps[i], runs.target.steps[i], limits.near_tie_k)
        one = trajectory.summarize([st], limits)
        div = trajectory.divergence(runs.reference.tokens[i].tolist(),
                                    runs.target.tokens[i].tolist(), st.margin, limits)
        seqs.append(st)
        kinds.append(div.kind)
        match = parity.token_agreement(runs.target.tokens[i], runs.reference.tokens[i])["matches"]
        matches.append(match)
        rows.append({"lang": p.lang, "prompt": p.text,
                     "stable_steps": f"{one.stable_steps}/{one.steps}",
                     "stable_top1_pct": 100 * one.stable_top1,
                     "near_tie_hit_pct": 100 * one.near_tie_hit, "cosine_p5": one.cosine_p5,
                     "rel_l2_p95_pct": 100 * one.rel_l2_p95, "kl_max": one.kl_max,
                     "free_running": f"{match}/{n}", "divergence": div.describe(),
                     "target": runs.target.texts[i], "reference": runs.reference.texts[i]})
    pooled = trajectory.summarize(seqs, limits)
    checks = trajectory.checks("teacher-forced", pooled, limits)
    found = kinds.count("stable")
    checks.append(_info("free-running: divergences at a stable step", f"{found}/{len(kinds)}",
                        "info: explained, not judged (a near-tie flip is rounding)",
                        "helpers.trajectory", f"{kinds.count('near-tie')} at a near-tie"))
    metrics = {"new_tokens": n, "trajectory": pooled.as_dict(),
               "stable_top1_pct": 100 * pooled.stable_top1, "cosine_p5": pooled.cosine_p5,
               "rel_l2_p95_pct": 100 * pooled.rel_l2_p95,
               "match_pct": 100 * float(np.mean(matches)) / n,
               "divergences": {k: kinds.count(k) for k in ("none", "near-tie", "stable")}}
    note = (f"Greedy decoding of {n} new tokens per prompt on the reference (end tokens blocked; "
            "helpers.generate); the target is then fed those ids step by step through its own "
            "KV cache (teacher forcing) and its logits compared at every step. A step is "
            f"stable where the reference's top-1 leads its top-2 by at least "
            f"{limits.stable_margin:g}: a different top-1 there is a finding; at a near-tie the "
            f"target's top-1 need only be in the reference's top-{limits.near_tie_k}. Limits: "
            f"{limits.source}. Free-running agreement is shown, and its first divergence "
            "explained by the reference's margin at that step.")
    return Section("generation", pd.DataFrame(rows), checks, metrics, [note])


# -- determinism

def determinism_section(runs: Runs) -> Section:
    """The target twice on the same inputs: bitwise-equal logits and identical greedy tokens,
    or how far apart they are."""
    t = runs.target
    why = t.failed("forward", "forward again")
    if why:
        return Section.failure("determinism", why)
    equal = [torch.equal(a, b) for a, b in zip(t.logits, t.again_logits, strict=True)]
    diff = max(float((a - b).abs().max()) for a, b in zip(t.logits, t.again_logits, strict=True))
    rows = [{"output": "logits (forward twice)", "identical": f"{sum(equal)}/{len(equal)} prompts",
             "bitwise_equal": all(equal), "max_abs_difference": diff}]
    checks = [_info("determinism: logits bitwise equal across two runs", all(equal), "info",
                    "measured", f"max abs difference {diff:.3g}")]
    metrics: dict[str, Any] = {"logits_bitwise_equal": all(equal), "logits_max_abs_diff": diff}
    if runs.plan.new_tokens:
        tok_why = t.failed("generate", "generate again")
        if tok_why:
            checks.append(Section.failure("determinism: greedy tokens", tok_why).checks[0])
        else:
            same = (t.tokens == t.again_tokens)  # [P, N]
            pct = 100 * float(same.double().mean())
            rows.append({"output": f"greedy tokens ({runs.plan.new_tokens} per prompt)",
                         "identical": f"{int(same.all(1).sum())}/{len(same)} prompts",
                         "bitwise_equal": bool(same.all()), "max_abs_difference": None})
            rule = parity.thresholds()["determinism"]["tokens_identical_pct"]
            checks.append(Check.judge("determinism: greedy tokens identical across two runs (%)",
                                      pct, rule["op"], rule["limit"], parity.source(rule["source"])))
            metrics["tokens_identical_pct"] = pct
    return Section("determinism", pd.DataFrame(rows), checks, metrics)


def headline(runs: Runs, sections: list[Section]) -> dict[str, Any]:
    """The figures a reader wants first: what was compared and the main numbers."""
    out: dict[str, Any] = {"compared": f"{runs.plan.target.label} vs {runs.plan.reference.label}"}
    for sec in sections:
        for key in ("rel_l2_pct", "cosine", "top1_agreement_pct", "top5_overlap", "kl",
                    "match_pct", "stable_top1_pct", "cosine_p5", "rel_l2_p95_pct",
                    "tokens_identical_pct", "largest_increase_state"):
            if key in sec.metrics and not isinstance(sec.metrics[key], list):
                out[f"{sec.name}.{key}"] = sec.metrics[key]
    return out
