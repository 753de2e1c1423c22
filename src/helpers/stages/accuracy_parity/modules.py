"""Module by module: every single-tensor module of the language model fed the target's own
input, and held to the same module on the CPU in the target's dtype.

Below float32 the whole network's rounding hides a kernel's error of the same size: a 1 % error
in one layer's MLP output moves bfloat16 logits' error against float64 by 2 %, and an RMSNorm
without float32 accumulation by 15 %, both far inside msprobe's ratio of 2. MindStudio probe's
API accuracy checker looks at each operator instead: the device's inputs to one call are run
again on the CPU (the benchmark, in the device's dtype) and in a higher precision (the golden),
and the device's error against the golden is divided by the benchmark's. Here the operators are
the LM's modules called with one floating tensor (every RMSNorm, every MLP, the attention
projections, the output head: the outermost such module, its children inside it), captured on
the target's forward of the first prompt; the baseline side (the CPU in the target's dtype)
replays each on the same input with its own copy of the module, and a float64 copy of that
module is the golden (the target's weights upcast, as msprobe's checker upcasts its inputs).

Per module: msprobe's benchmark ratios (RMSE, mean and max relative error) and a per-row scale
ratio: for each row (the last axis: a token's features), the least-squares scale of the output
against the golden, minus one; its root mean square over rows. An output rounded element by
element has a row scale error near u / sqrt(width); a kernel with a systematic error (a gain, a
norm's statistic computed in the low precision) moves whole rows, so this ratio sees what the
elementwise ones average away.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers import parity
from helpers.records import Check
from helpers.stages.kit import Section

Captured = dict[str, dict[str, torch.Tensor]]  # module name -> {"input", "output"} on the host
ROW_SCALE_FLOOR_ROUNDOFFS = 1 / 8  # floor of the row-scale denominator, in unit roundoffs


def capture(lm: nn.Module, ids: torch.Tensor) -> Captured:
    """One forward of `lm` on ids [1, S]; the first call's input and output of every module
    called with one floating tensor and no keywords that returns a tensor, outermost only."""
    seen: Captured = {}

    def hook(name: str) -> Any:
        def keep(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x = args[0] if len(args) == 1 else None
            if (name in seen or kwargs or not isinstance(x, torch.Tensor)
                    or not x.is_floating_point() or not isinstance(out, torch.Tensor)):
                return
            seen[name] = {"input": x.detach().to("cpu", torch.float32),
                          "output": out.detach().to("cpu", torch.float32)}
        return keep

    handles = [m.register_forward_hook(hook(n), with_kwargs=True)
               for n, m in lm.named_modules() if n]
    try:
        with torch.inference_mode():
            lm(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: v for n, v in seen.items()
            if not any(n.startswith(p + ".") for p in seen if p != n)}


def replay(lm: nn.Module, captured: Captured, dtype: torch.dtype) -> Captured:
    """Each captured module of this side's `lm` (on the CPU) on the target's input: its output
    in `dtype` ("output") and a float64 copy's ("golden"), on the host in float64."""
    out: Captured = {}
    with torch.inference_mode():
        for name, got in captured.items():
            module = lm.get_submodule(name)
            x = got["input"]
            gold = copy.deepcopy(module).to(torch.float64)
            out[name] = {"output": module(x.to(dtype)).to(torch.float64),
                         "golden": gold(x.to(torch.float64)).to(torch.float64)}
            del gold
    return out


def row_scale_error(actual: Any, golden: Any) -> float:
    """Root mean square over rows of (least-squares scale of a row against the golden - 1);
    rows whose golden is all zero are left out."""
    a = parity.to64(actual)
    g = parity.to64(golden)
    a, g = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
    energy = (g * g).sum(1)
    keep = energy > 0
    if not keep.any():
        return 0.0
    scale = (a[keep] * g[keep]).sum(1) / energy[keep] - 1.0
    return float(np.sqrt(np.mean(scale * scale)))


def _roundoff(dtype: str) -> float:
    from helpers.trajectory import UNIT_ROUNDOFF

    return UNIT_ROUNDOFF[dtype]


def rows(target: Captured, baseline: Captured, dtype: str) -> pd.DataFrame:
    """One row per module: the benchmark ratios, the row scale errors and their ratio."""
    floor = ROW_SCALE_FLOOR_ROUNDOFFS * _roundoff(dtype)
    out = []
    for name, got in target.items():
        if name not in baseline:
            continue
        t, b, g = got["output"], baseline[name]["output"], baseline[name]["golden"]
        ratios = parity.error_ratios(t, b, g, dtype)
        st, sb = row_scale_error(t, g), row_scale_error(b, g)
        scale = st / max(sb, floor)
        passed = parity.ratios_pass(ratios) and scale <= _scale_limit()
        out.append({"module": name, "width": int(t.shape[-1]), "rmse ratio": ratios["rmse"],
                    "mean_rel ratio": ratios["mean_rel"], "max_rel ratio": ratios["max_rel"],
                    "row scale target": st, "row scale baseline": sb, "row scale ratio": scale,
                    "verdict": "PASS" if passed else "FAIL"})
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    worst = frame[["rmse ratio", "mean_rel ratio", "row scale ratio"]].max(axis=1)
    return frame.assign(_worst=worst).sort_values("_worst", ascending=False).drop(
        columns="_worst").reset_index(drop=True)


def _scale_limit() -> float:
    return float(parity.thresholds()["module_ratio"]["row_scale"]["max"])


def _source() -> str:
    spec = parity.thresholds()["module_ratio"]
    return (f"{parity.source(spec['source'])}, per module; row scale ratio <= "
            f"{_scale_limit():g}: {parity.source(spec['row_scale']['source'])}")


def section(target: Captured, baseline: Captured | None, dtype: str, why_not: str = "",
            shown: int = 12) -> Section:
    """The module table (worst first, `shown` rows) and its check."""
    name = "modules: error ratios, each module fed the target's own input (worst module)"
    if baseline is None or not target:
        check = Check(name, "not run", "info", None, _source(), detail=why_not)
        return Section("modules", checks=[check], notes=[why_not])
    frame = rows(target, baseline, dtype)
    if frame.empty:
        return Section.failure("modules", "no captured module ran on the baseline")
    bad = frame[frame["verdict"] == "FAIL"]
    top = frame.iloc[0]
    value = (f"{top['module']}: rmse {top['rmse ratio']:.3g}, mean_rel "
             f"{top['mean_rel ratio']:.3g}, max_rel {top['max_rel ratio']:.3g}, row scale "
             f"{top['row scale ratio']:.3g}")
    limits = parity.thresholds()["error_ratio"]
    threshold = (", ".join(f"{k} <= {v['max']:g}" for k, v in limits.items())
                 + f", row scale <= {_scale_limit():g}")
    detail = (f"{len(bad)} of {len(frame)} modules over a limit"
              + (": " + ", ".join(bad["module"].head(4)) if len(bad) else ""))
    check = Check(name, value, threshold, bad.empty, _source(), detail=detail)
    note = (f"{len(frame)} modules, each fed the target's own input of the first prompt and "
            f"replayed on the CPU in {dtype} (the baseline) and in float64 (the golden); the "
            f"{min(shown, len(frame))} with the largest ratios are shown. Row scale floor: "
            f"{ROW_SCALE_FLOOR_ROUNDOFFS:g} unit roundoff of {dtype} "
            f"({ROW_SCALE_FLOOR_ROUNDOFFS * _roundoff(dtype):.3g}).")
    records = frame.replace({math.inf: None}).to_dict("records")
    return Section("modules", frame.head(shown), [check], {"rows": records}, [note])


def modules_section(runs: Any) -> Section:
    """The stage's section from its Runs: the target's capture against the baseline's replay."""
    base = runs.baseline
    if base is None:
        why = (f"not run: the target computes in {runs.plan.target.dtype_name}, the reference's "
               "dtype, so the whole-network comparisons above already hold it to that "
               "precision's own error")
        return section({}, None, runs.plan.target.dtype_name, why)
    failed = runs.target.failed("modules") or base.failed("modules")
    if failed:
        return Section.failure("modules", failed)
    return section(runs.target.modules, base.modules, runs.plan.target.dtype_name)
