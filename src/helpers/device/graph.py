"""Graph capture: which torch.compile backend and mode capture the decode step on each device,
and what a graph-mode run really captured (CaptureWatch).

What counts as captured, per backend:
  cuda  inductor's "reduce-overhead" mode records CUDA graphs through torch.cuda.CUDAGraph
        (torch/_inductor/cudagraph_trees.py: capture in torch.cuda.graph(...), replay by
        CUDAGraph.replay). A graph inductor declines is counted in
        torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] (cudagraph_utils.py,
        log_cudagraph_skip_and_bump_counter; output_code.py), its reason in the compilation
        metrics' cudagraph_skip_reason.
  npu   torchair's "reduce-overhead" mode is aclgraph: it captures with
        torch_npu.npu.graph(NPUGraph) and replays NPUGraph.replay (torchair
        python/torchair/_acl_concrete_graph/acl_graph.py, AclGraph.capture / run); past
        debug.aclgraph.static_capture_size_limit it falls back to eager for good, so replays
        stop. It runs only on Atlas A2 / A3 (torchair user guide, "reduce-overhead模式配置":
        "目前仅适用于 Atlas A2 训练系列产品/Atlas 800I A2 推理产品, Atlas A3 训练系列产品").
  both  dynamo's own counters: counters["stats"]["unique_graphs"] (graphs compiled,
        torch/_dynamo/output_graph.py) and counters["graph_break"] (reason -> count,
        torch/_dynamo/exc.py add_to_stats("graph_break")).
  cpu   inductor's default mode compiles kernels; nothing is captured or replayed.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Seconds allowed for the first graph-mode call (compile + capture) before it is abandoned:
# short on CPU, where inductor's C++ build is slow and graph replay brings little.
_GRAPH_CAP_S = {"cpu": 20.0, "cuda": 600.0, "npu": 600.0}

# What a verified capture is called in the report, per backend; never used for an unverified one.
CAPTURED_NAME = {"cuda": "CUDA graphs", "npu": "aclgraph"}

# Device names (torch.npu.get_device_name = the CANN SoC version). First-generation Ascend 910
# (DAV_1001 architecture): Ascend910A, Ascend910B, Ascend910ProA, Ascend910ProB,
# Ascend910PremiumA; Atlas A2 (910B): Ascend910B1 .. Ascend910B4, Ascend910B2C, Ascend910B4-1;
# Atlas A3 (910C): Ascend910_9391, _9392, _9381, _9382, _9372, _9362 (the SoC lists in CANN's
# and torch_npu's sources, e.g. torch_npu's DevType map and CANN's socVersionToNpuArchMap).
_FIRST_GEN_910 = {"ascend910", "ascend910a", "ascend910b", "ascend910proa", "ascend910prob",
                  "ascend910premiuma"}
_A2_RE = re.compile(r"^ascend910b\d", re.IGNORECASE)
_A3_RE = re.compile(r"^ascend910_93\d\d", re.IGNORECASE)


def aclgraph_support(device_name: str) -> tuple[bool | None, str]:
    """(whether torchair's aclgraph can run on this NPU, what that rests on); None: unknown."""
    name = device_name.strip()
    if _A2_RE.match(name):
        return True, f"{name} is Atlas A2 (910B): aclgraph supported"
    if _A3_RE.match(name):
        return True, f"{name} is Atlas A3 (910C): aclgraph supported"
    if name.lower() in _FIRST_GEN_910:
        return False, (f"{name} is a first-generation Ascend 910: torchair's aclgraph "
                       "(reduce-overhead) needs Atlas A2 / A3 (Ascend910B1-B4, Ascend910_93xx)")
    return None, (f"{name or 'this NPU'}: not a known Atlas A2 / A3 name; aclgraph needs "
                  "Atlas A2 / A3 and may not engage")


def captures_graphs(backend: str) -> bool:
    """Whether graph mode on this backend captures device graphs (a capture a signal must not cut)."""
    return backend in CAPTURED_NAME


def graph_compile(backend: str, device_name: str = "") -> tuple[Any | None, str, str]:
    """(torch.compile backend, torch.compile mode, what was asked for) for graph capture here.

    cuda: inductor with mode "reduce-overhead" (records CUDA graphs). npu: torchair's NPU
    backend in its "reduce-overhead" (aclgraph) mode, passed as the torch.compile backend
    (torchair takes no torch.compile mode); declined on a first-generation 910. cpu:
    inductor's default mode (C++/OpenMP kernels, no graph replay). The backend is None when
    graph mode is unavailable; the text then says why. The text names what was requested:
    whether a graph was captured is CaptureWatch's to say.
    """
    if backend == "cuda":
        return "inductor", "reduce-overhead", \
            "torch.compile(backend='inductor', mode='reduce-overhead')"
    if backend == "npu":  # the caller has imported torch_npu
        supported, why = aclgraph_support(device_name)
        if supported is False:
            return None, "default", why
        try:
            import torchair  # ships with torch_npu; importable once torch_npu is imported
        except ImportError as exc:
            return None, "default", f"torchair not importable ({exc}); NPU graph mode needs torchair"
        npu_cfg = torchair.CompilerConfig()
        npu_cfg.mode = "reduce-overhead"  # torchair user guide: the aclgraph switch
        how = "torch.compile(backend=torchair NPU backend, config.mode='reduce-overhead')"
        return torchair.get_npu_backend(compiler_config=npu_cfg), "default", \
            how if supported else f"{how}; {why}"
    return "inductor", "default", \
        "torch.compile(backend='inductor', mode='default') on CPU: compiled kernels, no graph replay"


def graph_compile_cap_s(backend: str) -> float:
    """Default time cap for the first graph-mode call on this backend."""
    return _GRAPH_CAP_S.get(backend, 600.0)


# ---- what was captured ------------------------------------------------------------------------


@dataclass
class Capture:
    """What one graph-mode block compiled, captured and replayed, and whether that is a verified
    capture of the decode step (`problems` empty)."""

    backend: str
    compiled: bool | None  # transformers compiled the decode step (None: not asked)
    unique_graphs: int  # graphs dynamo compiled
    graph_breaks: dict[str, int]  # reason -> count
    cudagraph_skips: int
    skip_reasons: list[str]
    captures: int | None  # device graphs captured (None: nothing to observe on this backend)
    replays: int | None  # device graph replays
    problems: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.problems

    @property
    def label(self) -> str:
        """The mode's name in the report: names the captured graph kind only when verified."""
        if self.verified and self.backend in CAPTURED_NAME:
            return f"graph: static cache + {CAPTURED_NAME[self.backend]}"
        if self.verified:
            return "graph: static cache + torch.compile (compiled, no graph capture on this device)"
        return "graph: static cache + torch.compile (capture not verified)"

    def summary(self) -> str:
        breaks = sum(self.graph_breaks.values())
        parts = [f"decode step compiled by transformers: {_yes(self.compiled)}",
                 f"{self.unique_graphs} graph(s) compiled, {breaks} graph break(s)"]
        if self.backend == "cuda" or self.cudagraph_skips:
            parts.append(f"{self.cudagraph_skips} cudagraph skip(s)")
        if self.captures is not None:
            parts.append(f"{self.captures} device graph capture(s), {self.replays} replay(s)")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "compiled": self.compiled,
                "unique_graphs": self.unique_graphs, "graph_breaks": dict(self.graph_breaks),
                "cudagraph_skips": self.cudagraph_skips, "skip_reasons": list(self.skip_reasons),
                "captures": self.captures, "replays": self.replays, "verified": self.verified,
                "problems": list(self.problems), "label": self.label, "summary": self.summary()}


def _yes(value: bool | None) -> str:
    return "not asked" if value is None else ("yes" if value else "no")


class CaptureWatch:
    """Counts, for the block, dynamo's graphs and breaks, inductor's cudagraph skips, and the
    device graph class's capture_end and replay calls (methods wrapped for the block only).

    `graph_class` is torch.cuda.CUDAGraph or torch.npu.NPUGraph (None on cpu: nothing to count).
    """

    def __init__(self, backend: str, graph_class: Any = None) -> None:
        self.backend = backend
        self.graph_class = graph_class
        self.captures = 0
        self.replays = 0
        self._saved: dict[str, Any] = {}
        self._before: dict[str, Counter] = {}
        self._metrics_before = 0
        self.delta: dict[str, Counter] = {}
        self.new_metrics: list[Any] = []

    def __enter__(self) -> CaptureWatch:
        self._before = _counters()
        self._metrics_before = len(_compilation_metrics())
        if self.graph_class is not None:
            for name, bump in (("capture_end", "captures"), ("replay", "replays")):
                self._wrap(name, bump)
        return self

    def _wrap(self, name: str, bump: str) -> None:
        cls = self.graph_class
        original = getattr(cls, name, None)
        if original is None:
            return
        self._saved[name] = cls.__dict__.get(name)

        def counted(graph: Any, *args: Any, **kwargs: Any) -> Any:
            setattr(self, bump, getattr(self, bump) + 1)
            return original(graph, *args, **kwargs)

        setattr(cls, name, counted)

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved.items():
            if value is None:
                delattr(self.graph_class, name)
            else:
                setattr(self.graph_class, name, value)
        self._saved = {}
        after = _counters()
        self.delta = {k: after.get(k, Counter()) - self._before.get(k, Counter()) for k in after}
        self.new_metrics = _compilation_metrics()[self._metrics_before:]

    def report(self, compiled: bool | None) -> Capture:
        """The Capture of the block; its problems say why it is not a verified capture."""
        d = self.delta
        breaks = {str(k): int(v) for k, v in d.get("graph_break", Counter()).items()}
        unique = int(d.get("stats", Counter()).get("unique_graphs", 0))
        skips = int(d.get("inductor", Counter()).get("cudagraph_skips", 0))
        reasons = list(dict.fromkeys(str(r) for m in self.new_metrics
                                     if (r := getattr(m, "cudagraph_skip_reason", None))))
        observable = self.graph_class is not None
        cap = Capture(self.backend, compiled, unique, breaks, skips, reasons,
                      self.captures if observable else None, self.replays if observable else None)
        if compiled is False:
            cap.problems.append("transformers declined to compile the decode step "
                                "(generate ran it eagerly)")
        if unique == 0:
            cap.problems.append("dynamo compiled no graph in the block")
        if breaks:
            cap.problems.append(f"{sum(breaks.values())} graph break(s): "
                                + "; ".join(f"{r} (x{n})" for r, n in list(breaks.items())[:3]))
        if skips:
            cap.problems.append(f"inductor skipped CUDA graphs {skips} time(s)"
                                + (f": {'; '.join(reasons[:3])}" if reasons else ""))
        if captures_graphs(self.backend):
            if not observable:
                cap.problems.append(f"no device graph class on {self.backend} to observe")
            elif self.replays == 0:
                cap.problems.append(f"no {CAPTURED_NAME[self.backend]} replay "
                                    f"({self.captures} capture(s)): the decode step ran without "
                                    "a captured graph")
        return cap


def _counters() -> dict[str, Counter]:
    from torch._dynamo.utils import counters  # defaultdict(Counter), process-wide

    return {k: Counter(v) for k, v in counters.items()}


def _compilation_metrics() -> list[Any]:
    try:
        from torch._dynamo.utils import get_compilation_metrics
    except ImportError:  # older torch: no per-compile record, counters still say the count
        return []
    return list(get_compilation_metrics())
