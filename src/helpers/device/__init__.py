"""The one place that knows npu / cuda / cpu: selection, dtypes, sync, timer, memory.

Submodules: facts (properties, versions, numeric settings), fallbacks (operators torch_npu
runs on the CPU), graph (the graph-capture backend per device).

Nothing else in the project imports torch_npu or branches on the backend. The NPU path mirrors
torch.cuda through torch.npu, the module torch_npu registers; every torch_npu name used here was
checked against torch_npu's own sources / documentation (Ascend/pytorch, torch_npu/npu/__init__.py
``__all__`` and the Ascend Extension for PyTorch API pages):
  torch.npu.device_count, synchronize, Event(enable_timing=True) + elapsed_time (ms),
  current_stream, memory_allocated, memory_reserved, max_memory_allocated, max_memory_reserved,
  reset_peak_memory_stats, empty_cache, get_device_name, get_device_properties (fields name,
  total_memory; cube_core_num / vector_core_num on recent releases, read with getattr),
  is_bf16_supported, torch.npu.matmul.allow_hf32 (default False), torch.npu.conv.allow_hf32
  (default True), torch_npu.npu.utils.get_cann_version(module="CANN") (CANN >= 8.1.RC1, "" below),
  torch.version.cann (set by torch_npu.utils.collect_env), and the fallback warning text printed by
  torch_npu's npu_cpu_fallback: "CAUTION: The operator 'aten::X' is not currently supported on the
  NPU backend and will fall back to run on the CPU. This may have performance implications."
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import importlib.util
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import torch

from helpers.device import facts, graph
from helpers.device.fallbacks import (
    FallbackCapture,
    capture_fallbacks,
    hiding_settings,
    parse_fallbacks,
)
from helpers.errors import DeviceError

__all__ = ["FallbackCapture", "capture_fallbacks", "hiding_settings", "parse_fallbacks"]

BACKENDS = ("cpu", "cuda", "npu")
VALID_FORMS = "auto, cpu, cuda, cuda:N, npu, npu:N (N = device index, e.g. npu:0)"
NOT_INSTALLED = "not installed"
_REQUEST_RE = re.compile(r"^(auto|cpu|cuda|npu)(?::(\d+))?$")

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
# How well each backend runs each dtype: "full" or "limited" (runs, but many kernels lack it).
# bfloat16 on an accelerator is asked of the device itself (is_bf16_supported), not listed here.
_NPU_DTYPES = {"float32": "full", "float16": "full", "float64": "limited"}
_CUDA_DTYPES = {"float32": "full", "float16": "full", "float64": "full"}
_CPU_DTYPES = {"float32": "full", "bfloat16": "full", "float16": "full", "float64": "full"}



@dataclass(frozen=True)
class Selection:
    """The device a run uses and why it was chosen."""

    requested: str
    device: torch.device
    backend: str  # "cpu" | "cuda" | "npu"
    index: int | None  # None on cpu
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values, for results files."""
        return {"requested": self.requested, "device": str(self.device), "backend": self.backend,
                "index": self.index, "reason": self.reason}


# ---- probes: small functions that look at the machine (tests monkeypatch these) ------------


@dataclass(frozen=True)
class NpuImport:
    """Outcome of `import torch_npu`: the module, or why there is none."""

    module: ModuleType | None
    installed: bool
    error: str = ""


_npu_import: NpuImport | None = None


def _import_torch_npu() -> NpuImport:
    """Import torch_npu once (it registers torch.npu); never raises.

    A broken install (ImportError, or OSError from missing CANN libraries) is reported in
    `error`, so `auto` can say why it did not pick the NPU.
    """
    global _npu_import
    if _npu_import is None:
        if importlib.util.find_spec("torch_npu") is None:
            _npu_import = NpuImport(None, installed=False, error="torch_npu not installed")
        else:
            try:
                module = importlib.import_module("torch_npu")
                _npu_import = NpuImport(module, installed=True)
            except Exception as exc:  # ImportError, OSError (CANN libs), RuntimeError (driver)
                _npu_import = NpuImport(
                    None, installed=True,
                    error=f"torch_npu failed to import ({type(exc).__name__}: {exc})",
                )
    return _npu_import


def _probe_npu() -> tuple[int, str]:
    """(number of visible NPUs, why 0 when it is 0)."""
    imp = _import_torch_npu()
    if imp.module is None:
        return 0, imp.error
    try:
        count = int(imp.module.npu.device_count())
    except Exception as exc:
        return 0, f"torch_npu imported but device_count failed ({exc})"
    return count, "" if count else "torch_npu imported but sees no NPU (check npu-smi info)"


def rocm_build() -> str:
    """The HIP version when torch is a ROCm build ("" otherwise): torch.cuda then drives AMD GPUs."""
    return str(getattr(torch.version, "hip", None) or "")


def _probe_cuda() -> tuple[int, str]:
    """(number of visible CUDA devices, why 0 when it is 0)."""
    hip = rocm_build()
    if torch.version.cuda is None and not hip:
        return 0, (f"CUDA not available (torch {torch.__version__} is a build without CUDA "
                   "or ROCm)")
    if not torch.cuda.is_available():
        build = f"a ROCm build (HIP {hip})" if hip else "a CUDA build"
        return 0, (f"CUDA not available (torch {torch.__version__} is {build}; no GPU or "
                   "driver visible to torch)")
    return torch.cuda.device_count(), ""


def _cuda_bf16_supported(index: int = 0) -> bool:
    """Native bfloat16 on CUDA device `index` (not the slow emulation).

    torch.cuda.is_bf16_supported asks the current device, so it is asked inside
    torch.cuda.device(index).
    """
    with torch.cuda.device(index):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch without the keyword
            return bool(torch.cuda.is_bf16_supported())


def _npu_bf16_supported(index: int = 0) -> bool:
    """bfloat16 on NPU `index`, as torch_npu says (torch.npu.is_bf16_supported(), current device)."""
    imp = _import_torch_npu()
    if imp.module is None:
        return False
    api = imp.module.npu
    try:
        with api.device(index):
            return bool(api.is_bf16_supported())
    except Exception:  # a release without the call: the device cannot be asked
        return False


def device_count(backend: str) -> int:
    """Devices of that backend visible to this process (cpu counts as 1)."""
    if backend == "cpu":
        return 1
    if backend == "cuda":
        return _probe_cuda()[0]
    if backend == "npu":
        return _probe_npu()[0]
    raise DeviceError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")


# ---- selection --------------------------------------------------------------------------


def select(request: str = "auto") -> Selection:
    """Turn a DEVICE value into a Selection; `auto` prefers npu, then cuda, then cpu."""
    text = str(request).strip().lower()
    match = _REQUEST_RE.match(text)
    if not match:
        raise DeviceError(f"DEVICE={request!r} is not valid; use one of: {VALID_FORMS}")
    kind, index = match.group(1), match.group(2)
    idx = int(index) if index is not None else None
    if kind == "auto":
        return _select_auto(request)
    if kind == "cpu":
        if idx not in (None, 0):
            raise DeviceError(f"DEVICE={request!r}: the CPU is one device; use DEVICE=cpu")
        return Selection(request, torch.device("cpu"), "cpu", None, "requested cpu")
    if kind == "cuda":
        return _select_cuda(request, idx or 0)
    return _select_npu(request, idx or 0)


def _select_auto(request: str) -> Selection:
    seen: list[str] = []
    n_npu, why_npu = _probe_npu()
    if n_npu:
        return _npu_selection(request, 0, f"torch_npu sees {n_npu} NPU(s); using npu:0")
    seen.append(why_npu)
    n_cuda, why_cuda = _probe_cuda()
    if n_cuda:
        rocm = f" (torch is a ROCm build, HIP {rocm_build()})" if rocm_build() else ""
        seen.append(f"CUDA sees {n_cuda} device(s){rocm}; using cuda:0")
        return Selection(request, torch.device("cuda", 0), "cuda", 0, "; ".join(seen))
    seen += [why_cuda, "using cpu"]
    return Selection(request, torch.device("cpu"), "cpu", None, "; ".join(seen))


def _select_cuda(request: str, idx: int) -> Selection:
    count, why = _probe_cuda()
    if count == 0:
        raise DeviceError(
            f"DEVICE={request} but {why}; use DEVICE=auto (picks what exists) or DEVICE=cpu"
        )
    if idx >= count:
        raise DeviceError(
            f"DEVICE={request} but this machine has {count} CUDA device(s) "
            f"(valid: cuda:0 .. cuda:{count - 1}); check CUDA_VISIBLE_DEVICES"
        )
    rocm = f" (torch is a ROCm build, HIP {rocm_build()})" if rocm_build() else ""
    return Selection(request, torch.device("cuda", idx), "cuda", idx,
                     f"requested cuda:{idx}; CUDA sees {count} device(s){rocm}")


def _torch_npu_install_hint() -> str:
    base = torch.__version__.split("+")[0]
    return (
        f"install the torch-npu release that matches torch {base} "
        f"(pip install \"torch-npu=={base}.*\", e.g. {base}.post1) and source the CANN "
        "set_env.sh (e.g. source /usr/local/Ascend/ascend-toolkit/set_env.sh)"
    )


def _select_npu(request: str, idx: int) -> Selection:
    imp = _import_torch_npu()
    if not imp.installed:
        raise DeviceError(f"DEVICE={request}: torch_npu is not installed: {_torch_npu_install_hint()}")
    if imp.module is None:
        raise DeviceError(
            f"DEVICE={request}: {imp.error}; check that torch-npu matches torch "
            f"{torch.__version__} and that the CANN set_env.sh was sourced in this shell"
        )
    count, why = _probe_npu()
    if count == 0:
        raise DeviceError(
            f"DEVICE={request} but {why}; check ASCEND_RT_VISIBLE_DEVICES, or use DEVICE=auto or cpu"
        )
    if idx >= count:
        raise DeviceError(
            f"DEVICE={request} but this machine has {count} NPU(s) "
            f"(valid: npu:0 .. npu:{count - 1}); check ASCEND_RT_VISIBLE_DEVICES"
        )
    return _npu_selection(request, idx, f"requested npu:{idx}; torch_npu sees {count} NPU(s)")


def _npu_selection(request: str, idx: int, reason: str) -> Selection:
    # the "npu" device type exists only once torch_npu is imported (PrivateUse1 renamed)
    return Selection(request, torch.device("npu", idx), "npu", idx, reason)


# ---- dtypes -----------------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the one spelling of a dtype in records and tables."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """"bfloat16" -> torch.bfloat16, for the dtypes this project runs."""
    if name not in _DTYPES:
        raise DeviceError(f"unknown dtype {name!r}", f"use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def dtype_support(backend: str, index: int | None = None) -> dict[str, str]:
    """dtype name -> "full" | "limited" for that backend (only the dtypes it can run).

    On cuda and npu bfloat16 is there when device `index` (default 0) says it supports it:
    torch.cuda.is_bf16_supported(including_emulation=False), torch.npu.is_bf16_supported().
    """
    if backend == "cpu":
        return dict(_CPU_DTYPES)
    if backend == "npu":
        out = dict(_NPU_DTYPES)
        if _npu_bf16_supported(index or 0):
            out["bfloat16"] = "full"
        return out
    if backend == "cuda":
        out = dict(_CUDA_DTYPES)
        if _cuda_bf16_supported(index or 0):
            out["bfloat16"] = "full"
        return out
    raise DeviceError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")


def supported_dtypes(backend: str, index: int | None = None) -> list[str]:
    return list(dtype_support(backend, index))


def resolve_dtype(sel: Selection, name: str = "auto") -> torch.dtype:
    """DTYPE name -> torch.dtype; auto = float32 on an accelerator, bfloat16 on cpu."""
    text = str(name).strip().lower()
    if text == "auto":
        text = "bfloat16" if sel.backend == "cpu" else "float32"
    supported = supported_dtypes(sel.backend, sel.index)
    if text not in supported:
        raise DeviceError(
            f"DTYPE={name!r} cannot run on {sel.device} ({sel.backend}); "
            f"supported dtypes there: {', '.join(supported)} (or auto)"
        )
    return _DTYPES[text]


# ---- backend: sync, timer, memory, properties -------------------------------------------


class Timer:
    """Wall time of a block, synchronized: `with be.timer() as t: ...; t.seconds`.

    On cuda/npu every device of the backend's placement is synchronized before the start and
    after the end. On one device a pair of device events (Event(enable_timing=True)) on its
    current stream brackets the block and seconds = event elapsed time; over several devices
    (DEVICE_MAP=auto) events on one stream cannot bracket work queued on the others, so
    seconds = host perf_counter time between the two all-device synchronizations. On cpu:
    time.perf_counter around the block. host_seconds is the perf_counter time of the same
    block on every backend.
    """

    def __init__(self, backend: Backend) -> None:
        self._be = backend
        self.seconds: float = math.nan
        self.host_seconds: float = math.nan
        self._events: tuple[Any, Any] | None = None
        self._t0 = 0.0

    @property
    def protocol(self) -> str:
        return self._be.timer_protocol

    def __enter__(self) -> Timer:
        be = self._be
        be.synchronize()
        if be.api is not None and not be.spread:
            stream = be.api.current_stream(be.sel.device)
            start = be.api.Event(enable_timing=True)
            end = be.api.Event(enable_timing=True)
            self._events = (start, end)
            self._t0 = time.perf_counter()
            start.record(stream)
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        be = self._be
        if self._events is not None:
            start, end = self._events
            end.record(be.api.current_stream(be.sel.device))
            be.synchronize()
            self.host_seconds = time.perf_counter() - self._t0
            self.seconds = start.elapsed_time(end) / 1000.0  # ms -> s
        else:
            be.synchronize()
            self.host_seconds = time.perf_counter() - self._t0
            self.seconds = self.host_seconds


MEMORY_KEYS = ("allocated", "reserved", "peak_allocated", "peak_reserved")


class Backend:
    """One interface over cpu / cuda / npu; `api` is torch.cuda or torch.npu (None on cpu).

    `devices` are the devices of the placement it measures: the selected one, or every
    accelerator a DEVICE_MAP=auto plan uses (`spanning`). Synchronization, memory and peak
    resets cover all of them. On an accelerator the selected index becomes the current device
    (set_device), so streams and events without an explicit device live on it.
    """

    def __init__(self, sel: Selection, devices: Iterable[torch.device] = ()) -> None:
        self.sel = sel
        self.name = sel.backend
        self.api: Any = _device_api(sel.backend)
        self.devices: tuple[torch.device, ...] = tuple(devices) or (sel.device,)
        if self.api is not None and sel.index is not None:
            self.api.set_device(sel.index)

    def __repr__(self) -> str:
        return f"Backend({', '.join(str(d) for d in self.devices)})"

    @property
    def spread(self) -> bool:
        """Whether the placement uses more than one device."""
        return len(self.devices) > 1

    def spanning(self, placement: Iterable[str | torch.device]) -> Backend:
        """This backend over every device of its type that `placement` uses (the selected one
        first, then by index); itself when that is only the selected device. Modules placed
        on the cpu (accelerate's offload) are host memory, which memory() reports as RSS."""
        found = {torch.device(d) for d in placement}
        mine = sorted((d for d in found if d.type == self.name and self.api is not None),
                      key=lambda d: (d != self.sel.device, d.index or 0))
        if self.sel.device not in mine:
            mine.insert(0, self.sel.device)
        if len(mine) == 1:
            return self
        return Backend(self.sel, mine)

    @property
    def timer_protocol(self) -> str:
        if self.api is None:
            return "time.perf_counter around the block (cpu: work is synchronous)"
        sync = (f"torch.{self.name}.synchronize of "
                f"{', '.join(str(d) for d in self.devices)} before the start and after the end")
        if self.spread:
            return f"time.perf_counter between {sync} (events cannot span devices)"
        return f"torch.{self.name}.Event pair (enable_timing=True) around the block; {sync}"

    def synchronize(self) -> None:
        """Wait until all queued work on every device of the placement has finished (no-op on cpu)."""
        if self.api is not None:
            for dev in self.devices:
                self.api.synchronize(dev)

    def timer(self) -> Timer:
        return Timer(self)

    def memory_rows(self) -> list[dict[str, Any]]:
        """One row per device of the placement (bytes: allocated, reserved, peak_allocated,
        peak_reserved) and, over several devices, a "total" row; [] on cpu (no allocator).

        The total of the peaks is the sum of each device's own peak (they need not coincide).
        """
        if self.api is None:
            return []
        rows = [{"device": str(dev),
                 "allocated": int(self.api.memory_allocated(dev)),
                 "reserved": int(self.api.memory_reserved(dev)),
                 "peak_allocated": int(self.api.max_memory_allocated(dev)),
                 "peak_reserved": int(self.api.max_memory_reserved(dev))} for dev in self.devices]
        if len(rows) > 1:
            rows.append({"device": "total", **{k: sum(r[k] for r in rows) for k in MEMORY_KEYS}})
        return rows

    def memory(self) -> dict[str, int | None]:
        """Bytes: allocated, reserved, peak_allocated, peak_reserved (None on cpu), host RSS.

        Device figures are totals over the placement's devices (memory_rows has each one).
        peak_rss is the process's lifetime peak RSS (getrusage); peak_rss_since_reset is the
        Linux VmHWM, which reset_peak() rewinds (None where that is not available).
        """
        out: dict[str, int | None] = dict.fromkeys(MEMORY_KEYS)
        rows = self.memory_rows()
        if rows:
            out.update({k: rows[-1][k] for k in MEMORY_KEYS})  # the total, or the one device
        out["host_rss"] = host_rss()
        out["peak_rss"] = peak_rss()
        out["peak_rss_since_reset"] = _vm_hwm()
        return out

    def reset_peak(self) -> None:
        """Restart peak tracking on every device of the placement, and the host VmHWM on Linux.

        The allocator's cache is emptied first: a peak reserved restarts at the bytes reserved
        now, so blocks cached by earlier work would otherwise count in this measurement's peak.
        """
        if self.api is not None:
            self.synchronize()
            gc.collect()  # tensors waiting for the collector return their blocks first
            self.empty_cache()
            for dev in self.devices:
                self.api.reset_peak_memory_stats(dev)
        _reset_vm_hwm()

    def empty_cache(self) -> None:
        """Return cached, unused blocks of every device of the placement to the driver (no-op
        on cpu). empty_cache acts on the current device, so each device is made current in turn."""
        if self.api is not None:
            for dev in self.devices:
                with self.api.device(dev):
                    self.api.empty_cache()

    def properties(self) -> dict[str, Any]:
        if self.name == "cuda":
            return facts.cuda_properties(self.sel.index or 0, _cuda_bf16_supported(self.sel.index or 0))
        if self.name == "npu":
            props = facts.npu_properties(self.api, self.sel.index or 0)
            props["aclgraph"] = graph.aclgraph_support(str(props["name"]))[1]
            return props
        return facts.cpu_properties()

    def dtype_support(self) -> dict[str, str]:
        return dtype_support(self.name, self.sel.index)

    def supported_dtypes(self) -> list[str]:
        return supported_dtypes(self.name, self.sel.index)


def backend(sel: Selection) -> Backend:
    return Backend(sel)


def _device_api(name: str) -> Any:
    if name == "cuda":
        return torch.cuda
    if name == "npu":
        imp = _import_torch_npu()
        if imp.module is None:
            raise DeviceError(f"npu backend needs torch_npu: {imp.error}")
        return imp.module.npu  # the same module torch_npu registers as torch.npu
    return None


def host_rss() -> int:
    """Resident set size of this process, bytes."""
    return int(psutil.Process().memory_info().rss)


def peak_rss() -> int | None:
    """Lifetime peak RSS of this process in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows: psutil's peak working set, already bytes
        return getattr(psutil.Process().memory_info(), "peak_wset", None)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def _vm_hwm() -> int | None:
    """Linux peak RSS since the last reset (VmHWM in /proc/self/status), bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def _reset_vm_hwm() -> None:
    # writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


# ---- facts, fallbacks and graph capture: the submodules, with this module's torch_npu -------


def cpu_properties() -> dict[str, Any]:
    return facts.cpu_properties()


def stack_versions() -> dict[str, str]:
    """torch, torch_npu, CANN, CUDA runtime, cuDNN versions; "not installed" where absent."""
    return facts.stack_versions(_import_torch_npu().module)


def numeric_settings(sel: Selection) -> dict[str, Any]:
    """The global switches that change numerics: matmul precision, TF32 / HF32, determinism."""
    npu = _import_torch_npu().module if sel.backend == "npu" else None
    return facts.numeric_settings(sel.backend, npu)


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
        api = _import_torch_npu().module.npu
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
        api = _import_torch_npu().module.npu  # torchair is importable once torch_npu is
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
        return getattr(_import_torch_npu().module.npu, "NPUGraph", None)
    return None
