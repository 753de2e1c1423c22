"""The operator catalog: small probes with fixed-seed inputs for what audio models need and
what is known to break on accelerators.

A probe is data plus module-level functions (so it pickles by reference into a worker process):
`inputs` describes how to build fixed-seed CPU tensors for a dtype, `run(*inputs)` computes on
whatever device the inputs live on. The runner (helpers.probes.execute) feeds the same inputs
to the device, to the CPU in the same dtype, and upcast to float64 on the CPU for the golden.

Known failures carry their workaround and the source that reported them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from helpers import resample
from helpers.device import dtype_of
from helpers.grammar import RUN_DTYPES

FLOATS = RUN_DTYPES
FP32 = ("float32",)
COVO = "Covo-Audio-Chat on Ascend 910 adaptation report"
HF32 = ("float32 parity: turn the reduced-precision conv path off, "
        "torch.backends.cudnn.allow_tf32 = False (CUDA, default on) or "
        "torch.npu.conv.allow_hf32 = False (Ascend, default on)")


# ---- input specifications (frozen, picklable; built on the CPU from a seeded generator) ---


@dataclass(frozen=True)
class Randn:
    """Normal(0, scale) values in the probe dtype (or in `dtype` when given)."""

    shape: tuple[int, ...]
    scale: float = 1.0
    dtype: str = ""

    def make(self, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        x = torch.randn(self.shape, generator=g) * self.scale
        return _cast(x, dtype_of(self.dtype) if self.dtype else dtype)


@dataclass(frozen=True)
class ProbeDtype:
    """The probe's dtype itself, as an argument (autocast's target dtype)."""

    def make(self, g: torch.Generator, dtype: torch.dtype) -> torch.dtype:
        return dtype


@dataclass(frozen=True)
class Uniform:
    """Uniform(lo, hi) values in the probe dtype."""

    shape: tuple[int, ...]
    lo: float
    hi: float

    def make(self, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        return _cast(self.lo + (self.hi - self.lo) * torch.rand(self.shape, generator=g), dtype)


@dataclass(frozen=True)
class LogUniform:
    """Positive values spread evenly in log10 between 10**lo and 10**hi (power spectra)."""

    shape: tuple[int, ...]
    lo: float
    hi: float

    def make(self, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        e = self.lo + (self.hi - self.lo) * torch.rand(self.shape, generator=g)
        return _cast(torch.pow(10.0, e), dtype)


@dataclass(frozen=True)
class Signal:
    """Audio-like signal [B, T]: three sines plus noise in [-1, 1]; integer dtypes get 16-bit
    PCM values (as a wav reader returns them)."""

    shape: tuple[int, int]
    rate: int = 16000

    def make(self, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        t = torch.arange(self.shape[1], dtype=torch.float64) / self.rate  # [T]
        x = sum(a * torch.sin(2 * math.pi * f * t) for a, f in ((0.4, 220.0), (0.2, 1250.0),
                                                               (0.1, 3400.0)))
        x = x + 0.05 * torch.randn(self.shape, generator=g, dtype=torch.float64)  # [B, T]
        if not dtype.is_floating_point:
            return torch.round(x * 32767).to(dtype)
        return x.to(dtype)


@dataclass(frozen=True)
class Ints:
    """Integers in [lo, hi) with their own dtype (ids, indices, repeats)."""

    shape: tuple[int, ...]
    lo: int
    hi: int
    dtype: str = "int64"

    def make(self, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        return torch.randint(self.lo, self.hi, self.shape, generator=g, dtype=dtype_of(self.dtype))


@dataclass(frozen=True)
class Distinct:
    """Rows of a random permutation of 0..n-1 in the probe dtype: no ties, exact in every
    float dtype for n <= 256, so argmin/argmax have one right answer."""

    rows: int
    n: int

    def make(self, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        out = torch.stack([torch.randperm(self.n, generator=g) for _ in range(self.rows)])
        return out.to(dtype)


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point or dtype.is_complex:
        return x.to(dtype)
    return torch.round(x).to(dtype)




@dataclass(frozen=True)
class Probe:
    """One catalog entry.

    op: what the table shows; shape: input sizes and settings in words;
    inputs: specs (built per dtype) and plain values (passed as they are);
    run(*inputs): the operation, on the inputs' device;
    reference: what the CPU computes instead of `run` (default: run);
    golden: what the float64 CPU golden computes (default: reference on upcast inputs);
    kind: "auto" (float outputs -> error ratios, integer/bool -> exact),
          "distribution" (random draws: reproducible with the fixed generator, and a
          chi-square test against the expected counts), "run" (only that it runs);
    workaround / known: what to do when it fails, and who reported the failure.
    """

    name: str
    op: str
    shape: str
    inputs: tuple[Any, ...]
    run: Callable[..., Any]
    dtypes: tuple[str, ...] = FLOATS
    reference: Callable[..., Any] | None = None
    golden: Callable[..., Any] | None = None
    kind: str = "auto"
    workaround: str = ""
    known: str = ""
    group: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def build(self, dtype: torch.dtype, g: torch.Generator) -> list[Any]:
        """The probe's inputs on the CPU for that dtype (same generator state -> same values)."""
        return [s.make(g, dtype) if hasattr(s, "make") else s for s in self.inputs]


# ---- spectral ---------------------------------------------------------------------------

N_FFT, HOP = 400, 160  # Whisper's log-mel framing at 16 kHz


def _window(x: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    return torch.hann_window(N_FFT, dtype=dtype, device=x.device)


def stft(x: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, N_FFT, HOP, window=_window(x), return_complex=True)  # [B, F, frames]


def stft_golden(x: torch.Tensor) -> torch.Tensor:
    return stft(x.to(torch.float64))


def istft(x: torch.Tensor) -> torch.Tensor:
    spec = stft(x)
    return torch.istft(spec, N_FFT, HOP, window=_window(x), length=x.shape[-1])  # [B, T]


def hann_window(like: torch.Tensor) -> torch.Tensor:
    return torch.hann_window(N_FFT, dtype=like.dtype, device=like.device)


def complex_abs(x: torch.Tensor) -> torch.Tensor:
    return stft(x).abs()


def power_real_imag(x: torch.Tensor) -> torch.Tensor:
    spec = stft(x)
    return spec.real**2 + spec.imag**2


def sinc_resample(x: torch.Tensor) -> torch.Tensor:
    """Band-limited resampling 24 kHz -> 16 kHz as torchaudio computes it on the device
    (helpers.resample: a hann-windowed sinc kernel per output phase, one strided conv1d).
    [B, T] -> [B, ceil(2 T / 3)]. The Covo-Audio-Chat release resamples this way on the NPU
    (torchaudio.transforms.Resample(24000, 16000).to(device), modeling_covo_audio.py)."""
    return resample.resample(x if x.is_floating_point() else x.float(), 24_000, 16_000)


def rfft(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft(x, dim=-1)


def irfft(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.irfft(torch.fft.rfft(x, dim=-1), n=x.shape[-1], dim=-1)


def mel_filters(n_mels: int, n_fft: int, rate: int, dtype: torch.dtype) -> torch.Tensor:
    """Triangular HTK mel filterbank [n_mels, n_fft // 2 + 1]."""
    hz = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = 2595.0 * math.log10(1.0 + rate / 2 / 700.0)  # Nyquist in mel
    edges = torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (torch.pow(10.0, edges / 2595.0) - 1.0)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up, down = (hz - lo) / (mid - lo), (hi - hz) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(dtype)


def mel_matmul(power: torch.Tensor) -> torch.Tensor:
    fb = mel_filters(128, N_FFT, 16000, power.dtype).to(power.device)  # [128, 201]
    return fb @ power  # [128, 201] @ [B, 201, frames] -> [B, 128, frames]


def log10_clamp(x: torch.Tensor) -> torch.Tensor:
    return torch.log10(torch.clamp(x, min=1e-10))


# ---- convolution ------------------------------------------------------------------------


def conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dilation: int = 1,
           groups: int = 1) -> torch.Tensor:
    pad = dilation * (w.shape[-1] - 1) // 2
    return F.conv1d(x, w, b, padding=pad, dilation=dilation, groups=groups)


def conv_transpose1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                     stride: int) -> torch.Tensor:
    pad = (w.shape[-1] - stride + 1) // 2  # BiCodec-style upsampler padding
    return F.conv_transpose1d(x, w, b, stride=stride, padding=pad)


def _weight_normed_conv(v: torch.Tensor, g: torch.Tensor) -> torch.nn.Conv1d:
    out_ch, in_ch, k = v.shape
    conv = torch.nn.Conv1d(in_ch, out_ch, k, padding=k // 2, bias=False,
                           device=v.device, dtype=v.dtype)
    conv = torch.nn.utils.parametrizations.weight_norm(conv)
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(g)  # magnitude [out, 1, 1]
        conv.parametrizations.weight.original1.copy_(v)  # direction [out, in, k]
    return conv


def weight_norm(x: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _weight_normed_conv(v, g)(x)


def weight_norm_removed(x: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    from torch.nn.utils import parametrize

    conv = _weight_normed_conv(v, g)
    parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    if parametrize.is_parametrized(conv):
        raise RuntimeError("remove_parametrizations left the weight parametrized")
    return conv(x)


# ---- activations and norms --------------------------------------------------------------


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return x + torch.sin(alpha * x) ** 2 / (alpha + 1e-9)  # BigVGAN / BiCodec snake


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w, b, eps=1e-5)


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if hasattr(F, "rms_norm"):  # torch >= 2.4
        return F.rms_norm(x, x.shape[-1:], w, eps=1e-6)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # Qwen-style


def batch_norm_eval(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, w: torch.Tensor,
                    b: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, mean, var, w, b, training=False, eps=1e-5)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


# ---- attention --------------------------------------------------------------------------


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              bias: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.repeat_interleave(heads // t.shape[1], dim=1)  # [B, Hkv, S, D] -> [B, H, S, D]


def sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Grouped KV heads through enable_gqa (torch >= 2.5); older torch: expanded heads."""
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    except TypeError:
        heads = q.shape[1]
        return F.scaled_dot_product_attention(q, _expand_kv(k, heads), _expand_kv(v, heads),
                                              is_causal=True)


def sdpa_expanded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    heads = q.shape[1]
    return F.scaled_dot_product_attention(q, _expand_kv(k, heads), _expand_kv(v, heads),
                                          is_causal=True)


# ---- indexing and quantization ----------------------------------------------------------

AUDIO_TOKEN = 3  # the placeholder id masked_scatter fills (ids are drawn from 0..3)


def masked_scatter(embeds: torch.Tensor, ids: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    mask = (ids == AUDIO_TOKEN).unsqueeze(-1).expand_as(embeds)  # [B, S, H]
    return embeds.masked_scatter(mask, source)


def index_select(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.index_select(x, 0, idx)


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, idx)


def embedding(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, weight)


def isin(ids: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    return torch.isin(ids, special)


def cdist(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, codebook)


def argmin(x: torch.Tensor) -> torch.Tensor:
    return torch.argmin(x, dim=-1)


def addmm_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared distances ||x||^2 - 2 x.c + ||c||^2 as vector quantizers compute them."""
    norms = x.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)  # [N, 1] + [K] -> [N, K]
    return torch.addmm(norms, x, codebook.t(), beta=1.0, alpha=-2.0)


def round_(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)


def atanh(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh(x)


def cumprod(x: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(x, dim=-1)


def topk(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, idx = torch.topk(x, 8, dim=-1)
    return values, torch.gather(x, -1, idx)  # indices judged by the values they point at


def sort(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, idx = torch.sort(x, dim=-1)
    return values, torch.gather(x, -1, idx)


SAMPLES = 8192


def multinomial(weights: torch.Tensor, seed: int) -> torch.Tensor:
    """Counts per category of SAMPLES draws with a generator seeded on the tensor's device."""
    g = torch.Generator(device=weights.device).manual_seed(seed)
    draws = torch.multinomial(weights, SAMPLES, replacement=True, generator=g)
    return torch.bincount(draws, minlength=weights.shape[-1])


def multinomial_expected(weights: torch.Tensor, seed: int) -> torch.Tensor:
    w = weights.to(torch.float64)
    return w / w.sum() * SAMPLES


def repeat_interleave(x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(x, repeats, dim=0)


def avg_pool1d(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool1d(x, kernel_size=4, stride=4)  # the speech tokenizer's 4x pooling


def pad(x: torch.Tensor, widths: tuple[int, ...], mode: str) -> torch.Tensor:
    return F.pad(x, widths, mode=mode)


# ---- mixed precision --------------------------------------------------------------------


def _autocast_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype,
                     device_type: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available, disabling autocast"
        with torch.autocast(device_type=device_type, dtype=dtype):
            out = a @ b
    if out.dtype != dtype:
        raise RuntimeError(
            f"torch.autocast(device_type={device_type!r}) had no effect on {a.device.type} "
            f"tensors: the matmul stayed {out.dtype} instead of {dtype}"
        )
    return out


def autocast_device(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _autocast_matmul(a, b, dtype, a.device.type)


def autocast_cuda(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _autocast_matmul(a, b, dtype, "cuda")


def cast_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What autocast computes: both operands cast to the autocast dtype."""
    return a.to(dtype) @ b.to(dtype)


def plain_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return a @ b


# ---- dtype moves ------------------------------------------------------------------------


def to_int(x: torch.Tensor) -> torch.Tensor:
    return x.to(int)  # Python int -> torch.int64, truncation toward zero


def int64_arith(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # values beyond 2**31 catch a silent int32 path
    return (a * b + a) // b % (2**35 + 7) - (a >> 3)


def float64_ops(x: torch.Tensor) -> torch.Tensor:
    return (x @ x.t()).sum(-1) + torch.exp(x).mean(-1)


# ---- the catalog ------------------------------------------------------------------------


def _p(name: str, op: str, shape: str, inputs: tuple[Any, ...], run: Callable[..., Any],
       **kw: Any) -> Probe:
    return Probe(name=name, op=op, shape=shape, inputs=inputs, run=run, **kw)


def _conv(c_in: int, c_out: int, k: int, groups: int = 1, t: int = 256) -> tuple[Any, ...]:
    scale = 1.0 / math.sqrt(c_in // groups * k)
    return (Randn((2, c_in, t)), Randn((c_out, c_in // groups, k), scale), Randn((c_out,), 0.1))


def _convt(c_in: int, c_out: int, k: int) -> tuple[Any, ...]:
    return (Randn((1, c_in, 32)), Randn((c_in, c_out, k), 1.0 / math.sqrt(c_in * k)),
            Randn((c_out,), 0.1))


def _qkv(heads: int, kv_heads: int, seq: int = 64, dim: int = 32) -> tuple[Any, ...]:
    return (Randn((1, heads, seq, dim)), Randn((1, kv_heads, seq, dim)),
            Randn((1, kv_heads, seq, dim)))


def _spectral() -> list[Probe]:
    sig = (Signal((2, 4000)),)
    g = "spectral"
    return [
        _p("stft", "torch.stft", "[2, 4000] n_fft 400 hop 160 hann", sig, stft,
           dtypes=("float32", "float64", "int64"), golden=stft_golden, group=g,
           workaround="cast the signal to float32 before torch.stft",
           known=f"int64 input fails in aclnnInplaceCos on Ascend ({COVO})"),
        _p("istft", "torch.istft (round trip)", "[2, 4000] n_fft 400 hop 160", sig, istft,
           dtypes=FP32, group=g),
        _p("hann_window", "torch.hann_window", "400", (Randn((0,)),), hann_window,
           dtypes=FP32, group=g),
        _p("complex_abs", "complex64 abs (|stft|)", "[2, 201, 26] complex64", sig, complex_abs,
           dtypes=FP32, group=g,
           workaround="magnitude as (z.real**2 + z.imag**2).sqrt(), or the power spectrum "
                      "z.real**2 + z.imag**2 directly",
           known=f"complex64 abs() is unsupported on Ascend ({COVO})"),
        _p("power_real_imag", "real^2 + imag^2 (power spectrum)", "[2, 201, 26]", sig,
           power_real_imag, dtypes=FP32, group=g),
        _p("sinc_resample", "windowed-sinc resample 24 -> 16 kHz (conv1d)", "[2, 4000]", sig,
           sinc_resample, dtypes=FP32, group=g,
           workaround="resample on the host (helpers.resample, as Covo's front end does) before "
                      "moving the audio to the device",
           known=f"torchaudio resampling on the device was patched for the NPU ({COVO})"),
        _p("rfft", "torch.fft.rfft", "[4, 512]", (Randn((4, 512)),), rfft, dtypes=FP32, group=g),
        _p("irfft", "torch.fft.irfft (round trip)", "[4, 512]", (Randn((4, 512)),), irfft,
           dtypes=FP32, group=g),
        _p("mel_matmul", "mel filterbank matmul", "[128, 201] @ [2, 201, 100]",
           (LogUniform((2, 201, 100), -6, 2),), mel_matmul, group=g),
        _p("log10_clamp", "log10(clamp(x, 1e-10))", "[2, 128, 100]",
           (LogUniform((2, 128, 100), -6, 2),), log10_clamp, group=g),
    ]


def _convolution() -> list[Probe]:
    g = "convolution"
    out = [
        _p(f"conv1d_d{d}", f"F.conv1d dilation {d}", f"[2, 16, 256] k3 d{d}", _conv(16, 16, 3),
           partial(conv1d, dilation=d), group=g, workaround=HF32,
           known="float32 convolutions run in TF32 (CUDA cuDNN) / HF32 (Ascend) by default")
        for d in (1, 3, 9)
    ]
    out += [
        _p("conv1d_depthwise", "F.conv1d depthwise", "[2, 32, 256] k7 groups 32",
           _conv(32, 32, 7, groups=32), partial(conv1d, groups=32), group=g, workaround=HF32),
        _p("conv1d_grouped", "F.conv1d grouped", "[2, 32, 256] k5 groups 4",
           _conv(32, 32, 5, groups=4), partial(conv1d, groups=4), group=g, workaround=HF32),
    ]
    out += [
        _p(f"conv_transpose1d_s{s}", f"F.conv_transpose1d stride {s}",
           f"[1, 16, 32] k{k} s{s}", _convt(16, 8, k), partial(conv_transpose1d, stride=s),
           group=g, workaround=HF32)
        for s, k in ((8, 16), (5, 11), (4, 8), (2, 4))
    ]
    wn = (Randn((2, 16, 128)), Randn((16, 16, 7), 0.1), Uniform((16, 1, 1), 0.5, 1.5))
    out += [
        _p("weight_norm", "weight_norm parametrization", "Conv1d 16->16 k7", wn, weight_norm,
           group=g, workaround="torch.nn.utils.parametrizations.weight_norm (the old "
                               "torch.nn.utils.weight_norm is deprecated)"),
        _p("weight_norm_removed", "weight_norm removed (remove_parametrizations)",
           "Conv1d 16->16 k7", wn, weight_norm_removed, group=g,
           workaround="fold the weight once for inference: "
                      "parametrize.remove_parametrizations(m, 'weight')"),
    ]
    return out


def _activations() -> list[Probe]:
    g = "activations and norms"
    x = (Randn((2, 64, 256)),)
    return [
        _p("snake", "snake x + sin^2(a x)/a", "[2, 64, 256]",
           (Randn((2, 64, 256)), Uniform((1, 64, 1), 0.5, 2.0)), snake, group=g),
        _p("gelu_tanh", "F.gelu tanh", "[2, 64, 256]", x, gelu_tanh, group=g),
        _p("silu", "F.silu", "[2, 64, 256]", x, silu, group=g),
        _p("layer_norm", "F.layer_norm", "[2, 64, 512]",
           (Randn((2, 64, 512)), Uniform((512,), 0.5, 1.5), Randn((512,), 0.1)), layer_norm,
           group=g),
        _p("rms_norm", "RMSNorm", "[2, 64, 512]",
           (Randn((2, 64, 512)), Uniform((512,), 0.5, 1.5)), rms_norm, group=g),
        _p("batch_norm1d", "F.batch_norm (eval)", "[2, 64, 256]",
           (Randn((2, 64, 256)), Randn((64,), 0.1), Uniform((64,), 0.5, 2.0),
            Uniform((64,), 0.5, 1.5), Randn((64,), 0.1)), batch_norm_eval, group=g),
        _p("softmax", "torch.softmax", "[4, 16, 1024]", (Randn((4, 16, 1024), 4.0),), softmax,
           group=g, workaround="compute softmax in float32 and cast back "
                               "(torch.softmax(x, -1, dtype=torch.float32).to(x.dtype))"),
    ]


def _attention() -> list[Probe]:
    g = "attention"
    gqa = "expand KV heads with repeat_interleave(H // Hkv, dim=1) where enable_gqa is missing"
    return [
        _p("sdpa_causal", "SDPA causal", "q/k/v [1, 8, 64, 32]", _qkv(8, 8), sdpa_causal,
           group=g),
        _p("sdpa_mask", "SDPA float mask", "q/k/v [1, 8, 64, 32] mask [1, 1, 64, 64]",
           (*_qkv(8, 8), Randn((1, 1, 64, 64))), sdpa_mask, group=g),
        _p("sdpa_gqa", "SDPA grouped KV (enable_gqa)", "q [1, 8, 64, 32] kv [1, 2, 64, 32]",
           _qkv(8, 2), sdpa_gqa, group=g, workaround=gqa,
           known="enable_gqa exists from torch 2.5; kernels without it reject Hq != Hkv"),
        _p("sdpa_gqa_expanded", "SDPA grouped KV (expanded heads)",
           "q [1, 8, 64, 32] kv [1, 2, 64, 32]", _qkv(8, 2), sdpa_expanded, group=g),
    ]


def _indexing() -> list[Probe]:
    g = "indexing and quantization"
    codebook = (Randn((32, 16)), Randn((64, 16)))
    isin_fix = "(x.unsqueeze(-1) == test.view(1, -1)).any(-1)"
    out = [
        _p("masked_scatter", "Tensor.masked_scatter", "embeds [1, 64, 64] mask from ids",
           (Randn((1, 64, 64)), Ints((1, 64), 0, 4), Randn((64, 64))), masked_scatter, group=g),
        _p("index_select", "torch.index_select", "[128, 32] idx [40]",
           (Randn((128, 32)), Ints((40,), 0, 128)), index_select, group=g),
        _p("gather", "torch.gather", "[4, 128] idx [4, 32]",
           (Randn((4, 128)), Ints((4, 32), 0, 128)), gather, group=g),
        _p("embedding_int64", "F.embedding int64 ids", "weight [1000, 64] ids [2, 32]",
           (Randn((1000, 64)), Ints((2, 32), 0, 1000, "int64")), embedding, group=g),
        _p("embedding_int32", "F.embedding int32 ids", "weight [1000, 64] ids [2, 32]",
           (Randn((1000, 64)), Ints((2, 32), 0, 1000, "int32")), embedding, group=g,
           workaround="cast ids to int64 (ids.long()) before the lookup"),
        _p("isin", "torch.isin", "ids [256] in [8] (int64)",
           (Ints((256,), 0, 64), Ints((8,), 0, 64)), isin, dtypes=("int64",), group=g,
           workaround=isin_fix,
           known="aten::isin falls back to the CPU on some torch_npu releases"),
        _p("cdist", "torch.cdist", "[32, 16] vs codebook [64, 16]", codebook, cdist,
           dtypes=FP32, group=g, workaround="squared distances through addmm (see the "
                                             "addmm distances probe), then sqrt"),
        _p("argmin", "torch.argmin", "[8, 64] distinct values", (Distinct(8, 64),), argmin,
           group=g),
        _p("addmm_distances", "addmm distances ||x||^2 - 2x.c + ||c||^2",
           "[32, 16] vs codebook [64, 16]", codebook, addmm_distances, group=g),
        _p("round", "torch.round", "[4, 256] x 8", (Randn((4, 256), 8.0),), round_, group=g),
        _p("atanh", "torch.atanh", "[4, 256] in (-0.95, 0.95)",
           (Uniform((4, 256), -0.95, 0.95),), atanh, group=g),
        _p("cumprod_int32", "torch.cumprod int32", "[4, 16] values 1..2",
           (Ints((4, 16), 1, 3, "int32"),), cumprod, dtypes=("int32",), group=g,
           workaround="cumprod in int64 (x.long()) or as exp(cumsum(log(x))) in float32"),
        _p("topk", "torch.topk", "[4, 256] k 8", (Randn((4, 256)),), topk, group=g),
        _p("sort", "torch.sort", "[4, 256]", (Randn((4, 256)),), sort, group=g),
        _p("multinomial", "torch.multinomial (fixed generator)", f"16 classes, {SAMPLES} draws",
           (Uniform((16,), 0.1, 1.0), 1234), multinomial, dtypes=FP32,
           golden=multinomial_expected, kind="distribution", group=g,
           workaround="draw on the CPU with a CPU generator when runs must be bit-identical "
                      "across devices"),
        _p("repeat_interleave", "torch.repeat_interleave (tensor repeats)", "[16, 32] repeats 1..4",
           (Randn((16, 32)), Ints((16,), 1, 5)), repeat_interleave, group=g),
        _p("avg_pool1d", "F.avg_pool1d", "[1, 32, 400] k4 s4", (Randn((1, 32, 400)),),
           avg_pool1d, group=g),
    ]
    for mode in ("reflect", "replicate"):
        out += [
            _p(f"pad_{mode}_3d", f"F.pad {mode} 3-D", "[1, 8, 64] pad (5, 5)",
               (Randn((1, 8, 64)), (5, 5), mode), pad, group=g),
            _p(f"pad_{mode}_4d", f"F.pad {mode} 4-D", "[1, 2, 16, 64] pad (3, 3, 2, 2)",
               (Randn((1, 2, 16, 64)), (3, 3, 2, 2), mode), pad, group=g),
        ]
    return out


def _mixed_and_moves() -> list[Probe]:
    g = "mixed precision and dtype moves"
    # autocast takes float32 operands and the probe dtype as its target
    mm = (Randn((64, 128), 1.0, "float32"), Randn((128, 64), 0.1, "float32"), ProbeDtype())
    low = ("bfloat16", "float16")
    return [
        _p("autocast_device", "autocast(device_type=<backend>)", "[64, 128] @ [128, 64]",
           mm, autocast_device, dtypes=low, reference=cast_matmul,
           golden=plain_matmul, group=g, tags=("autocast",)),
        _p("autocast_cuda", 'autocast(device_type="cuda") hard-coded', "[64, 128] @ [128, 64]",
           mm, autocast_cuda, dtypes=low, reference=cast_matmul,
           golden=plain_matmul, group=g, tags=("autocast",),
           workaround="name the tensors' own device type: "
                      "torch.autocast(device_type=x.device.type, dtype=...)",
           known=f'autocast(device_type="cuda") had to be patched for the NPU ({COVO})'),
        _p("to_int", "Tensor.to(int)", "[4, 256] x 100", (Randn((4, 256), 100.0),), to_int,
           group=g),
        _p("int64_arith", "int64 arithmetic beyond 2**31", "[256]",
           (Ints((256,), 2**33, 2**40), Ints((256,), 1, 1000)), int64_arith,
           dtypes=("int64",), group=g,
           workaround="keep large integer math on the CPU when the device computes int64 "
                      "through int32"),
        _p("float64_on_device", "float64 on the device", "[64, 64]", (Randn((64, 64)),),
           float64_ops, dtypes=("float64",), group=g,
           workaround="compute in float32 on the device, or move float64 work to the CPU",
           known="float64 kernels are limited on Ascend (helpers.device dtype table)"),
    ]


def probes() -> list[Probe]:
    """Every catalog probe, in report order."""
    return [*_spectral(), *_convolution(), *_activations(), *_attention(), *_indexing(),
            *_mixed_and_moves()]


def by_name(name: str) -> Probe:
    for p in probes():
        if p.name == name:
            return p
    raise KeyError(f"no catalog probe {name!r}; known: {', '.join(p.name for p in probes())}")
