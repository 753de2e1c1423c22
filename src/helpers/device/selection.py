"""Which device a run uses (DEVICE: auto, cpu, cuda[:N], npu[:N]) and which dtypes it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from helpers.device import npu
from helpers.errors import DeviceError
from helpers.grammar import BACKENDS, DEVICE_FORMS, DTYPE_BYTES, parse_device

NOT_INSTALLED = "not installed"
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


def _probe_npu() -> tuple[int, str]:
    """(number of visible NPUs, why 0 when it is 0)."""
    imp = npu.import_torch_npu()
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
    imp = npu.import_torch_npu()
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
    parsed = parse_device(request)
    if parsed is None:
        raise DeviceError(f"DEVICE={request!r} is not valid; use one of: {DEVICE_FORMS}")
    kind, idx = parsed
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
    imp = npu.import_torch_npu()
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


# ---- dtypes: what each backend runs -----------------------------------------------------


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
    return dtype_of(text)




def dtype_of(name: str) -> torch.dtype:
    """"bfloat16" -> torch.bfloat16, for the dtypes of helpers.grammar.DTYPE_BYTES."""
    if name not in DTYPE_BYTES:
        raise DeviceError(f"unknown dtype {name!r}", f"use one of {', '.join(DTYPE_BYTES)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16": the one spelling of a dtype in records and tables."""
    return str(dtype).removeprefix("torch.")
