"""Eager versus graph mode: plain generate against a static KV cache whose decode step is
compiled and captured (CUDA graphs on CUDA, torchair's aclgraph on an NPU, inductor on the CPU),
with the first call (the compile) under a time cap, and what was really captured recorded.

The cap never interrupts a graph capture: where graph mode captures device graphs (cuda, npu)
it is checked between decode steps, by a stopping criterion that generate calls after each
step (no capture is open then); only on the CPU, where nothing is captured, a SIGALRM also
stops a long inductor build mid-compile.
"""

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
from transformers import StoppingCriteria, StoppingCriteriaList

from helpers import bench, parity, paths
from helpers import device as devices
from helpers.bench import Measurement
from helpers.device.graph import Capture, captures_graphs
from helpers.errors import CapReached
from helpers.generate import pad_id
from helpers.records import Check
from helpers.stages.kit import Section, failure_row
from helpers.stages.performance import inductor_cache
from helpers.stages.performance.generation import Run, hf_generate_fn, lm_inputs


@contextlib.contextmanager
def time_cap(seconds: float) -> Iterator[bool]:
    """Raise CapReached in the block after `seconds` (SIGALRM; main thread on POSIX only).

    Only for blocks that capture no device graph: the handler can fire anywhere in the block.
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


class StepCap(StoppingCriteria):
    """Raise CapReached between decode steps once `seconds` have passed since start().

    generate calls a stopping criterion after each step's forward has returned, so a graph
    capture inside the step has ended when this runs; it never stops generation otherwise.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.steps = 0
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self.steps = 0
        self._t0 = time.perf_counter()

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        self.steps += 1
        spent = time.perf_counter() - self._t0
        if self.seconds > 0 and spent > self.seconds:
            raise CapReached(f"first graph-mode call still running after the {self.seconds:g} s "
                             f"cap (checked after decode step {self.steps}, {spent:.1f} s)")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


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


SPREAD_REASON = (
    "graph mode declined: the model is spread over {devices} (DEVICE_MAP=auto). A captured "
    "graph replays on one device's stream: inductor skips CUDA graphs for a graph that uses "
    "several devices (torch/_inductor/cudagraph_utils.py, check_multiple_devices_or_any_cpu_nodes), "
    "torchair's graph mode supports one NPU per process (torchair user guide, 使用约束), and "
    "transformers does not compile a model with CPU offload"
)
QUICK_REASON = (
    "skipped by preset quick: on {backend} graph mode captures no device graph (inductor's "
    "kernels, no replay), so its compile, the stage's largest cost, would judge only that its "
    "tokens equal eager's; `performance.preset=thorough` measures it"
)
GRAPH_ROW = "graph: static cache + torch.compile"


def modes(run: Run, lat: Section) -> Section:
    """HF generate eager (the latency section's comparison runs) vs HF generate over a static
    cache with graph capture, batch 1.

    The speed-up is judged only when the capture is verified (CaptureWatch); otherwise its row
    is info and says why. The row's name says "CUDA graphs" / "aclgraph" only for a verified
    capture.
    """
    s = run.settings
    eager: Measurement = lat.data["hf_generate"]
    rows = [_mode_row("eager: HF generate, dynamic cache", eager, s.new_tokens, "")]
    metrics: dict[str, Any] = {"eager_tokens_per_s": eager.rate(s.new_tokens)}
    checks: list[Check] = []
    if not s.graph_mode:
        graph, how, problem, capture = None, "", "graph_mode=False", None
    elif run.be.spread:
        graph, how, capture = None, "", None
        problem = SPREAD_REASON.format(devices=", ".join(str(d) for d in run.be.devices))
    elif s.preset == "quick" and not captures_graphs(run.sel.backend):
        graph, how, capture = None, "", None
        problem = QUICK_REASON.format(backend=run.sel.backend)
    else:
        graph, how, problem, capture = _graph_measurement(run)
    metrics["graph_how"] = how
    if capture is not None:
        metrics["capture"] = capture.as_dict()
    if graph is None:
        rows.append({"mode": capture.label if capture else GRAPH_ROW, "status": "not measured",
                     "note": problem})
        metrics["graph_problem"] = problem
        return Section("modes", pd.DataFrame(rows), checks, metrics,
                       notes=[f"graph mode not measured: {problem}"])
    assert capture is not None
    rows.append(_mode_row(capture.label, graph, s.new_tokens, f"{how}; {capture.summary()}"))
    ratio = graph.rate(s.new_tokens) / eager.rate(s.new_tokens)
    same = _same_tokens(eager.output, graph.output)
    metrics.update(graph_tokens_per_s=graph.rate(s.new_tokens), speedup=ratio,
                   compile_s=graph.first_call_s, same_tokens=same, graph=graph.to_dict(),
                   graph_label=capture.label, capture_verified=capture.verified)
    checks.append(Check.judge("graph mode: same greedy tokens as eager", same["fraction"], "==",
                              1.0, "graph capture must not change results: both modes run the same greedy decode",
                              detail=same["detail"]))
    checks.append(_capture_check(capture))
    checks.append(_speedup_check(run, ratio, capture))
    notes = [f"first graph call (compile + capture): {graph.first_call_s:.2f} s",
             f"capture: {capture.summary()}"]
    if not capture.verified:
        notes.append("capture not verified: " + "; ".join(capture.problems))
    return Section("modes", pd.DataFrame(rows), checks, metrics, notes=notes)


def _graph_measurement(run: Run) -> tuple[Measurement | None, str, str, Capture | None]:
    """(measurement or None, how graph mode was made, why it is missing, what was captured)."""
    cc, how = graph_config(run.sel)
    if cc is None:
        return None, how, how, None
    with inductor_cache.use(inductor_cache.FOLDER) as files_before:
        shown = os.path.relpath(inductor_cache.FOLDER, paths.ROOT)
        how += (f"; compile cache {shown} "
                f"({'warm' if files_before else 'cold'}: {files_before} files before)")
        return _graph_runs(run, cc, how)


def _graph_runs(run: Run, cc: Any, how: str) -> tuple[Measurement | None, str, str, Capture | None]:
    s = run.settings
    cap = graph_cap(run)
    inputs, pad = lm_inputs(run), pad_id(run.loaded.tokenizer)
    step_cap = StepCap(cap)
    first = hf_generate_fn(run.lm, inputs, s.new_tokens, pad, cache_implementation="static",
                        compile_config=cc, stopping_criteria=StoppingCriteriaList([step_cap]))
    fn = hf_generate_fn(run.lm, inputs, s.new_tokens, pad, cache_implementation="static",
                     compile_config=cc)
    prewarm_s = _prewarm(run, cc)
    # a signal may land anywhere: only where no device graph is captured (the CPU)
    signal_cap = cap if not captures_graphs(run.sel.backend) else 0.0
    timer = run.be.timer()
    started = time.time()  # file timestamps, to find what a cut-short compile wrote
    watch = devices.graph_watch(run.be)
    with watch:
        try:
            with time_cap(signal_cap), timer:
                step_cap.start()
                first()
        except Exception as exc:  # CapReached, or a compiler that is missing or fails
            _reset_compiled(run.lm)
            spent = timer.host_seconds
            if _cap_reached(exc) or spent >= cap:
                inductor_cache.discard_partial(inductor_cache.FOLDER, started)  # half-written artifacts must not be reused
                return None, how, (f"{how}: the first call (compile) did not finish within the "
                                   f"{cap:g} s cap (stopped after {spent:.1f} s, "
                                   f"{_where(exc, step_cap)}); graph_cap_s raises it"), None
            return None, how, f"{how}: failed: {failure_row('graph', exc)['error']}", None
        compiled = hasattr(run.lm, "_compiled_call")  # transformers' get_compiled_call sets it
        first_s = timer.seconds
        protocol = s.protocol().with_(warmup=max(2, s.warmup) - 1)  # CUDA graphs record on call 2-3
        m = bench.measure(fn, run.be, protocol, name="graph")
    capture = watch.report(compiled)
    m.warmup_s.insert(0, first_s)
    _reset_compiled(run.lm)
    return m, f"{how}; compiler stack start-up {prewarm_s:.2f} s (outside the cap)", "", capture


def _cap_reached(exc: BaseException | None) -> bool:
    """Whether the cap stopped the call: CapReached itself, or wrapped by the compiler
    (inductor re-raises what interrupts it as InductorError, with the cause chained)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, CapReached) or "CapReached" in str(exc).split("\n", 1)[0]:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _where(exc: BaseException, step_cap: StepCap) -> str:
    if not _cap_reached(exc):
        return f"then failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if "decode step" in str(exc):
        return f"checked between decode steps, after step {step_cap.steps}"
    return "interrupted during the compile (no device graph is captured on this backend)"


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
    """Drop the compiled decode step so later eager runs are untouched, and generate's static
    cache: one a cut-short call left before its first write (4.57 sizes a layer on that
    write) would fail the next generate."""
    for attr in ("_compiled_call", "_last_compile_config", "_cache"):
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
    agree = parity.token_agreement(b.reshape(-1), a.reshape(-1))  # row after row
    first = agree["first_divergence"]
    where = "all equal" if first is None else f"first difference at position {first % a.shape[-1]}"
    return {"fraction": agree["agreement_pct"] / 100,
            "detail": f"{agree['matches']}/{a.numel()} tokens equal; {where}"}


def _capture_check(capture: Capture) -> Check:
    detail = capture.summary()
    if not capture.verified:
        detail += "; not verified: " + "; ".join(capture.problems)
    return Check("graph mode: capture verified", capture.verified, "", None,
                 "what dynamo, inductor and the device graph class recorded during graph mode "
                 "(helpers.device.graph.CaptureWatch)", detail=detail)


def _speedup_check(run: Run, ratio: float, capture: Capture) -> Check:
    name = "graph mode speedup over eager (tokens/s ratio)"
    if not capture.verified:
        return Check(name, round(ratio, 3), "", None,
                     "not judged: the graph capture is not verified, so this is not the speed-up "
                     "of graph mode", detail="; ".join(capture.problems))
    goal = run.loaded.recipe.graph_target
    if goal is not None and run.sel.backend == goal.backend:
        return Check.judge(name, round(ratio, 3), ">=", goal.ratio, goal.source,
                           detail=capture.summary())
    why = (f"the recipe's target ({goal.ratio:g}x) applies on {goal.backend}" if goal
           else "the recipe sets no graph-mode target")
    return Check(name, round(ratio, 3), "", None, f"{why}; here informational",
                 detail=capture.summary())
