"""One short run on a CUDA machine of the paths the report has never run on hardware.

GPA at the full-shape profile in bfloat16, batch 1: eager HF generate against the static-cache
decode step compiled and captured (CUDA graphs), with what was captured verified; the project's
decode loop (helpers.generate) with prefill and decode timed apart, over a dynamic and a static
cache; achieved weight-read bandwidth against the measured copy
bandwidth; parity with identical weights (sha256 of every tensor) against the CPU in float32.
Everything is measured by the performance stage's own sections (helpers.stages.performance)
and compared by helpers.parity: this script only chooses the knobs, prints a compact summary
and writes it as JSON. It is not part of `make test`; `make gpu-check` runs it.

    .venv/bin/python scripts/gpu_check.py                       # a CUDA GPU, < 8 minutes
    .venv/bin/python scripts/gpu_check.py --device cpu --profile tiny   # anywhere, < 1 minute

Exit codes: 0 finished and every judged figure held; 1 finished and one did not (weights not
identical, graph tokens differ from eager, speed-up below target); 2 refused (no CUDA device
for --device cuda, or bad arguments).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from helpers import device as devices
from helpers import generate, parity
from helpers.config import RunConfig
from helpers.errors import ReportError
from helpers.models.base import weight_digests
from helpers.records import write_json
from helpers.stages import performance as perf
from helpers.stages.kit import load, reference_side, target

ROOT = Path(__file__).resolve().parents[1]
# Knobs per device: enough timed work for stable GPU figures inside the 8-minute budget; on
# the CPU the fewest runs that still exercise every path.
KNOBS = {
    "cuda": dict(new_tokens=128, warmup=2, settle_tol=0.03, max_warmup=8, min_iters=5,
                 min_seconds=2.0, max_seconds=40.0, copy_mib=1024, graph_cap_s=300.0),
    "cpu": dict(new_tokens=16, warmup=1, settle_tol=0.25, max_warmup=3, min_iters=2,
                min_seconds=0.0, max_seconds=10.0, copy_mib=16, graph_cap_s=5.0),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a dry run)")
    ap.add_argument("--profile", default="full-shape", choices=("tiny", "full-shape"))
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--out", default=str(ROOT / "report" / "gpu-check.json"),
                    help="where the JSON summary goes")
    ap.add_argument("--parity-tokens", type=int, default=16,
                    help="greedy tokens compared with the CPU float32 reference")
    args = ap.parse_args(argv)
    if not args.device.startswith(("cuda", "cpu")):
        print(f"gpu_check: --device {args.device!r}: use cuda, cuda:N or cpu", file=sys.stderr)
        return 2
    try:
        tgt = target(RunConfig.from_params(model="gpa", profile=args.profile,
                                           device=args.device, dtype=args.dtype))
    except ReportError as exc:
        print(f"gpu_check: refused: {exc}\n  This check needs a CUDA GPU (make gpu-check on a "
              "machine with one). For a dry run of the same paths on this CPU: "
              "python scripts/gpu_check.py --device cpu --profile tiny", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    summary = check(tgt, args.parity_tokens)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    out = write_json(args.out, summary)
    print(render(summary))
    print(f"written: {out}")
    return 0 if all(v is not False for v in summary["judged"].values()) else 1


def check(tgt: Any, parity_tokens: int) -> dict[str, Any]:
    """Run the performance sections and the parity comparison; the summary as plain JSON."""
    run = perf.setup(tgt, perf.Settings(**KNOBS[tgt.selection.backend],
                                        sweep_batches=(1,), sweep_prompt_lengths=(16,)))
    lat = perf.latency(run)
    bw = perf.bandwidth(run, lat)
    md = perf.modes(run, lat)
    m, b, g = lat.metrics, bw.metrics, md.metrics
    speed = next((c for c in md.checks if c.name.startswith("graph mode speedup")), None)
    same = next((c for c in md.checks if "same greedy tokens" in c.name), None)
    par = parity_check(run, parity_tokens)
    return {
        "device": str(run.sel.device), "device_name": run.be.properties().get("name"),
        "model": f"gpa ({run.loaded.profile})", "dtype": devices.dtype_name(run.dtype),
        "torch": torch.__version__, "timer": run.be.timer_protocol,
        "eager_hf_generate_tokens_per_s": g["eager_tokens_per_s"],
        "graph_tokens_per_s": g.get("graph_tokens_per_s"),
        "graph_speedup": g.get("speedup"),
        "graph_mode": g.get("graph_label") or g.get("graph_problem"),
        "capture": g.get("capture"),
        "decode_tokens_per_s_decode_loop_dynamic_cache": m["decode_tokens_per_s"],
        "decode_tokens_per_s_decode_loop_static_cache": m["static_decode_tokens_per_s"],
        "prefill_s": m["ttft_s"],
        "warmup_settled": {"e2e": m["e2e"]["settled"], "hf_generate": m["hf_generate"]["settled"],
                           "static_decode": m["static_decode"]["run"]["settled"]},
        "copy_bandwidth_gb_s": b["copy_bytes_per_s"] / 1e9,
        "achieved_bandwidth_gb_s": b["achieved_bytes_per_s"] / 1e9,
        "bandwidth_utilization_decode_loop": b["utilization"],
        "bandwidth_utilization_static_decode": b.get("utilization_static_decode"),
        "memory_devices": m["memory_devices"],
        "parity": par,
        "judged": {"identical_weights": par["identical_weights"],
                   "graph_same_tokens_as_eager": same.passed if same else None,
                   "graph_speedup_target": speed.passed if speed else None},
        "notes": [*lat.notes, *md.notes],
    }


def parity_check(run: Any, new_tokens: int) -> dict[str, Any]:
    """The device run against the CPU float32 reference with the same weights (sha256 of every
    tensor in the device's dtype): last-position logits of the prompt, greedy tokens."""
    ref = load(run.target.cfg, reference_side(torch.float32))
    dt = run.dtype
    mine, theirs = weight_digests(run.loaded, (dt,)), weight_digests(ref, (dt,))
    name = devices.dtype_name(dt)
    differ = [k for k, v in mine[name].items() if theirs[name].get(k) != v]
    inputs = perf.lm_inputs(run)
    cpu_inputs = {k: v.cpu() for k, v in inputs.items()}
    with torch.inference_mode():
        logits = run.lm(**inputs).logits[:, -1].float().cpu()  # [B, V]
        ref_logits = ref.lm(**cpu_inputs).logits[:, -1]  # [B, V]
    cmp = parity.compare(logits, ref_logits, name)
    exact = generate.exactly(generate.eos_ids(run.lm, run.loaded.tokenizer))
    toks = generate.decode(run.lm, {"input_ids": inputs["input_ids"]}, new_tokens, exact).ids
    ref_toks = generate.decode(ref.lm, {"input_ids": cpu_inputs["input_ids"]}, new_tokens,
                               exact).ids
    return {"identical_weights": not differ, "tensors": len(mine[name]),
            "differing_tensors": differ[:5], "logits_cosine": cmp.cosine,
            "logits_rel_l2": cmp.rel_l2, "logits_max_abs": cmp.max_abs,
            "top1_same": bool((logits.argmax(-1) == ref_logits.argmax(-1)).all()),
            "greedy_tokens_same_fraction": float((toks == ref_toks).double().mean()),
            "reference": "cpu float32, same weights (sha256 in the device dtype)"}


def render(s: dict[str, Any]) -> str:
    """The compact summary a reader wants first."""
    def f(v: Any, spec: str = ".1f") -> str:
        return "n/a" if v is None else format(v, spec)

    cap = s["capture"] or {}
    par = s["parity"]
    return "\n".join([
        f"gpu_check: {s['model']} {s['dtype']} on {s['device']} ({s['device_name']}), {s['wall_s']} s",
        f"  eager HF generate        {f(s['eager_hf_generate_tokens_per_s'])} tok/s",
        f"  graph mode               {f(s['graph_tokens_per_s'])} tok/s  ratio {f(s['graph_speedup'], '.2f')}"
        f"  [{s['graph_mode']}]",
        f"  capture                  {cap.get('summary', 'not measured')}",
        f"  decode tok/s             decode loop, dynamic cache {f(s['decode_tokens_per_s_decode_loop_dynamic_cache'])}"
        f" | static cache {f(s['decode_tokens_per_s_decode_loop_static_cache'])}"
        f" (prefill {f(s['prefill_s'], '.4f')} s)",
        f"  bandwidth                {f(s['achieved_bandwidth_gb_s'], '.2f')} of {f(s['copy_bandwidth_gb_s'], '.1f')} GB/s copy"
        f" = {f(s['bandwidth_utilization_decode_loop'], '.1%')} (static cache "
        f"{f(s['bandwidth_utilization_static_decode'], '.1%')})",
        f"  parity vs cpu float32    identical weights {par['identical_weights']} ({par['tensors']} tensors);"
        f" logits cosine {par['logits_cosine']:.6f}, rel L2 {par['logits_rel_l2']:.4g}; top-1 same"
        f" {par['top1_same']}; greedy tokens same {par['greedy_tokens_same_fraction']:.0%}",
        f"  judged                   {s['judged']}",
    ])


if __name__ == "__main__":
    sys.exit(main())
