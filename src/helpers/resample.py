"""Band-limited resampling with torchaudio's windowed-sinc formula, written in torch.

The Covo-Audio-Chat release resamples with torchaudio (covoaudio/modeling_covo_audio.py:
torchaudio.functional.resample from the file's rate to 24 kHz, torchaudio.transforms.Resample
(24000, 16000) before the log-mel). torchaudio is not a dependency here (it has no CPU build
in this project), so this module computes the same formula: pytorch/audio
src/torchaudio/functional/functional.py, _get_sinc_resample_kernel and
_apply_sinc_resample_kernel (method "sinc_interp_hann", lowpass_filter_width 6, rolloff 0.99).

With the rates reduced by their gcd to `orig` and `new`, output sample j of every block of
`new` reads the input around position j * orig / new:

  y[n * new + j] = sum_k x[n * orig + k - width] * h_j(k),   k = 0 .. 2 * width + orig - 1
  h_j(k) = sinc(t) * cos^2(pi t / (2 zeros)) * base / orig,  t = clamp(base * ((k - width) / orig
           - j / new), -zeros, zeros),   sinc(t) = sin(pi t) / (pi t)
  base = min(orig, new) * rolloff,   width = ceil(zeros * orig / base)

one strided conv1d with `new` output channels, cut to ceil(new * T / orig) samples. The input
is zero-padded by `width` on the left and `width + orig` on the right.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ZEROS = 6  # lowpass_filter_width: zero crossings of the sinc kept on each side
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency


def reduced(orig_hz: int, new_hz: int) -> tuple[int, int]:
    """The two rates divided by their greatest common divisor."""
    g = math.gcd(int(orig_hz), int(new_hz))
    return int(orig_hz) // g, int(new_hz) // g


def kernel(orig_hz: int, new_hz: int, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """(h [new, 1, 2 width + orig], width) for orig_hz -> new_hz.

    dtype None is transforms.Resample's default: the kernel is built in float64 and cast to
    float32; functional.resample builds it in the waveform's dtype instead.
    """
    orig, new = reduced(orig_hz, new_hz)
    base = min(orig, new) * ROLLOFF
    width = math.ceil(ZEROS * orig / base)
    build = dtype if dtype is not None else torch.float64
    taps = torch.arange(-width, width + orig, dtype=build, device=device) / orig  # [K]
    # dtype None: an integer arange divided, so the default dtype (float32), as torchaudio
    phase = torch.arange(0, -new, -1, dtype=dtype, device=device) / new  # [new]
    t = ((phase[:, None] + taps[None, :]) * base).clamp(-ZEROS, ZEROS)  # [new, K]
    window = torch.cos(t * math.pi / ZEROS / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    h = (sinc * (window * (base / orig)))[:, None, :]  # [new, 1, K]
    return (h if dtype is not None else h.to(torch.float32)), width


def apply(x: torch.Tensor, orig_hz: int, new_hz: int, h: torch.Tensor,
          width: int) -> torch.Tensor:
    """[..., T] -> [..., ceil(new T / orig)] with a kernel from `kernel`."""
    if not x.is_floating_point():
        raise TypeError(f"resampling needs floating-point samples, got {x.dtype}")
    orig, new = reduced(orig_hz, new_hz)
    shape = x.shape
    flat = x.reshape(-1, shape[-1])  # [B, T]
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    y = torch.nn.functional.conv1d(padded[:, None], h.to(x.dtype), stride=orig)  # [B, new, F]
    y = y.transpose(1, 2).reshape(flat.shape[0], -1)  # [B, new * F], phases interleaved
    return y[:, : math.ceil(new * shape[-1] / orig)].reshape(*shape[:-1], -1)


def resample(x: torch.Tensor | np.ndarray, orig_hz: int, new_hz: int,
             kernel_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [..., T] from orig_hz to new_hz; the same tensor when the rates are equal.

    kernel_dtype None builds the kernel as transforms.Resample does (float64, cast to float32);
    pass x's dtype to build it as functional.resample does.
    """
    t = torch.as_tensor(x)
    if orig_hz <= 0 or new_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_hz} -> {new_hz} Hz")
    if orig_hz == new_hz:
        return t
    h, width = kernel(orig_hz, new_hz, kernel_dtype, t.device)
    return apply(t, orig_hz, new_hz, h, width)
