"""Decode speed of the project's loop against a minimal independent greedy loop and HF generate.

Same model, dtype, device and threads, the same prompt, greedy, N new tokens; the three are
interleaved round by round in one process (so drift in the host's load hits all alike), each
run timed by the backend's synchronized timer after one warmup run each. Prints tokens/s
(N / median run) per contender, the project loop's prefill and decode apart, whether the ids
agree, and the host's load.

    .venv/bin/python scripts/bench_decode.py                         # tiny GPA, 128 tokens
    .venv/bin/python scripts/bench_decode.py --profile full-shape --device cuda --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from typing import Any

import torch

from helpers import bench, generate
from helpers.config import RunConfig
from helpers.stages import performance as perf
from helpers.stages.kit import target


def minimal_loop(lm: torch.nn.Module, ids: torch.Tensor, n: int) -> Callable[[], torch.Tensor]:
    """The shortest greedy loop there is: forward with past_key_values, argmax, feed back."""
    def run() -> torch.Tensor:
        out, x, cache = [], ids, None
        with torch.inference_mode():
            for _ in range(n):
                res = lm(input_ids=x, past_key_values=cache, use_cache=True)
                cache = getattr(res, "cache", None) or res.past_key_values
                x = res.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
                out.append(x)
        return torch.cat(out, dim=1)  # [B, n]

    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpa")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    cfg = RunConfig.from_params(model=args.model, profile=args.profile, device=args.device,
                                dtype=args.dtype)
    run = perf.setup(target(cfg))
    lm, n, be = run.lm, args.tokens, run.be
    ids = perf.lm_inputs(run)["input_ids"].to(run.loaded.input_device("lm"))  # [1, S]
    exact = generate.exactly(generate.eos_ids(lm, run.loaded.tokenizer))
    phases: list[tuple[float, float]] = []

    def project() -> torch.Tensor:
        d = generate.decode(lm, {"input_ids": ids}, n, exact, clock=bench.Clock(be))
        phases.append((d.prefill_s, d.decode_s))
        return d.ids

    contenders = {"project loop (helpers.generate)": project,
                  "minimal loop (forward + past_key_values)": minimal_loop(lm, ids, n),
                  "HF generate": perf.hf_generate_fn(lm, {"input_ids": ids}, n,
                                                     generate.pad_id(run.loaded.tokenizer))}
    outs = {k: bench.timed(be, fn)[0] for k, fn in contenders.items()}  # warmup, and the ids
    seconds: dict[str, list[float]] = {k: [] for k in contenders}
    phases.clear()
    for _ in range(args.rounds):
        for k, fn in contenders.items():
            seconds[k].append(bench.timed(be, fn)[1])
    median = {k: statistics.median(v) for k, v in seconds.items()}
    prefill = statistics.median(p for p, _ in phases)
    decode = statistics.median(d for _, d in phases)
    mine = outs["project loop (helpers.generate)"].cpu()
    result = {
        "model": f"{args.model} ({args.profile})", "device": str(run.sel.device),
        "dtype": str(run.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "tokens": n, "rounds": args.rounds, "load_1min": os.getloadavg()[0],
        "tokens_per_s": {k: n / v for k, v in median.items()},
        "project_prefill_s": prefill, "project_decode_tokens_per_s": (n - 1) / decode,
        "same_ids": {k: bool(torch.equal(v.cpu()[:, -n:], mine)) for k, v in outs.items()},
    }
    print(f"{result['model']} {result['dtype']} on {result['device']}, {result['threads']} "
          f"threads, {n} tokens, {args.rounds} interleaved rounds, load {result['load_1min']:.2f}")
    for k, v in result["tokens_per_s"].items():
        print(f"  {k:44s} {v:9.1f} tok/s  (median {median[k]:.4f} s; same ids: "
              f"{result['same_ids'][k]})")
    print(f"  project loop: prefill {prefill * 1e3:.2f} ms, decode "
          f"{result['project_decode_tokens_per_s']:.1f} tok/s over {n - 1} steps")
    return result


if __name__ == "__main__":
    main()
