"""The one place that knows npu / cuda / cpu. Submodules, one job each:

  npu        the one import of torch_npu
  selection  DEVICE -> Selection (auto prefers npu, then cuda, then cpu); dtypes each runs
  backends   Backend: synchronize, memory and properties of every device of a placement
  timer      the one synchronized timer     memory  host RSS and its peaks
  facts      properties, versions, numeric settings
  fallbacks  operators torch_npu runs on the CPU
  graph      the graph-capture backend per device, and what a capture really recorded

This module re-exports their public names and holds what needs torch_npu and a submodule.

Nothing else in the project imports torch_npu or branches on the backend. The NPU path mirrors
torch.cuda through torch.npu, the module torch_npu registers; every torch_npu name used here was
checked against torch_npu's own sources / documentation (Ascend/pytorch, torch_npu/npu/__init__.py
``__all__`` and the Ascend Extension for PyTorch API pages):
  torch.npu.device_count, synchronize, Event(enable_timing=True) + elapsed_time (ms),
  current_stream, memory_allocated, memory_reserved, max_memory_allocated, max_memory_reserved,
  reset_peak_memory_stats, mem_get_info, empty_cache, get_device_name, get_device_properties (fields name,
  total_memory; cube_core_num / vector_core_num on recent releases, read with getattr),
  is_bf16_supported, torch.npu.matmul.allow_hf32 (default False), torch.npu.conv.allow_hf32
  (default True), torch_npu.npu.utils.get_cann_version(module="CANN") (CANN >= 8.1.RC1, "" below),
  torch.version.cann (set by torch_npu.utils.collect_env), and the fallback warning text printed by
  torch_npu's npu_cpu_fallback: "CAUTION: The operator 'aten::X' is not currently supported on the
  NPU backend and will fall back to run on the CPU. This may have performance implications."
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from helpers.device import facts, graph, npu
from helpers.device.backends import Backend, backend
from helpers.device.fallbacks import (
    FallbackCapture,
    capture_fallbacks,
    hiding_settings,
    parse_fallbacks,
)
from helpers.device.memory import MEMORY_KEYS, host_rss, peak_rss
from helpers.device.npu import NpuImport
from helpers.device.selection import (
    NOT_INSTALLED,
    Selection,
    device_count,
    dtype_name,
    dtype_of,
    dtype_support,
    resolve_dtype,
    rocm_build,
    select,
    supported_dtypes,
)
from helpers.device.timer import Timer
from helpers.grammar import BACKENDS

__all__ = ["BACKENDS", "MEMORY_KEYS", "NOT_INSTALLED", "Backend", "FallbackCapture", "NpuImport",
           "Selection", "Timer", "backend", "capture_fallbacks", "device_count", "dtype_name",
           "dtype_of", "dtype_support", "hiding_settings", "host_rss", "parse_fallbacks",
           "peak_rss", "resolve_dtype", "rocm_build", "select", "supported_dtypes"]


# ---- facts and graph capture: the submodules, with this package's torch_npu ---------------


def cpu_properties() -> dict[str, Any]:
    return facts.cpu_properties()


def stack_versions() -> dict[str, str]:
    """torch, torch_npu, CANN, CUDA runtime, cuDNN versions; "not installed" where absent."""
    return facts.stack_versions(npu.import_torch_npu().module)


def numeric_settings(sel: Selection) -> dict[str, Any]:
    """The global switches that change numerics: matmul precision, TF32 / HF32, determinism."""
    module = npu.import_torch_npu().module if sel.backend == "npu" else None
    return facts.numeric_settings(sel.backend, module)


@contextmanager
def full_float32(device: torch.device, enabled: bool = True) -> Iterator[list[str]]:
    """IEEE float32 matmuls and convolutions on `device` for the block, flags restored after.

    CUDA: TF32 off for cuBLAS and cuDNN (the fp32_precision API where torch has it, the
    allow_tf32 flags otherwise: mixing the two makes torch raise). Ascend: HF32 off
    (torch.npu.matmul.allow_hf32, torch.npu.conv.allow_hf32; convolutions default to on).
    The CPU has neither. enabled=False leaves everything as it is. Yields what was set.
    """
    targets: list[tuple[Any, str, Any]] = []
    if enabled and device.type == "cuda":
        b = torch.backends
        if hasattr(b.cuda.matmul, "fp32_precision") and hasattr(b.cudnn, "conv"):
            targets = [(b.cuda.matmul, "fp32_precision", "ieee"),
                       (b.cudnn.conv, "fp32_precision", "ieee")]
        else:
            targets = [(b.cuda.matmul, "allow_tf32", False), (b.cudnn, "allow_tf32", False)]
    elif enabled and device.type == "npu":
        api = npu.import_torch_npu().module.npu
        targets = [(api.matmul, "allow_hf32", False), (api.conv, "allow_hf32", False)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    for obj, name, value in targets:
        setattr(obj, name, value)
    try:
        yield [f"{name}={value}" for _, name, value in targets]
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def graph_compile(sel: Selection) -> tuple[Any | None, str, str]:
    """(torch.compile backend, mode, what that means) for graph capture on this selection."""
    name = ""
    if sel.backend == "npu":
        api = npu.import_torch_npu().module.npu  # torchair is importable once torch_npu is
        name = str(api.get_device_name(sel.index or 0))
    return graph.graph_compile(sel.backend, name)


def graph_compile_cap_s(sel: Selection) -> float:
    """Default time cap for the first graph-mode call on this backend."""
    return graph.graph_compile_cap_s(sel.backend)


def graph_watch(be: Backend) -> graph.CaptureWatch:
    """What a graph-mode block really captured on this backend (see graph.CaptureWatch)."""
    return graph.CaptureWatch(be.name, _graph_class(be.name))


def _graph_class(name: str) -> Any:
    """The class whose capture_end / replay every graph capture goes through, None on cpu:
    torch.cuda.CUDAGraph (inductor's CUDA graph trees record and replay with it) and
    torch.npu.NPUGraph (torch_npu/npu/graphs.py; torchair's aclgraph captures with
    torch_npu.npu.graph(NPUGraph) and replays NPUGraph.replay, torchair _acl_concrete_graph)."""
    if name == "cuda":
        return torch.cuda.CUDAGraph
    if name == "npu":
        return getattr(npu.import_torch_npu().module.npu, "NPUGraph", None)
    return None
