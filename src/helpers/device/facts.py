"""Facts about the machine that the environment stage records: device properties, the
versions of the accelerator stack, and the numeric settings that change what a device computes.

Functions here take what they need (the torch_npu module, a Selection) as arguments, so this
module imports nothing of the project: helpers.device wraps them with its own torch_npu import.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import torch

NOT_INSTALLED = "not installed"


def cpu_properties() -> dict[str, Any]:
    return {
        "name": cpu_name(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "total_memory": int(psutil.virtual_memory().total),
        "intra_op_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def cpu_name() -> str:
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


def cuda_properties(idx: int, bf16_native: bool) -> dict[str, Any]:
    p = torch.cuda.get_device_properties(idx)
    return {
        "name": torch.cuda.get_device_name(idx),
        "total_memory": int(p.total_memory),
        "multi_processor_count": p.multi_processor_count,
        "capability": f"{p.major}.{p.minor}",
        "major": p.major,
        "minor": p.minor,
        "bf16_native": bf16_native,
        "rocm_hip": str(getattr(torch.version, "hip", None) or "") or "not a ROCm build",
    }


def npu_properties(api: Any, idx: int) -> dict[str, Any]:
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


def stack_versions(npu: ModuleType | None = None) -> dict[str, str]:
    """torch, torch_npu, CANN, CUDA runtime, cuDNN versions; "not installed" where absent."""
    return {
        "torch": torch.__version__,
        "torch_npu": _dist_version("torch-npu", "torch_npu"),
        "cann": _cann_version(npu),
        "cuda_runtime": torch.version.cuda or NOT_INSTALLED,
        # a ROCm build of torch drives AMD GPUs through torch.cuda; torch.version.hip is its HIP
        "rocm_hip": str(getattr(torch.version, "hip", None) or "") or NOT_INSTALLED,
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


def _cann_version(npu: ModuleType | None) -> str:
    if npu is not None:
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


def numeric_settings(backend: str, npu: ModuleType | None = None) -> dict[str, Any]:
    """The global switches that change numerics: matmul precision, TF32 / HF32, determinism.

    torch >= 2.9 has two ways to set TF32 (the legacy allow_tf32 flags and fp32_precision);
    once the new one is used, reading a legacy flag raises. Every value is read on its own:
    one that cannot be read says why instead of failing the stage.
    """
    b = torch.backends
    out: dict[str, Any] = {
        "backend": backend,
        "float32_matmul_precision": _read(torch.get_float32_matmul_precision),
        "cuda_matmul_allow_tf32": _read(lambda: bool(b.cuda.matmul.allow_tf32)),
        "cudnn_allow_tf32": _read(lambda: bool(b.cudnn.allow_tf32)),
        "cudnn_benchmark": _read(lambda: bool(b.cudnn.benchmark)),
        "cudnn_deterministic": _read(lambda: bool(b.cudnn.deterministic)),
    }
    # the fp32_precision API (torch >= 2.9): "ieee", "tf32", "bf16" or "none" (= inherit)
    for key, obj in (("fp32_precision", b), ("cuda_matmul_fp32_precision", b.cuda.matmul),
                     ("cudnn_fp32_precision", b.cudnn),
                     ("cudnn_conv_fp32_precision", getattr(b.cudnn, "conv", None)),
                     ("mkldnn_fp32_precision", getattr(b, "mkldnn", None))):
        if obj is not None and hasattr(obj, "fp32_precision"):
            out[key] = _read(lambda o=obj: str(o.fp32_precision))
    out.update({
        "npu_matmul_allow_hf32": None,
        "npu_conv_allow_hf32": None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
    })
    if backend == "npu" and npu is not None:
        api = npu.npu
        out["npu_matmul_allow_hf32"] = _flag(getattr(api, "matmul", None), "allow_hf32")
        out["npu_conv_allow_hf32"] = _flag(getattr(api, "conv", None), "allow_hf32")
    return out


def _read(get: Any) -> Any:
    """get(), or "unreadable: <why>" when torch refuses to say (mixed TF32 APIs)."""
    try:
        return get()
    except Exception as exc:  # RuntimeError from torch's TF32 API checks, AttributeError
        return f"unreadable: {str(exc).split(',')[0][:120]}"


def _flag(obj: Any, name: str) -> bool | None:
    try:
        value = getattr(obj, name)
    except Exception:
        return None
    return None if value is None else bool(value)
