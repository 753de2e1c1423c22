"""Planted faults: known port bugs put on the target side only, to prove the verdicts.

A report that says PASS is worth something only if it says FAIL for a broken port. Each fault
here mirrors a class of real port bug and is planted on a loaded model with forward hooks (or
an instance attribute), never by editing weights or code, and `Planted.remove()` takes it out
again. The honest differences are what a correct port on another device shows; the verdicts
must let them PASS.

`FAULT=<name>` (a run parameter) plants one on every target side a stage loads; the report's
first page says so. `make fault-matrix` runs them all through stages 4 and 6 and tabulates
which check caught each one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Undo = Callable[[], None]


@dataclass(frozen=True)
class Fault:
    """One planted difference: what real bug it stands for, how large, and whether a correct
    port could show it (honest) or not (fault)."""

    name: str
    honest: bool
    mirrors: str
    magnitude: str
    needs: str  # the component it is planted in: "lm", "speech_tokenizer", "codec", "vocoder"
    plant: Callable[[Any], Undo]

    @property
    def kind(self) -> str:
        return "honest difference" if self.honest else "fault"


@dataclass
class Planted:
    """A fault in place on one loaded model."""

    fault: Fault
    undo: Undo

    def remove(self) -> None:
        self.undo()


def _hooks(handles: list[Any]) -> Undo:
    def undo() -> None:
        for h in handles:
            h.remove()
    return undo


def _decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (Qwen2/Qwen3 and their kin)."""
    layers = getattr(getattr(lm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"{type(lm).__name__} has no model.layers to plant a fault in")
    return layers


def _width(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Sequence length of a decoder module's call: hidden_states [B, S, H] or ids [B, S]."""
    x = kwargs.get("hidden_states", args[0] if args else None)
    if x is None:
        x = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    return int(x.shape[1])


# ---- faults in the language model ----------------------------------------------------------------


def _layer_scale(loaded: Any, scale: float = 1.01) -> Undo:
    """The middle decoder layer's MLP output off by 1 % (a kernel with a systematic error)."""
    layers = _decoder_layers(loaded.lm)
    mlp = layers[len(layers) // 2].mlp
    return _hooks([mlp.register_forward_hook(lambda _m, _a, out: out * scale)])


def _decode_position(loaded: Any) -> Undo:
    """Rotary positions one ahead in decode steps only (a cache-position bug of a decode path)."""
    rotary = getattr(loaded.lm.model, "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(loaded.lm).__name__} has no model.rotary_emb")

    def shift(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args = list(args)
        if len(args) > 1:
            pos = args[1]
        else:
            pos = kwargs["position_ids"]
        if pos.shape[-1] != 1:
            return None  # prefill: untouched
        if len(args) > 1:
            args[1] = pos + 1
        else:
            kwargs = {**kwargs, "position_ids": pos + 1}
        return tuple(args), kwargs

    return _hooks([rotary.register_forward_pre_hook(shift, with_kwargs=True)])


def _norm_low_precision(loaded: Any) -> Undo:
    """RMSNorm's mean square accumulated in the input dtype, not float32 (a fused norm kernel
    without the upcast): no difference at float32, a real one at bfloat16/float16."""
    norms = [m for m in loaded.lm.modules() if type(m).__name__.endswith("RMSNorm")]
    if not norms:
        raise ValueError(f"{type(loaded.lm).__name__} has no RMSNorm module")

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)  # in x's dtype
        return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))

    for m in norms:
        m.forward = forward.__get__(m)

    def undo() -> None:
        for m in norms:
            del m.forward
    return undo


def _nan_step(loaded: Any, step: int = 3) -> Undo:
    """Every logit NaN at the `step`-th decode step of each sequence (an overflow in a kernel
    reached only by decode shapes); step 0 is the prefill's logits."""
    count = {"n": -1}

    def seen(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        count["n"] = 0 if _width(args, kwargs) > 1 else count["n"] + 1  # a prefill restarts

    def hook(_m: nn.Module, _a: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.full_like(out, math.nan) if count["n"] == step else out

    return _hooks([loaded.lm.register_forward_pre_hook(seen, with_kwargs=True),
                   loaded.lm.lm_head.register_forward_hook(hook)])


def _prefill_mask_dropped(loaded: Any) -> Undo:
    """Prefill attends to every position, later ones included (the causal mask dropped where a
    fused attention kernel took no mask); decode steps are unaffected."""
    def unmask(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hs = kwargs.get("hidden_states", args[0] if args else None)
        s = hs.shape[1]
        if s == 1:
            return None
        open_mask = torch.zeros(hs.shape[0], 1, s, s, dtype=hs.dtype, device=hs.device)
        return args, {**kwargs, "attention_mask": open_mask}

    layers = _decoder_layers(loaded.lm)
    return _hooks([layer.self_attn.register_forward_pre_hook(unmask, with_kwargs=True)
                   for layer in layers])


# ---- faults in the audio components ------------------------------------------------------------


def _neighbour_code(loaded: Any, every: int = 4) -> Undo:
    """The speech tokenizer's quantizer takes the second-nearest code on every `every`-th
    frame (a distance kernel whose rounding or reduction order is wrong)."""
    tok = loaded.components["speech_tokenizer"]
    original = tok._quantize

    def quantize(h: torch.Tensor) -> torch.Tensor:
        book = tok.codebook.weight  # [K, D]
        flat = h.reshape(-1, book.shape[1]).float()
        dist = torch.cdist(flat, book.float())  # [B*N, K]
        two = dist.topk(2, dim=1, largest=False).indices  # [B*N, 2]
        ids = two[:, 0].clone()
        ids[::every] = two[::every, 1]
        return ids.view(h.shape[0], h.shape[1])

    tok._quantize = quantize

    def undo() -> None:
        tok._quantize = original
    return undo


def _gain(loaded: Any, gain: float = 1.1) -> Undo:
    """The waveform decoder's output 10 % loud (a scale folded twice, or a norm left out)."""
    parts = loaded.components
    if "codec" in parts:
        codec = parts["codec"]
        original = codec.detokenize
        codec.detokenize = lambda *a, **k: original(*a, **k) * gain

        def undo() -> None:
            del codec.detokenize
        return undo
    if "vocoder" in parts:
        return _hooks([parts["vocoder"].register_forward_hook(lambda _m, _a, out: out * gain)])
    raise ValueError("no codec or vocoder to plant a gain error in")


# ---- honest differences --------------------------------------------------------------------------


def _accumulation_noise(loaded: Any, rel: float = 2.0 ** -23, seed: int = 0) -> Undo:
    """Every Linear output of the LM perturbed by a relative 2^-23 (float32's unit roundoff),
    of random sign: what another accumulation order does to a float32 matmul."""
    gen = torch.Generator().manual_seed(seed)

    def hook(_m: nn.Module, _a: Any, out: torch.Tensor) -> torch.Tensor:
        sign = torch.randint(0, 2, out.shape, generator=gen).to(out.device, out.dtype) * 2 - 1
        return out * (1 + rel * sign)

    return _hooks([m.register_forward_hook(hook) for m in loaded.lm.modules()
                   if isinstance(m, nn.Linear)])


def _one_thread(loaded: Any) -> Undo:
    """The target computes with another thread count (another reduction split over cores):
    one thread, or two where the process computes on one already."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if before > 1 else 2)
    return lambda: torch.set_num_threads(before)


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("layer_mlp_1pct", False, "a kernel with a systematic error in one layer",
          "middle layer's MLP output x 1.01", "lm", _layer_scale),
    Fault("decode_position", False, "a decode-only position / KV-cache bug",
          "rotary position +1 in decode steps", "lm", _decode_position),
    Fault("norm_no_fp32", False, "a norm kernel without float32 accumulation",
          "RMSNorm mean square in the input dtype (none at float32)", "lm", _norm_low_precision),
    Fault("nan_decode_step", False, "an overflow reached by decode shapes only",
          "all logits NaN at decode step 3", "lm", _nan_step),
    Fault("prefill_mask_dropped", False, "the causal mask dropped in prefill",
          "prefill attends to later positions", "lm", _prefill_mask_dropped),
    Fault("tokenizer_neighbour_code", False, "a quantizer distance kernel that rounds wrong",
          "second-nearest code on every 4th frame", "speech_tokenizer", _neighbour_code),
    Fault("codec_gain_10pct", False, "a waveform decoder with a gain error",
          "codec / vocoder output x 1.1", "codec|vocoder", _gain),
    Fault("accumulation_noise", True, "another float32 accumulation order",
          "every LM matmul output x (1 +/- 2^-23)", "lm", _accumulation_noise),
    Fault("one_thread", True, "another thread count",
          "1 thread on the target (2 where it runs on 1)", "lm", _one_thread),
)}


def get(name: str) -> Fault:
    from helpers.errors import ConfigError

    if name not in FAULTS:
        raise ConfigError(f"FAULT={name!r} is not a known fault",
                          f"use one of {', '.join(FAULTS)} (or leave FAULT empty)")
    return FAULTS[name]


def applies(fault: Fault, loaded: Any) -> bool:
    """Whether `loaded` has the component the fault is planted in."""
    return any(part in loaded.components for part in fault.needs.split("|"))


def plant(name: str, loaded: Any) -> Planted | None:
    """Plant FAULT `name` on a loaded target side; None when it has no such component."""
    fault = get(name)
    if not applies(fault, loaded):
        return None
    return Planted(fault, fault.plant(loaded))
