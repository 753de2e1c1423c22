"""Audio in the report: reading, validation, resampling, log-mel front ends, fixtures.

What the reader sees and hears of a clip (players, waveform and mel figures) is helpers.players.

Reading is soundfile (WAV, FLAC, anything libsndfile opens); resampling is soxr; the log-mel
front ends run torch.stft on whatever device the caller selected. torchaudio is not used.

Which bad inputs are errors and which are warnings (see `Limits` for the numbers and sources):
  AudioError (nothing meaningful can be computed; the stage records it as a failed row):
    unreadable (missing, 0 bytes, not audio), empty (0 frames), NaN/Inf samples (they
    propagate through every layer), shorter than Limits.min_seconds.
  warning (the clip still runs through every component; the report shows the warning):
    silent (digital zero, or RMS below Limits.silence_dbfs), clipped (more than
    Limits.max_clipped_share of the samples at full scale), upsampled from a lower rate.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch

from helpers import paths
from helpers.errors import AudioError

FIXTURES_DIR = paths.DATA / "audio"
WHISPER_CHUNK_S = 30  # Whisper encoders see fixed 30 s windows (3000 frames at hop 160)



# ---- limits ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """Validation thresholds; `sources` says where each number comes from."""

    min_seconds: float = 0.1
    silence_dbfs: float = -60.0
    full_scale: float = 0.999
    max_clipped_share: float = 0.001
    sources: dict[str, str] = field(default_factory=lambda: {
        "min_seconds": "one 12.5 Hz speech token of the GPA tokenizer spans 80 ms (4x pooled "
                       "50 Hz Whisper frames); 0.1 s leaves one token plus STFT margin",
        "silence_dbfs": "34 dB below the -26 dBov nominal active speech level of ITU-T P.56 "
                        "(the level G.191 normalizes speech to)",
        "full_scale": "a 16-bit sample within 0.1% of full scale (|x| >= 0.999)",
        "max_clipped_share": "project choice: clean speech has no full-scale samples; more "
                             "than 0.1% of them means the recording clipped",
    })


LIMITS = Limits()


@dataclass
class Clip:
    """Audio ready for a component: float32 samples, their rate, and what validation found."""

    samples: np.ndarray          # [T] mono, or [C, T] when loaded with mono=False
    sample_rate: int
    source: str                  # file path or a caller-given name
    source_rate: int
    source_channels: int
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


# ---- reading, mixing, resampling ---------------------------------------------------------

def load(path: str | Path, mono: bool = False) -> tuple[np.ndarray, int]:
    """Read a WAV/FLAC file: (float32 [C, T], or [T] for one channel or mono=True; rate in Hz).

    Integer PCM is scaled to [-1, 1). Raises AudioError for a missing, empty or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist or is not a file: check the path "
                         "(the shipped fixtures are listed by helpers.audio.fixtures())")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {path} is 0 bytes: the export or copy did not finish; "
                         "write it again as WAV or FLAC")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)  # [T, C]
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"cannot read audio file {path} ({exc}): convert it to WAV or FLAC, "
                         "e.g. `ffmpeg -i in.m4a -ar 16000 -ac 1 out.wav`") from exc
    x = np.ascontiguousarray(data.T)  # [C, T]
    if mono or x.shape[0] == 1:
        x = mix_to_mono(x)
    return x, int(sr)


def mix_to_mono(x: np.ndarray) -> np.ndarray:
    """[C, T] -> [T] by averaging the channels (a [T] input is returned unchanged)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioError(f"expected audio shaped [T] or [C, T], got {x.shape}")
    return x.mean(axis=0, dtype=np.float64).astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "VHQ") -> np.ndarray:
    """Resample [T] or [C, T] float32 audio with soxr (very high quality by default)."""
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x.copy()
    if x.ndim == 1:
        return soxr.resample(x, sr_in, sr_out, quality=quality)
    y = soxr.resample(np.ascontiguousarray(x.T), sr_in, sr_out, quality=quality)  # [T, C]
    return np.ascontiguousarray(y.T)


# ---- validation --------------------------------------------------------------------------

def check(x: np.ndarray, sr: int, name: str, limits: Limits = LIMITS) -> list[str]:
    """Validate raw samples ([T] or [C, T]); raise AudioError or return warnings (strings)."""
    n = x.shape[-1]
    if n == 0:
        raise AudioError(f"{name} has no samples (0 frames): the recording is empty; record or "
                         "export it again")
    finite = np.isfinite(x)
    if not finite.all():
        raise AudioError(f"{name} has {int((~finite).sum())} NaN/Inf samples of {x.size}: the "
                         "file is corrupt or was written from a diverged computation; re-export "
                         "it as PCM_16 WAV")
    if n / sr < limits.min_seconds:
        raise AudioError(f"{name} lasts {1000 * n / sr:.1f} ms, shorter than the "
                         f"{limits.min_seconds} s minimum ({limits.sources['min_seconds']}): "
                         "give a longer recording")
    return _silence_warnings(x, name, limits) + _clipping_warnings(x, name, limits)


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (-inf for digital silence)."""
    rms = math.sqrt(float(np.mean(np.square(x, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def _silence_warnings(x: np.ndarray, name: str, limits: Limits) -> list[str]:
    if not np.any(x):
        return [f"{name} is digital silence (every sample is 0): outputs computed from it say "
                "nothing about speech; use a recording with speech in it"]
    level = rms_dbfs(x)
    if level < limits.silence_dbfs:
        return [f"{name} is near-silent: RMS {level:.1f} dBFS is below the "
                f"{limits.silence_dbfs} dBFS floor ({limits.sources['silence_dbfs']}); "
                "check the recording gain"]
    return []


def _clipping_warnings(x: np.ndarray, name: str, limits: Limits) -> list[str]:
    share = float(np.mean(np.abs(x) >= limits.full_scale))
    if share > limits.max_clipped_share:
        return [f"{name} is clipped: {100 * share:.2f}% of samples are at full scale "
                f"(limit {100 * limits.max_clipped_share:.2f}%, "
                f"{limits.sources['max_clipped_share']}); record at a lower gain"]
    return []


def load_checked(path: str | Path, sr: int | None = None, mono: bool = True,
                 limits: Limits = LIMITS) -> Clip:
    """Read, validate, mix down and resample a file: the one entry point for stage inputs.

    Raises AudioError for the error cases in the module docstring; warnings are in Clip.warnings.
    """
    x, source_sr = load(path)
    warnings = check(x, source_sr, str(path), limits)
    channels = 1 if x.ndim == 1 else x.shape[0]
    if mono:
        x = mix_to_mono(x)
    rate = sr or source_sr
    if rate > source_sr:
        warnings.append(f"{path} is upsampled from {source_sr} Hz to {rate} Hz: it holds nothing "
                        f"above {source_sr // 2} Hz")
    return Clip(resample(x, source_sr, rate), rate, str(path), source_sr, channels, warnings)


def pad_or_trim(x: np.ndarray | torch.Tensor, length: int) -> np.ndarray | torch.Tensor:
    """Zero-pad or cut the last axis to `length` samples (Whisper's fixed 30 s window)."""
    n = x.shape[-1]
    if n >= length:
        return x[..., :length]
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.pad(x, (0, length - n))
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - n)])


# ---- mel filterbank ----------------------------------------------------------------------
# The Slaney mel scale (Auditory Toolbox; librosa's default and Whisper's): linear below
# 1 kHz at 200/3 Hz per mel, logarithmic above with 27 mels per factor 6.4.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: np.ndarray, scale: str = "slaney") -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log_part, f / _F_SP)


def mel_to_hz(m: np.ndarray, scale: str = "slaney") -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(m, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log_part, _F_SP * m)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None, scale: str = "slaney",
                   norm: str | None = "slaney") -> np.ndarray:
    """Triangular mel filters, float64 [n_mels, n_fft // 2 + 1] (read-only, cached).

    Filter i rises from mel point i to i+1 and falls to i+2 (n_mels + 2 points equally spaced
    in mel); norm "slaney" scales each to unit area, 2 / (f[i+2] - f[i]).
    """
    if scale not in ("slaney", "htk"):
        raise ValueError(f"mel scale {scale!r} is not one of slaney, htk")
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)                         # [F]
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2),
                      scale)                                                            # [M+2]
    rising = (fft_hz[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]          # [M, F]
    falling = (edges[2:, None] - fft_hz[None, :]) / np.diff(edges)[1:, None]           # [M, F]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


# ---- log-mel front ends ------------------------------------------------------------------

@dataclass(frozen=True)
class MelSpec:
    """One log-mel front end. compression: "whisper" = log10(clamp 1e-10), floor at max - 8,
    then (x + 4) / 4; "ln" = natural log of clamp(min 1e-5) (HiFi-GAN / BigVGAN / codecs);
    "none" = the linear mel itself (BiCodec's speaker encoder input)."""

    name: str
    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    power: float = 2.0           # 2: power |X|^2, 1: magnitude |X|
    compression: str = "whisper"
    f_min: float = 0.0
    f_max: float | None = None   # None: sample_rate / 2
    drop_last_frame: bool = False
    win_length: int | None = None  # None: n_fft (a shorter hann window is centered in n_fft)

    def frames(self, n_samples: int) -> int:
        """Frames for n_samples of input (centered STFT)."""
        return n_samples // self.hop_length + 1 - int(self.drop_last_frame)

    def filterbank(self) -> np.ndarray:
        return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)


def whisper_spec(n_mels: int = 128) -> MelSpec:
    """Whisper's front end: 16 kHz, n_fft 400, hop 160, power spectrum, log10, range clamp."""
    return MelSpec(f"whisper-{n_mels}", 16000, 400, 160, n_mels, power=2.0,
                   compression="whisper", f_max=8000.0, drop_last_frame=True)


def codec_spec(sample_rate: int = 16000, n_mels: int = 128, n_fft: int = 1024,
               hop_length: int = 320) -> MelSpec:
    """Codec/vocoder front end: magnitude spectrum, slaney mel, ln(clamp 1e-5)."""
    return MelSpec(f"codec-{n_mels}@{sample_rate // 1000}k", sample_rate, n_fft, hop_length,
                   n_mels, power=1.0, compression="ln")


def bicodec_spec(n_mels: int = 128, n_fft: int = 1024, win_length: int = 640,
                 hop_length: int = 320, f_min: float = 10.0, f_max: float | None = None,
                 sample_rate: int = 16000) -> MelSpec:
    """BiCodec's mel for its speaker encoder (SparkAudio/Spark-TTS sparktts/models/bicodec.py
    init_mel_transformer: torchaudio MelSpectrogram, power 1, slaney norm and scale, centered
    reflect-padded hann window of win_length, no log), defaults from BiCodec/config.yaml
    mel_params (16 kHz, n_fft 1024, win 640, hop 320, fmin 10, fmax null, 128 mels)."""
    return MelSpec(f"bicodec-{n_mels}", sample_rate, n_fft, hop_length, n_mels, power=1.0,
                   compression="none", f_min=f_min, f_max=f_max, win_length=win_length)


WHISPER = whisper_spec(128)
CODEC = codec_spec()
BICODEC_MEL = bicodec_spec()


def _as_float32(x: np.ndarray | torch.Tensor, device: Any) -> torch.Tensor:
    """Any array or tensor -> float32 tensor on device; integer PCM is scaled to [-1, 1)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    scale = 1.0
    if not (t.is_floating_point() or t.is_complex()):
        scale = 1.0 / 2 ** (torch.iinfo(t.dtype).bits - 1)
    # stft on Ascend needs float32 input (int64 fails in aclnnInplaceCos): cast before moving
    t = t.to(dtype=torch.float32).to(device=device or t.device)
    return t * scale if scale != 1.0 else t


def power_spectrum(wave: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    """[..., T] float32 -> |STFT|^power [..., n_fft // 2 + 1, frames] (hann, centered)."""
    win = spec.win_length or spec.n_fft
    window = torch.hann_window(win, dtype=torch.float32, device=wave.device)
    stft = torch.stft(wave, spec.n_fft, spec.hop_length, win_length=win, window=window,
                      center=True, pad_mode="reflect", return_complex=True)  # [..., F, N]
    if spec.drop_last_frame:
        stft = stft[..., :-1]
    # |X|^2 as real^2 + imag^2: complex abs() is not supported on Ascend NPUs
    power = stft.real.square() + stft.imag.square()
    return power if spec.power == 2.0 else power.pow(spec.power / 2.0)


def _compress(mel: torch.Tensor, spec: MelSpec) -> torch.Tensor:
    if spec.compression == "none":  # BiCodec's speaker encoder takes the linear mel
        return mel
    if spec.compression == "ln":
        return torch.log(torch.clamp(mel, min=1e-5))
    log_spec = torch.clamp(mel, min=1e-10).log10()                   # [..., M, N]
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)                 # per example
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


def log_mel(x: np.ndarray | torch.Tensor, spec: MelSpec = WHISPER,
            device: str | torch.device | None = None) -> torch.Tensor:
    """Log-mel features of [T] or [B, T] audio at spec.sample_rate, on `device` (default: the
    tensor's own, CPU for numpy): float32 [n_mels, frames] or [B, n_mels, frames].

    The STFT always runs in float32 whatever the input dtype (bfloat16, float16, int16 PCM).
    """
    wave = _as_float32(x, device)
    if wave.ndim not in (1, 2):
        raise AudioError(f"log_mel takes mono audio [T] or a batch [B, T], got {tuple(wave.shape)};"
                         " mix down with helpers.audio.mix_to_mono first")
    if wave.shape[-1] <= spec.n_fft // 2:
        raise AudioError(f"{wave.shape[-1]} samples are too few for {spec.name} (n_fft "
                         f"{spec.n_fft} needs more than {spec.n_fft // 2}); give longer audio")
    filters = torch.tensor(spec.filterbank(), dtype=torch.float32, device=wave.device)  # [M, F]
    mel = filters @ power_spectrum(wave, spec)                        # [M, F] @ [..., F, N]
    return _compress(mel, spec)


def whisper_features(x: np.ndarray | torch.Tensor, n_mels: int = 128, pad_to_multiple_of: int = 1,
                     max_samples: int = WHISPER_CHUNK_S * 16000,
                     device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What transformers' WhisperFeatureExtractor(padding="longest", pad_to_multiple_of,
    return_attention_mask) gives for one 16 kHz clip: (log-mel [n_mels, frames] float32,
    frame mask [frames] long). The clip is cut to max_samples, zero-padded to a multiple of
    pad_to_multiple_of; frames = padded samples / 160 (the last STFT frame dropped); the mask
    is the sample mask taken every hop (1 where frame k starts inside the real audio)."""
    wave = _as_float32(x, device)[..., :max_samples]
    n = wave.shape[-1]
    padded = -(-n // pad_to_multiple_of) * pad_to_multiple_of
    wave = torch.nn.functional.pad(wave, (0, padded - n))
    mel = log_mel(wave, whisper_spec(n_mels) if n_mels != WHISPER.n_mels else WHISPER)
    starts = torch.arange(mel.shape[-1], device=mel.device) * WHISPER.hop_length
    return mel, (starts < n).long()


# ---- fixtures ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Fixture:
    """One shipped utterance (data/audio/fixtures.json)."""

    name: str
    file: str
    language: str
    text: str
    voice: str
    sample_rate: int
    channels: int
    subtype: str
    format: str
    frames: int
    duration_s: float

    @property
    def path(self) -> Path:
        return FIXTURES_DIR / self.file


def fixtures() -> list[Fixture]:
    """The shipped speech fixtures with their metadata (regenerate with `make data`)."""
    meta = json.loads((FIXTURES_DIR / "fixtures.json").read_text(encoding="utf-8"))
    return [Fixture(**row) for row in meta["fixtures"]]


def fixture(name: str) -> Fixture:
    known = {f.name: f for f in fixtures()}
    if name not in known:
        raise AudioError(f"unknown audio fixture {name!r}; shipped fixtures: {', '.join(known)}")
    return known[name]


def load_fixture(name: str, sr: int = 16000) -> np.ndarray:
    """A shipped fixture as mono float32 [T] at `sr`."""
    return load_checked(fixture(name).path, sr=sr).samples


def fixtures_table() -> Any:
    """The fixtures as a pandas DataFrame (one row each) for the report."""
    import pandas as pd

    return pd.DataFrame([asdict(f) for f in fixtures()]).set_index("name")
