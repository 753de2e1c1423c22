"""What runs inside a probe worker: the device context, one catalog probe, and the device call
that detects fallbacks to the CPU.

Fallback detection: torch_npu prints its "will fall back to run on the CPU" warning once per
operator per process, so a later probe using the same operator would go unnoticed. Each device
call therefore also records the aten operators it dispatches (a TorchDispatchMode); an operator
that fell back earlier in this worker counts as a fallback for every later call that uses it.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import device
from helpers.device import dtype_of
from helpers.probes import verdict
from helpers.probes.catalog import Probe

# device errors after which the process's device context cannot be trusted (the worker restarts)
POISON = ("CUDA error", "device-side assert", "illegal memory access", "EZ9999",
          "ACL stream synchronize failed", "NPU function error")


@dataclass
class WorkerContext:
    """The device a worker runs on, and the operators that fell back in this process."""

    sel: device.Selection
    backend: device.Backend
    fell_back: set[str] = field(default_factory=set)

    @property
    def device(self) -> torch.device:
        return self.sel.device

    @classmethod
    def create(cls, request: str, threads: int = 0) -> WorkerContext:
        """Select the device and touch it once; threads > 0 sets torch's CPU thread count."""
        if threads > 0:
            torch.set_num_threads(threads)
        sel = device.select(request)
        be = device.backend(sel)
        ctx = cls(sel, be)
        # first touch initializes the device context; the first dispatch mode imports
        # torch._dynamo (seconds): both belong to the start, not to the first probe's timeout
        device_call(ctx, torch.mul, [torch.ones(4, device=sel.device), 2])
        return ctx

    def info(self) -> dict[str, Any]:
        return {"device": str(self.sel.device), "backend": self.sel.backend, "pid": os.getpid(),
                "torch": torch.__version__, "threads": torch.get_num_threads()}


def op_name(func: Any) -> str:
    """'aten::mm', 'aten::isin.Tensor_Tensor': the schema name and overload, as torch_npu's
    fallback warning writes it."""
    schema = func._schema
    return f"{schema.name}.{schema.overload_name}" if schema.overload_name else schema.name


def base_name(op: str) -> str:
    """'aten::isin.Tensor_Tensor_out' -> 'aten::isin'."""
    return op.split(".", 1)[0]


class OpNames(TorchDispatchMode):
    """Counts the aten operators dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = op_name(func)
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@dataclass
class DeviceRun:
    out: Any = None
    error: BaseException | None = None
    fallbacks: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    seconds: float = 0.0


def place(x: Any, dev: torch.device) -> Any:
    """Tensors (also inside lists/tuples) moved to `dev`; on the CPU a fresh copy."""
    if isinstance(x, torch.Tensor):
        return x.clone() if dev.type == "cpu" and x.device.type == "cpu" else x.to(dev)
    if isinstance(x, (list, tuple)):
        return type(x)(place(v, dev) for v in x)
    return x


def upcast(x: Any) -> Any:
    """Floating tensors as float64 and complex as complex128 (CPU copies), others unchanged."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_complex:
            return x.to("cpu", torch.complex128)
        if x.dtype.is_floating_point:
            return x.to("cpu", torch.float64)
        return x.cpu().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(upcast(v) for v in x)
    return x


def to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (list, tuple)):
        return type(x)(to_cpu(v) for v in x)
    return x


def device_call(ctx: WorkerContext, fn: Any, args: list[Any],
                kwargs: dict[str, Any] | None = None) -> DeviceRun:
    """fn(*args, **kwargs) with args already placed; synchronized, outputs copied to the CPU."""
    run = DeviceRun()
    t0 = time.perf_counter()
    names = OpNames()
    with torch.no_grad(), device.capture_fallbacks() as fb:
        try:
            with names:
                out = fn(*args, **(kwargs or {}))
            ctx.backend.synchronize()
            run.out = to_cpu(out)
        except Exception as exc:  # an operator the device rejects is a result, not a bug
            run.error = exc
    run.seconds = time.perf_counter() - t0
    run.ops = sorted(names.ops)
    run.fallbacks = _attribute(ctx, fb.operators, run.ops)
    return run


def _attribute(ctx: WorkerContext, reported: list[str], used: list[str]) -> list[str]:
    ctx.fell_back.update(base_name(op) for op in reported)
    earlier = [op for op in used if base_name(op) in ctx.fell_back]
    return sorted(set(reported) | set(earlier))


def cpu_call(fn: Any, args: list[Any],
             kwargs: dict[str, Any] | None = None) -> tuple[Any, BaseException | None]:
    """fn on CPU tensors: (outputs, None), or (None, the exception)."""
    try:
        with torch.no_grad():
            return to_cpu(fn(*args, **(kwargs or {}))), None
    except Exception as exc:
        return None, exc


def generator(key: str, seed: int) -> torch.Generator:
    """A CPU generator fixed by the probe's name and the run seed (order-independent)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)


def poisoned(exc: BaseException | None) -> bool:
    return exc is not None and any(p in str(exc) for p in POISON)


def run_probe(ctx: WorkerContext, probe: Probe, dtype_name: str, seed: int = 0) -> dict[str, Any]:
    """One catalog probe in one dtype: device, CPU same dtype, float64 golden, verdict."""
    t0 = time.perf_counter()
    inputs = probe.build(dtype_of(dtype_name), generator(probe.name, seed))
    dev = device_call(ctx, probe.run, place(inputs, ctx.device))
    repeat = None
    if probe.kind == "distribution" and dev.error is None:  # the same seed must draw the same
        again = device_call(ctx, probe.run, place(inputs, ctx.device))
        dev.error, repeat = again.error, again.out
        dev.fallbacks = sorted(set(dev.fallbacks) | set(again.fallbacks))
    reference = probe.reference or probe.run
    cpu_out, cpu_err = cpu_call(reference, place(inputs, torch.device("cpu")))
    golden_out, _ = cpu_call(probe.golden or reference, upcast(inputs))
    if dev.error is not None:
        v = verdict.Verdict("unsupported", "run", message=_raised(dev.error, cpu_err))
    elif probe.kind == "distribution":
        v = verdict.judge_distribution(dev.out, repeat, golden_out)
    elif probe.kind == "run":
        v = verdict.Verdict("ok", "run")
    elif cpu_err is not None:
        v = verdict.Verdict("skipped", "run", message=(
            "ran on the device but not compared: the CPU reference raises "
            + verdict.short_error(cpu_err)))
    else:
        v = verdict.judge(dev.out, cpu_out, golden_out)
    _mark_fallback(v, dev.fallbacks)
    row = probe_row(probe, dtype_name, v)
    row.update(aten_ops=", ".join(dev.ops), seconds=round(time.perf_counter() - t0, 4),
               _restart=poisoned(dev.error))
    return row


def _raised(dev_err: BaseException, cpu_err: BaseException | None) -> str:
    msg = "raises on the device: " + verdict.short_error(dev_err)
    if cpu_err is not None:
        msg += " (the CPU raises too: not a device gap)"
    return msg


def _mark_fallback(v: verdict.Verdict, fallbacks: list[str]) -> None:
    if not fallbacks:
        return
    note = "fell back to the CPU: " + ", ".join(fallbacks)
    if v.status == "ok":
        v.status = "fallback"
    v.message = f"{note}; {v.message}" if v.message else note


def probe_row(probe: Probe, dtype_name: str, v: verdict.Verdict) -> dict[str, Any]:
    """The table row of a catalog probe (also used for crashed / timeout rows)."""
    needs_fix = v.status not in ("ok", "skipped")
    return {
        "source": "catalog", "probe": probe.name, "group": probe.group, "op": probe.op,
        "dtype": dtype_name, "shape": probe.shape, **v.to_dict(),
        "workaround": probe.workaround if needs_fix else "", "known": probe.known,
    }
