"""Eager versus graph mode: plain generate against a static KV cache whose decode step is
compiled and captured (CUDA graphs on CUDA, torchair's aclgraph on an NPU, inductor on the CPU),
with the first call (the compile) under a time cap."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import torch

from helpers import bench, paths
from helpers import device as devices
from helpers.bench import Measurement
from helpers.errors import CapReached
from helpers.records import Check
from helpers.stages.kit import Section, failure_row
from helpers.stages.performance import inductor_cache
from helpers.stages.performance.generation import Run, generate_fn, lm_inputs, pad_id


@contextlib.contextmanager
def time_cap(seconds: float) -> Iterator[bool]:
    """Raise CapReached in the block after `seconds` (SIGALRM; main thread on POSIX only).

    Yields whether the cap is enforced; where it cannot be, the caller checks afterwards.
    """
    usable = (seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield False
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CapReached(f"first graph-mode call still running after the {seconds:g} s cap")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def graph_config(sel: devices.Selection) -> tuple[Any | None, str]:
    """transformers CompileConfig for the decode step on this device, and what it means.

    The backend and mode come from the device module (the one place that knows npu / cuda /
    cpu). transformers compiles the decode step by itself only on cuda-like devices, so other
    backends set CompileConfig._compile_all_devices (its documented switch for that).
    """
    from transformers import CompileConfig

    backend, mode, how = devices.graph_compile(sel)
    if backend is None:
        return None, how
    cc = CompileConfig(backend=backend, mode=mode)
    if sel.backend != "cuda":
        cc._compile_all_devices = True
    return cc, how


def graph_cap(run: Run) -> float:
    return run.settings.graph_cap_s or devices.graph_compile_cap_s(run.sel)


def modes(run: Run, lat: Section) -> Section:
    """Eager (the latency section's N-token runs) vs static cache + graph capture, batch 1."""
    s = run.settings
    eager: Measurement = lat.data["e2e"]
    rows = [_mode_row("eager: generate, dynamic cache", eager, s.new_tokens, "")]
    metrics: dict[str, Any] = {"eager_tokens_per_s": eager.rate(s.new_tokens)}
    checks: list[Check] = []
    graph, how, problem = _graph_measurement(run) if s.graph_mode else (None, "", "graph_mode=False")
    metrics["graph_how"] = how
    if graph is None:
        rows.append({"mode": "graph: static cache + torch.compile", "status": "not measured",
                     "note": problem})
        metrics["graph_problem"] = problem
        return Section("modes", pd.DataFrame(rows), checks, metrics,
                       notes=[f"graph mode not measured: {problem}"])
    rows.append(_mode_row("graph: static cache + torch.compile", graph, s.new_tokens, how))
    ratio = graph.rate(s.new_tokens) / eager.rate(s.new_tokens)
    same = _same_tokens(eager.output, graph.output)
    metrics.update(graph_tokens_per_s=graph.rate(s.new_tokens), speedup=ratio,
                   compile_s=graph.first_call_s, same_tokens=same, graph=graph.to_dict())
    checks.append(Check.judge("graph mode: same greedy tokens as eager", same["fraction"], "==",
                              1.0, "graph capture must not change results: both modes run the same greedy decode",
                              detail=same["detail"]))
    checks.append(_speedup_check(run, ratio))
    return Section("modes", pd.DataFrame(rows), checks, metrics,
                   notes=[f"first graph call (compile + capture): {graph.first_call_s:.2f} s"])


def _graph_measurement(run: Run) -> tuple[Measurement | None, str, str]:
    """(measurement or None, how graph mode was made, why it is missing)."""
    cc, how = graph_config(run.sel)
    if cc is None:
        return None, how, how
    with inductor_cache.use(inductor_cache.FOLDER) as files_before:
        shown = os.path.relpath(inductor_cache.FOLDER, paths.ROOT)
        how += (f"; compile cache {shown} "
                f"({'warm' if files_before else 'cold'}: {files_before} files before)")
        return _graph_runs(run, cc, how)


def _graph_runs(run: Run, cc: Any, how: str) -> tuple[Measurement | None, str, str]:
    s = run.settings
    cap = graph_cap(run)
    fn = generate_fn(run.lm, lm_inputs(run), s.new_tokens, pad_id(run.loaded.tokenizer),
                     cache_implementation="static", compile_config=cc)
    prewarm_s = _prewarm(run, cc)
    timer = run.be.timer()
    started = time.time()  # file timestamps, to find what a cut-short compile wrote
    try:
        with time_cap(cap) as enforced, timer:
            fn()
    except Exception as exc:  # CapReached, or a compiler that is missing or fails
        _reset_compiled(run.lm)
        spent = timer.host_seconds
        if isinstance(exc, CapReached) or spent >= cap:
            inductor_cache.discard_partial(inductor_cache.FOLDER, started)  # half-written artifacts must not be reused
            return None, how, (f"{how}: the first call (compile) did not finish within the "
                               f"{cap:g} s cap (stopped after {spent:.1f} s); graph_cap_s raises it")
        return None, how, f"{how}: failed: {failure_row('graph', exc)['error']}"
    first_s = timer.seconds
    if not enforced and first_s > cap:
        how += f" (cap {cap:g} s not enforceable in this thread; first call took {first_s:.1f} s)"
    protocol = s.protocol().with_(warmup=max(2, s.warmup) - 1)  # CUDA graphs record on call 2-3
    m = bench.measure(fn, run.be, protocol, name="graph")
    m.warmup_s.insert(0, first_s)
    _reset_compiled(run.lm)
    return m, f"{how}; compiler stack start-up {prewarm_s:.2f} s (outside the cap)", ""


def _prewarm(run: Run, cc: Any) -> float:
    """Start the compiler stack on a two-line function, outside the cap; its seconds.

    torch.compile imports much of its stack lazily on the first compilation; an import cut
    short by the cap would leave a half-initialised module behind, so that happens here.
    """
    def tiny(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1

    compiled = torch.compile(tiny, backend=cc.backend, mode=None if cc.mode == "default" else cc.mode)
    x = torch.ones(8, device=run.sel.device)
    _, seconds, _ = bench.timed(run.be, lambda: [compiled(x) for _ in range(3)])
    return seconds


def _reset_compiled(lm: torch.nn.Module) -> None:
    """Drop the compiled decode step so later eager runs are untouched."""
    for attr in ("_compiled_call", "_last_compile_config"):
        if hasattr(lm, attr):
            delattr(lm, attr)
    torch._dynamo.reset()


def _mode_row(mode: str, m: Measurement, new_tokens: int, how: str) -> dict[str, Any]:
    return {"mode": mode, "status": "measured", "tokens/s": m.rate(new_tokens),
            "mean s": m.stats.mean, "p90 s": m.stats.p90, "first call s": m.first_call_s,
            "runs": m.stats.count, "note": how}


def _same_tokens(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Fraction of equal token positions and the first position where they differ."""
    a, b = a.cpu(), b.cpu()
    if a.shape != b.shape:
        return {"fraction": 0.0, "detail": f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"}
    eq = (a == b)
    frac = float(eq.double().mean())
    diff = (~eq).nonzero()
    where = f"first difference at position {int(diff[0, -1])}" if len(diff) else "all equal"
    return {"fraction": frac, "detail": f"{int(eq.sum())}/{eq.numel()} tokens equal; {where}"}


def _speedup_check(run: Run, ratio: float) -> Check:
    name = "graph mode speedup over eager (tokens/s ratio)"
    if run.sel.backend == "cuda" and run.loaded.recipe.name == "gpa":
        return Check.judge(name, round(ratio, 3), ">=", 10.0,
                           "project target: static cache + CUDA graphs at least 10x eager HF generate for the GPA LM at batch 1 (launch-bound decode)")
    return Check(name, round(ratio, 3), "", None,
                 "project target of 10x applies to the GPA LM on CUDA; here informational")
