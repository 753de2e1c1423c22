"""The model's own operators: record the aten calls of each component once, replay each
distinct signature on the device and on the CPU.

Recording: every component of the selected recipe runs one forward (its example inputs) under
a TorchDispatchMode that notes, per call, the operator, each tensor argument's dtype, shape and
device, and the non-tensor arguments needed to call it again. Calls with the same signature are
counted once. Integer and boolean tensors (indices, ids, masks) up to MAX_VALUES elements keep
their recorded values, so a replay indexes in range.

Replay: fresh fixed-seed inputs of the recorded signature (floating tensors: normal values,
positive for operators with a restricted domain such as rsqrt or log; integer tensors: the
recorded values; a larger integer tensor is skipped with the reason), run through
torch.ops.<namespace>.<op>.<overload> on the device, on the CPU in the same dtype, and upcast
to float64 on the CPU for the golden; the verdict rules are those of helpers.probes.verdict.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import device
from helpers.device import dtype_name, dtype_of
from helpers.probes import verdict
from helpers.probes.execute import (
    WorkerContext,
    base_name,
    cpu_call,
    device_call,
    generator,
    op_name,
    poisoned,
    upcast,
)

MAX_VALUES = 65_536
# operators whose inputs must be positive for a finite result
POSITIVE = {"aten::rsqrt", "aten::sqrt", "aten::log", "aten::log2", "aten::log10",
            "aten::log1p", "aten::pow", "aten::reciprocal", "aten::div", "aten::lgamma",
            "aten::digamma", "aten::acosh"}
# random or uninitialized results: only that they run is checked
RUN_ONLY = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
            "aten::new_empty_strided", "aten::resize_", "aten::bernoulli", "aten::rand",
            "aten::rand_like", "aten::randn", "aten::randn_like", "aten::randint",
            "aten::randint_like", "aten::randperm", "aten::normal", "aten::uniform",
            "aten::exponential", "aten::multinomial", "aten::native_dropout"}
# data movement and exact transforms: judged bit for bit (msprobe's binary-consistency list,
# helpers.probes.verdict "binary", plus the views and copies that only move data)
BINARY = {"aten::view", "aten::_unsafe_view", "aten::reshape", "aten::t", "aten::transpose",
          "aten::permute", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::slice",
          "aten::select", "aten::alias", "aten::detach", "aten::clone", "aten::lift_fresh",
          "aten::contiguous", "aten::cat", "aten::stack", "aten::split", "aten::chunk",
          "aten::unbind", "aten::index_select", "aten::gather", "aten::embedding",
          "aten::masked_fill", "aten::masked_scatter", "aten::repeat",
          "aten::repeat_interleave", "aten::flip", "aten::roll", "aten::narrow",
          "aten::constant_pad_nd", "aten::reflection_pad1d", "aten::reflection_pad2d",
          "aten::replication_pad1d", "aten::replication_pad2d", "aten::copy", "aten::_to_copy",
          "aten::neg", "aten::abs", "aten::round", "aten::floor", "aten::ceil", "aten::relu",
          "aten::maximum", "aten::minimum", "aten::tril", "aten::triu", "aten::fill"}
WORKAROUNDS = {
    "aten::isin": "(x.unsqueeze(-1) == test.view(1, -1)).any(-1)",
    "aten::abs": "for complex input: (z.real**2 + z.imag**2).sqrt()",
    "aten::_fft_r2c": "torch.stft / rfft in float32 (cast integer audio first)",
    "aten::embedding": "cast ids to int64 (ids.long())",
}
GENERIC = {
    "fallback": "runs, but on the CPU (slow): look for a device-native equivalent or a newer "
                "torch_npu release",
    "unsupported": "replace it with a supported composition, or run this step on the CPU",
    "crashed": "replace it with a supported composition, or run this step on the CPU",
    "timeout": "replace it with a supported composition, or run this step on the CPU",
    "mismatch": "compare in float32, and check the device's reduced-precision switches "
                "(TF32 / HF32)",
}


@dataclass(frozen=True)
class RunDevice:
    """Stands for the model's device in a recorded argument (device=...)."""


@dataclass(frozen=True)
class TensorSpec:
    """A recorded tensor argument: what a fresh input must look like."""

    shape: tuple[int, ...]
    dtype: str
    on_device: bool  # on the model's device (else it stayed on the CPU)
    values: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def is_index(self) -> bool:
        t = getattr(torch, self.dtype)
        return not (t.is_floating_point or t.is_complex or t == torch.bool)

    def label(self) -> str:
        return f"{self.dtype}{list(self.shape)}" + ("" if self.on_device else "@cpu")


@dataclass(frozen=True)
class Opaque:
    """An argument that cannot be rebuilt for a replay (its type name)."""

    type_name: str


_SIMPLE = (type(None), bool, int, float, complex, str, torch.dtype, torch.layout,
           torch.memory_format)


def tree_map(fn: Any, tree: Any) -> Any:
    """fn on every leaf of nested lists, tuples and dicts, the only containers aten arguments
    hold (a plain recursion: torch's pytree costs milliseconds per replayed call)."""
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, x) for x in tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


@dataclass
class OpRecord:
    """One distinct signature: operator, arguments (TensorSpec leaves), calls, components."""

    op: str
    args: Any
    kwargs: Any
    key: str
    calls: int = 1
    components: list[str] = field(default_factory=list)

    def specs(self) -> list[TensorSpec]:
        out: list[TensorSpec] = []
        tree_map(lambda x: out.append(x) if isinstance(x, TensorSpec) else None,
                 (self.args, self.kwargs))
        return out

    def dtype(self) -> str:
        """The main dtype: the first floating input's, else the first tensor's, else dtype=."""
        specs = self.specs()
        floats = [s.dtype for s in specs if not s.is_index and s.dtype != "bool"]
        if floats or specs:
            return (floats or [specs[0].dtype])[0]
        dt = self.kwargs.get("dtype") if isinstance(self.kwargs, dict) else None
        return dtype_name(dt) if isinstance(dt, torch.dtype) else "(none)"

    def shape(self) -> str:
        return ", ".join(s.label() for s in self.specs()) or "-"

    def skip_reason(self, max_numel: int) -> str:
        opaque: list[str] = []
        tree_map(lambda x: opaque.append(x.type_name) if isinstance(x, Opaque) else None,
                 (self.args, self.kwargs))
        if opaque:
            return f"argument of type {opaque[0]} cannot be rebuilt for a replay"
        specs = self.specs()
        for s in specs:
            if s.is_index and s.values is None:
                return (f"integer input {s.label()} has more than {MAX_VALUES} elements; its "
                        "values were not recorded, so a replay could index out of range")
        total = sum(s.numel for s in specs)
        if total > max_numel:
            return f"inputs hold {total:,} elements, over the replay limit of {max_numel:,}"
        return ""


def _label(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype)[6:]}{list(x.shape)}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_label(v) for v in x) + "]"
    if isinstance(x, torch.device):
        return x.type
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def signature(name: str, args: Any, kwargs: dict[str, Any]) -> str:
    """'aten::mm(float32[4, 8], float32[8, 2])': operator, argument dtypes/shapes and values."""
    parts = [_label(a) for a in args] + [f"{k}={_label(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


class Recorder(TorchDispatchMode):
    """Records each distinct aten call signature into `records` (shared across components)."""

    def __init__(self, model_device: torch.device, component: str,
                 records: dict[str, OpRecord]) -> None:
        super().__init__()
        self.model_device = model_device
        self.component = component
        self.records = records
        self.calls = 0
        self.errors: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        self.calls += 1
        try:  # recorded before the call: an in-place op must not change the recorded values
            self._record(func, args, kwargs)
        except Exception as exc:
            self.errors.append(f"{op_name(func)}: {verdict.short_error(exc)}")
        return func(*args, **kwargs)

    def _record(self, func: Any, args: Any, kwargs: dict[str, Any]) -> None:
        name = op_name(func)
        key = signature(name, args, kwargs)
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = OpRecord(name, tree_map(self._spec, args),
                                               tree_map(self._spec, kwargs), key, calls=0)
        rec.calls += 1
        if self.component not in rec.components:
            rec.components.append(self.component)

    def _spec(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            on_dev = x.device.type == self.model_device.type
            keep = not (x.is_floating_point() or x.is_complex()) and x.numel() <= MAX_VALUES
            values = x.detach().to("cpu", copy=True) if keep else None
            return TensorSpec(tuple(x.shape), str(x.dtype)[6:], on_dev, values)
        if isinstance(x, torch.device):
            return RunDevice() if x.type == self.model_device.type else x
        return x if isinstance(x, _SIMPLE) else Opaque(type(x).__name__)


@dataclass
class TraceResult:
    """What one traced forward of every component produced."""

    model: str
    profile: str
    dtype: str
    device: str
    records: list[OpRecord]
    components: list[str]
    calls: dict[str, int]  # aten calls per component
    errors: dict[str, str]  # component -> the exception its forward raised
    load_s: float
    trace_s: float
    recorder_errors: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # reported during the traced forward

    @property
    def operators(self) -> list[str]:
        return sorted({r.op for r in self.records})


def trace_model(ctx: WorkerContext, params: dict[str, Any], dtype_name: str,
                components: list[str] | None = None) -> TraceResult:
    """Load the recipe on the worker's device and record one forward of each component and of
    the end-to-end module (worker task); `components` limits it to those names."""
    from helpers import models
    from helpers.config import RunConfig

    cfg = RunConfig.from_params(**params)
    recipe = models.get(cfg.model)
    with ctx.backend.timer() as t_load:
        loaded = recipe.load(ctx.device, dtype_of(dtype_name), **cfg.recipe_args(),
                             backend=ctx.backend)
    records: dict[str, OpRecord] = {}
    calls, errors, rec_errors = {}, {}, []
    t0 = time.perf_counter()
    # every component, then the end-to-end module when it is more than one of them (its glue,
    # e.g. masked_scatter of audio embeddings into the text embeddings, is only there)
    names = loaded.input_names()
    if components:
        unknown = sorted(set(components) - set(names))
        if unknown:
            raise ValueError(f"{cfg.model} has no component {', '.join(unknown)}; "
                             f"its components: {', '.join(names)}")
        names = [n for n in names if n in components]
    with device.capture_fallbacks() as fb:
        for name in names:
            rec = Recorder(ctx.device, name, records)
            try:
                inputs = loaded.example_inputs(name)
                with torch.no_grad(), rec:
                    loaded.module(name)(**inputs)
                ctx.backend.synchronize()
            except Exception as exc:  # the ops up to the failure are recorded; the failure too
                errors[name] = verdict.short_error(exc)
            calls[name] = rec.calls
            rec_errors += rec.errors
    trace_s = time.perf_counter() - t0
    # torch_npu warns once per operator and process: later replays learn of it from here
    ctx.fell_back.update(base_name(op) for op in fb.operators)
    result = TraceResult(cfg.model, cfg.profile, dtype_name, str(ctx.device), list(records.values()),
                         names, calls, errors, t_load.seconds, trace_s, rec_errors[:20],
                         fb.operators)
    del loaded
    gc.collect()
    ctx.backend.empty_cache()
    return result


# ---- CPU references for device-only kernels ------------------------------------------------
# CUDA's fused attention kernels have no CPU implementation; the CPU reference for them is
# scaled_dot_product_attention on the same inputs (the math path), compared on the first
# output (the attention result). Their schemas: torch's native_functions.yaml.


def _sdpa_reference(q: Any, k: Any, v: Any, bias: Any = None, causal: bool = False,
                    scale: float | None = None) -> Any:
    import torch.nn.functional as F

    if k.shape[1] != q.shape[1]:  # grouped KV heads: expand to the query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, scale=scale)


def _flash_reference(query: Any, key: Any, value: Any, dropout_p: float = 0.0,
                     is_causal: bool = False, return_debug_mask: bool = False,
                     scale: float | None = None) -> Any:
    return _sdpa_reference(query, key, value, None, is_causal, scale)


def _biased_reference(query: Any, key: Any, value: Any, attn_bias: Any = None,
                      compute_log_sumexp: bool = False, dropout_p: float = 0.0,
                      is_causal: bool = False, return_debug_mask: bool = False,
                      scale: float | None = None) -> Any:
    return _sdpa_reference(query, key, value, attn_bias, is_causal, scale)


CPU_SUBSTITUTES = {
    "aten::_scaled_dot_product_flash_attention": _flash_reference,
    "aten::_scaled_dot_product_efficient_attention": _biased_reference,
    "aten::_scaled_dot_product_cudnn_attention": _biased_reference,
}


# ---- replay -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fresh:
    tensor: torch.Tensor
    on_device: bool


def resolve(op: str) -> Any:
    """'aten::isin.Tensor_Tensor' -> torch.ops.aten.isin.Tensor_Tensor."""
    ns, _, rest = op.partition("::")
    name, _, overload = rest.partition(".")
    return getattr(getattr(getattr(torch.ops, ns), name), overload or "default")


def _fresh(spec: TensorSpec, g: torch.Generator, positive: bool) -> torch.Tensor:
    dtype = getattr(torch, spec.dtype)
    if spec.values is not None:
        return spec.values.clone()
    if dtype == torch.bool:
        return torch.rand(spec.shape, generator=g) < 0.5
    if dtype.is_complex:
        return torch.randn(spec.shape, generator=g, dtype=torch.complex64).to(dtype)
    if positive:
        return (0.5 + 1.5 * torch.rand(spec.shape, generator=g)).to(dtype)
    return torch.randn(spec.shape, generator=g).to(dtype)


def materialize(rec: OpRecord, seed: int) -> Any:
    """The recorded (args, kwargs) with fresh CPU tensors in place of the specs."""
    g = generator(rec.key, seed)
    positive = base_name(rec.op) in POSITIVE
    return tree_map(lambda x: _Fresh(_fresh(x, g, positive), x.on_device)
                    if isinstance(x, TensorSpec) else x, (rec.args, rec.kwargs))


def placed(tree: Any, dev: torch.device, golden: bool = False) -> tuple[Any, dict[str, Any]]:
    """(args, kwargs) for one run: model-device tensors on `dev`, the rest on the CPU; the
    golden run is all CPU with floating tensors upcast to float64."""
    cpu = torch.device("cpu")

    def leaf(x: Any) -> Any:
        if isinstance(x, _Fresh):
            if golden:
                return upcast(x.tensor)
            return x.tensor.to(dev) if x.on_device and dev.type != "cpu" else x.tensor.clone()
        if isinstance(x, RunDevice):
            return cpu if golden else dev
        return x

    args, kwargs = tree_map(leaf, tree)
    return list(args), dict(kwargs)


def replay(ctx: WorkerContext, rec: OpRecord, seed: int = 0,
           max_numel: int = 2**27) -> dict[str, Any]:
    """One recorded signature on the device, the CPU and the float64 golden (worker task)."""
    t0 = time.perf_counter()
    reason = rec.skip_reason(max_numel)
    try:
        fn = resolve(rec.op)
    except (AttributeError, RuntimeError) as exc:
        fn, reason = None, reason or f"operator not found here: {verdict.short_error(exc)}"
    if reason:
        return model_row(rec, verdict.Verdict("skipped", "run", message=reason), t0)
    tree = materialize(rec, seed)
    dev = device_call(ctx, fn, *placed(tree, ctx.device))
    cpu_out, cpu_err = cpu_call(fn, *placed(tree, torch.device("cpu")))
    golden_fn, note = fn, ""
    substitute = CPU_SUBSTITUTES.get(base_name(rec.op))
    if cpu_err is not None and substitute is not None and dev.error is None:
        golden_fn = substitute
        cpu_out, cpu_err = cpu_call(substitute, *placed(tree, torch.device("cpu")))
        dev.out = verdict.flatten(dev.out)[:1]  # the attention output; the rest is kernel state
        note = "CPU reference: scaled_dot_product_attention (no CPU kernel for this one)"
    golden_out = None
    if _judged_by_golden(rec.op):
        golden_out, _ = cpu_call(golden_fn, *placed(tree, torch.device("cpu"), golden=True))
    v = _replay_verdict(rec, dev, cpu_out, cpu_err, golden_out)
    if note:
        v.message = f"{note}; {v.message}" if v.message else note
    if dev.fallbacks:
        note = "fell back to the CPU: " + ", ".join(dev.fallbacks)
        v.status = "fallback" if v.status == "ok" else v.status
        v.message = f"{note}; {v.message}" if v.message else note
    row = model_row(rec, v, t0)
    row["_restart"] = poisoned(dev.error)
    return row


def _replay_verdict(rec: OpRecord, dev: Any, cpu_out: Any, cpu_err: BaseException | None,
                    golden_out: Any) -> verdict.Verdict:
    if dev.error is not None:
        msg = "raises on the device: " + verdict.short_error(dev.error)
        if cpu_err is not None:
            return verdict.Verdict("skipped", "run", message=(
                msg + "; the CPU raises too, so the recorded call cannot be rebuilt outside "
                "the model"))
        return verdict.Verdict("unsupported", "run", message=msg)
    if cpu_err is not None:
        return verdict.Verdict("skipped", "run", message=(
            "ran on the device; no CPU kernel to compare with: " + verdict.short_error(cpu_err)))
    if base_name(rec.op) in RUN_ONLY:
        return verdict.Verdict("ok", "run")
    if base_name(rec.op).rstrip("_") in BINARY:
        return verdict.judge_binary(dev.out, cpu_out)
    return verdict.judge(dev.out, cpu_out, golden_out)


def _judged_by_golden(op: str) -> bool:
    """Whether the verdict reads the float64 golden: not for a run-only or a bit-exact operator."""
    return base_name(op) not in RUN_ONLY and base_name(op).rstrip("_") not in BINARY


def model_row(rec: OpRecord, v: verdict.Verdict, t0: float) -> dict[str, Any]:
    """The table row of a traced signature (also used for crashed / timeout rows)."""
    fix = ""
    if v.status not in ("ok", "skipped"):
        fix = WORKAROUNDS.get(base_name(rec.op), GENERIC.get(v.status, ""))
    return {
        "source": "model", "probe": rec.key, "group": ", ".join(rec.components), "op": rec.op,
        "dtype": rec.dtype(), "shape": rec.shape(), **v.to_dict(), "workaround": fix,
        "known": "", "calls": rec.calls, "aten_ops": rec.op,
        "seconds": round(time.perf_counter() - t0, 4),
    }
