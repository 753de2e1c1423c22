"""The one place that knows npu / cuda / cpu: selection, sync, timer, memory, properties, fallbacks.

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

import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import torch

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
_NPU_DTYPES = {"float32": "full", "bfloat16": "full", "float16": "full", "float64": "limited"}
_CPU_DTYPES = {"float32": "full", "bfloat16": "full", "float16": "full", "float64": "full"}


class DeviceError(ValueError):
    """A device or dtype request that cannot be met here; the message says what to do instead."""


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


def _probe_cuda() -> tuple[int, str]:
    """(number of visible CUDA devices, why 0 when it is 0)."""
    if torch.version.cuda is None:
        return 0, f"CUDA not available (torch {torch.__version__} is a build without CUDA)"
    if not torch.cuda.is_available():
        return 0, "CUDA not available (no GPU or driver visible to torch)"
    return torch.cuda.device_count(), ""


def _cuda_bf16_supported() -> bool:
    """Native bfloat16 on the current CUDA device (not the slow emulation)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without the keyword
        return bool(torch.cuda.is_bf16_supported())


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
        seen.append(f"CUDA sees {n_cuda} device(s); using cuda:0")
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
    return Selection(request, torch.device("cuda", idx), "cuda", idx,
                     f"requested cuda:{idx}; CUDA sees {count} device(s)")


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


def dtype_support(backend: str) -> dict[str, str]:
    """dtype name -> "full" | "limited" for that backend (only the dtypes it can run)."""
    if backend == "cpu":
        return dict(_CPU_DTYPES)
    if backend == "npu":
        return dict(_NPU_DTYPES)
    if backend == "cuda":
        out = {"float32": "full", "float16": "full", "float64": "full"}
        if _cuda_bf16_supported():
            out["bfloat16"] = "full"
        return out
    raise DeviceError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")


def supported_dtypes(backend: str) -> list[str]:
    return list(dtype_support(backend))


def resolve_dtype(sel: Selection, name: str = "auto") -> torch.dtype:
    """DTYPE name -> torch.dtype; auto = float32 on an accelerator, bfloat16 on cpu."""
    text = str(name).strip().lower()
    if text == "auto":
        text = "bfloat16" if sel.backend == "cpu" else "float32"
    supported = supported_dtypes(sel.backend)
    if text not in supported:
        raise DeviceError(
            f"DTYPE={name!r} cannot run on {sel.device} ({sel.backend}); "
            f"supported dtypes there: {', '.join(supported)} (or auto)"
        )
    return _DTYPES[text]


# ---- backend: sync, timer, memory, properties -------------------------------------------


class Timer:
    """Wall time of a block, synchronized: `with be.timer() as t: ...; t.seconds`.

    On cuda/npu the device is synchronized before the start, a pair of device events
    (Event(enable_timing=True)) brackets the block, and the device is synchronized at the end;
    seconds = event elapsed time. On cpu: time.perf_counter around the block.
    host_seconds is the perf_counter time of the same block on every backend.
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
        if be.api is not None:
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


class Backend:
    """One interface over cpu / cuda / npu; `api` is torch.cuda or torch.npu (None on cpu)."""

    def __init__(self, sel: Selection) -> None:
        self.sel = sel
        self.name = sel.backend
        self.api: Any = _device_api(sel.backend)

    def __repr__(self) -> str:
        return f"Backend({self.sel.device})"

    @property
    def timer_protocol(self) -> str:
        if self.api is None:
            return "time.perf_counter around the block (cpu: work is synchronous)"
        return (f"torch.{self.name}.Event pair (enable_timing=True) around the block; "
                f"torch.{self.name}.synchronize before the start and after the end")

    def synchronize(self) -> None:
        """Wait until all queued work on the device has finished (no-op on cpu)."""
        if self.api is not None:
            self.api.synchronize(self.sel.device)

    def timer(self) -> Timer:
        return Timer(self)

    def memory(self) -> dict[str, int | None]:
        """Bytes: allocated, reserved, peak_allocated, peak_reserved (None on cpu), host RSS.

        peak_rss is the process's lifetime peak RSS (getrusage); peak_rss_since_reset is the
        Linux VmHWM, which reset_peak() rewinds (None where that is not available).
        """
        dev = self.sel.device
        out: dict[str, int | None] = {
            "allocated": None, "reserved": None, "peak_allocated": None, "peak_reserved": None,
        }
        if self.api is not None:
            out["allocated"] = int(self.api.memory_allocated(dev))
            out["reserved"] = int(self.api.memory_reserved(dev))
            out["peak_allocated"] = int(self.api.max_memory_allocated(dev))
            out["peak_reserved"] = int(self.api.max_memory_reserved(dev))
        out["host_rss"] = host_rss()
        out["peak_rss"] = peak_rss()
        out["peak_rss_since_reset"] = _vm_hwm()
        return out

    def reset_peak(self) -> None:
        """Restart peak tracking: the device allocator's peaks, and the host VmHWM on Linux."""
        if self.api is not None:
            self.api.reset_peak_memory_stats(self.sel.device)
        _reset_vm_hwm()

    def empty_cache(self) -> None:
        """Return cached, unused device blocks to the driver (no-op on cpu)."""
        if self.api is not None:
            self.api.empty_cache()

    def properties(self) -> dict[str, Any]:
        if self.name == "cuda":
            return _cuda_properties(self.sel.index or 0)
        if self.name == "npu":
            return _npu_properties(self.api, self.sel.index or 0)
        return cpu_properties()

    def dtype_support(self) -> dict[str, str]:
        return dtype_support(self.name)

    def supported_dtypes(self) -> list[str]:
        return supported_dtypes(self.name)


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


def cpu_properties() -> dict[str, Any]:
    return {
        "name": _cpu_name(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "total_memory": int(psutil.virtual_memory().total),
        "intra_op_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                 capture_output=True, text=True, timeout=5)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _cuda_properties(idx: int) -> dict[str, Any]:
    p = torch.cuda.get_device_properties(idx)
    return {
        "name": p.name,
        "total_memory": int(p.total_memory),
        "multi_processor_count": p.multi_processor_count,
        "capability": f"{p.major}.{p.minor}",
        "major": p.major,
        "minor": p.minor,
        "bf16_native": _cuda_bf16_supported(),
    }


def _npu_properties(api: Any, idx: int) -> dict[str, Any]:
    p = api.get_device_properties(idx)
    out: dict[str, Any] = {
        "name": api.get_device_name(idx),
        "total_memory": int(getattr(p, "total_memory", 0)) or None,
    }
    # core counts exist on recent torch_npu releases only
    for key in ("cube_core_num", "vector_core_num", "L2_cache_size"):
        value = getattr(p, key, None)
        if value is not None:
            out[key] = int(value)
    return out


# ---- versions and numeric settings ------------------------------------------------------


def stack_versions() -> dict[str, str]:
    """torch, torch_npu, CANN, CUDA runtime, cuDNN versions; "not installed" where absent."""
    return {
        "torch": torch.__version__,
        "torch_npu": _dist_version("torch-npu", "torch_npu"),
        "cann": _cann_version(),
        "cuda_runtime": torch.version.cuda or NOT_INSTALLED,
        "cudnn": _cudnn_version(),
    }


def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def _cudnn_version() -> str:
    try:
        if torch.version.cuda is None or not torch.backends.cudnn.is_available():
            return NOT_INSTALLED
        v = torch.backends.cudnn.version()
    except Exception:
        return NOT_INSTALLED
    return format_cudnn_version(v) if v else NOT_INSTALLED


def format_cudnn_version(v: int) -> str:
    """torch.backends.cudnn.version() -> "major.minor.patch"."""
    # cuDNN 9 encodes major*10000 + minor*100 + patch; cuDNN <= 8 major*1000 + minor*100 + patch
    major, rest = (v // 10000, v % 10000) if v >= 90000 else (v // 1000, v % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _cann_version() -> str:
    imp = _import_torch_npu()
    if imp.module is not None:
        try:
            from torch_npu.npu.utils import get_cann_version

            text = get_cann_version(module="CANN")
            if text:
                return str(text)
        except Exception:
            pass
        text = getattr(torch.version, "cann", None)
        if text and text != "not known":
            return str(text)
    return _cann_version_from_files()


def _cann_version_from_files() -> str:
    """Read version=... from the toolkit's ascend_*_install.info (as torch_npu's collect_env)."""
    roots = [os.environ.get(k, "") for k in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")]
    roots.append("/usr/local/Ascend/ascend-toolkit/latest")
    for root in filter(None, roots):
        base = Path(root)
        if not base.is_dir():
            continue
        # the file sits in the root or one level down (<root>/<arch>-linux/)
        for info in [*base.glob("ascend_*_install.info"), *base.glob("*/ascend_*_install.info")]:
            try:
                for line in info.read_text(errors="replace").splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() in ("version", "Version") and value.strip():
                        return value.strip()
            except OSError:
                continue
    return NOT_INSTALLED


def numeric_settings(sel: Selection) -> dict[str, Any]:
    """The global switches that change numerics: matmul precision, TF32 / HF32, determinism."""
    out: dict[str, Any] = {
        "backend": sel.backend,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "npu_matmul_allow_hf32": None,
        "npu_conv_allow_hf32": None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
    }
    imp = _import_torch_npu() if sel.backend == "npu" else None
    if imp is not None and imp.module is not None:
        npu = imp.module.npu
        out["npu_matmul_allow_hf32"] = _flag(getattr(npu, "matmul", None), "allow_hf32")
        out["npu_conv_allow_hf32"] = _flag(getattr(npu, "conv", None), "allow_hf32")
    return out


def _flag(obj: Any, name: str) -> bool | None:
    try:
        value = getattr(obj, name)
    except Exception:
        return None
    return None if value is None else bool(value)


# ---- fallback-to-CPU capture ------------------------------------------------------------

# "The operator 'aten::X' is not currently supported on the NPU backend and will fall back to
# run on the CPU" (torch_npu npu_cpu_fallback; the MPS fallback says the same with "MPS").
_FALLBACK_RE = re.compile(
    r"operator\s+[`'\"](?P<op>[^`'\"\s]+)[`'\"]\s+is\s+not\s+(?:currently\s+)?"
    r"(?:supported|implemented)\s+(?:on|for)\s+the\s+(?P<backend>\w+)\s+(?:backend|device)"
    r"[\s,]+(?:and\s+)?(?:will\s+)?falls?\s*back",
    re.IGNORECASE,
)


def parse_fallbacks(text: str) -> list[str]:
    """Operator names (e.g. 'aten::isin.Tensor_Tensor') in fallback warnings, unique, in order."""
    return list(dict.fromkeys(m.group("op") for m in _FALLBACK_RE.finditer(text)))


@dataclass
class FallbackCapture:
    """What capture_fallbacks saw: the captured stderr text and the operators that fell back."""

    text: str = ""
    operators: list[str] = field(default_factory=list)


@contextmanager
def capture_fallbacks() -> Iterator[FallbackCapture]:
    """Capture fd 2 (C++ stderr) and Python warnings for the block; parse fallback operators.

    torch_npu prints the fallback warning from C++ once per operator; depending on the call
    path it reaches fd 2 directly or becomes a Python UserWarning, so both are captured. After
    the block everything captured is written again to the real stderr / warnings, so nothing
    is hidden from the user; fb.text and fb.operators are filled in then.
    """
    fb = FallbackCapture()
    sys.stderr.flush()
    saved_fd = os.dup(2)
    sink = tempfile.TemporaryFile()
    os.dup2(sink.fileno(), 2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield fb
    finally:
        try:
            sys.stderr.flush()  # Python-level text written inside the block lands in the sink
        except Exception:
            pass
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sink.seek(0)
        fd_text = sink.read().decode("utf-8", errors="replace")
        sink.close()
        if fd_text:
            os.write(2, fd_text.encode("utf-8"))
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        warned = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
        fb.text = fd_text + warned
        fb.operators = parse_fallbacks(fb.text)


# ---- graph capture -------------------------------------------------------------------------

# Seconds allowed for the first graph-mode call (compile + capture) before it is abandoned:
# short on CPU, where inductor's C++ build is slow and graph replay brings little.
_GRAPH_CAP_S = {"cpu": 20.0, "cuda": 600.0, "npu": 600.0}


def graph_compile(sel: Selection) -> tuple[Any | None, str, str]:
    """(torch.compile backend, torch.compile mode, what that means) for graph capture here.

    cuda: inductor with mode "reduce-overhead" (CUDA graphs). npu: torchair's NPU backend in
    its "reduce-overhead" (aclgraph) mode, passed as the torch.compile backend (torchair
    takes no torch.compile mode). cpu: inductor's default mode (C++/OpenMP kernels, no graph
    replay). The backend is None when graph mode is unavailable; the text then says why.
    """
    if sel.backend == "cuda":
        return "inductor", "reduce-overhead", \
            "torch.compile(backend='inductor', mode='reduce-overhead'): CUDA graphs"
    if sel.backend == "npu":
        _import_torch_npu()
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


def graph_compile_cap_s(sel: Selection) -> float:
    """Default time cap for the first graph-mode call on this backend."""
    return _GRAPH_CAP_S.get(sel.backend, 600.0)
