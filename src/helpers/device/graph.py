"""Graph capture: which torch.compile backend and mode capture the decode step on each device."""

from __future__ import annotations

from typing import Any

# Seconds allowed for the first graph-mode call (compile + capture) before it is abandoned:
# short on CPU, where inductor's C++ build is slow and graph replay brings little.
_GRAPH_CAP_S = {"cpu": 20.0, "cuda": 600.0, "npu": 600.0}


def graph_compile(backend: str) -> tuple[Any | None, str, str]:
    """(torch.compile backend, torch.compile mode, what that means) for graph capture here.

    cuda: inductor with mode "reduce-overhead" (CUDA graphs). npu: torchair's NPU backend in
    its "reduce-overhead" (aclgraph) mode, passed as the torch.compile backend (torchair
    takes no torch.compile mode). cpu: inductor's default mode (C++/OpenMP kernels, no graph
    replay). The backend is None when graph mode is unavailable; the text then says why.
    """
    if backend == "cuda":
        return "inductor", "reduce-overhead", \
            "torch.compile(backend='inductor', mode='reduce-overhead'): CUDA graphs"
    if backend == "npu":  # the caller has imported torch_npu
        try:
            import torchair  # ships with torch_npu; importable once torch_npu is imported
        except ImportError as exc:
            return None, "default", f"torchair not importable ({exc}); NPU graph mode needs torchair"
        npu_cfg = torchair.CompilerConfig()
        npu_cfg.mode = "reduce-overhead"
        return torchair.get_npu_backend(compiler_config=npu_cfg), "default", \
            "torch.compile(backend=torchair NPU backend, mode 'reduce-overhead'): aclgraph"
    return "inductor", "default", \
        "torch.compile(backend='inductor', mode='default') on CPU: compiled kernels, no graph replay"


def graph_compile_cap_s(backend: str) -> float:
    """Default time cap for the first graph-mode call on this backend."""
    return _GRAPH_CAP_S.get(backend, 600.0)
