"""Covo-Audio-Chat's input path: wav -> features for the encoder, and the chat prompt.

Our own code for the release's steps (GitHub Tencent/Covo-Audio,
covoaudio/modeling_covo_audio.py: get_dialog_prompt, CovoAudioForCausalLM.audio_encoder,
log_mel_spectrogram, calc_seq_len):

  1. mono (channel mean), resampled to 24 kHz
  2. cut to a whole number of 240-sample hops (24000 // 100), zero-padded to a multiple of 480
  3. audio tokens N = the 100 Hz frame count (samples * 100 // 24000) halved four times,
     rounding up (strides 2, 2, 2, 2)
  4. 30-s segments of 720,000 samples (the last one shorter)
  5. each segment resampled to 16 kHz, padded or cut to 480,000 samples (30 s), Whisper
     log-mel: n_fft 400, hop 160, hann window, |STFT|^2 without the last frame, 128 mel bins
     (librosa's slaney filters, which the release ships as assets/mel_filters.npz), log10 of
     clamp 1e-10, floored 8 decades below the maximum, (x + 4) / 4 -> [128, 3000]; cast to
     bfloat16 (or the encoder's dtype)
  6. prompt: system turn, user turn <|begofcAUDIO|> + N x <|cAUDIO|> + <|endofcAUDIO|>,
     assistant turn

Resampling: as the release, torchaudio's windowed sinc (hann, 6 zero crossings, rolloff 0.99),
computed by helpers.resample (torchaudio itself is not a dependency): step 1 as
torchaudio.functional.resample (kernel in the samples' float32), step 5 as
torchaudio.transforms.Resample(24000, 16000) (kernel built in float64, used in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from helpers import audio, resample
from helpers.errors import AudioError
from helpers.models.covo_model import AUDIO_BEGIN, AUDIO_END, AUDIO_TOKEN

RATE = 24_000  # get_dialog_prompt: sample_rate
HOP = RATE // 100  # 240 samples = one 100 Hz frame
MULTIPLE = 480  # pad to a multiple of this
SEGMENT = 30 * RATE  # 720,000 samples = 30 s at 24 kHz
ENCODER_RATE = 16_000
WINDOW = 30 * ENCODER_RATE  # 480,000 samples (Whisper's 30-s window)
STRIDES = (2, 2, 2, 2)  # calc_seq_len
SPEC = audio.whisper_spec(128)

# get_dialog_prompt's first-round system prompt (a model input, kept verbatim)
SYSTEM_PROMPT = (
    '你是"小腾"，英文名是"Covo"，由腾讯开发的AI助手。\n'
    "1、请使用简洁、口语化的语言和用户聊天，你的态度积极、耐心，像一位值得信赖的朋友。\n"
    "2、不要使用列表或编号，避免输出网址、表情符号和复杂的公式。\n"
    "3、不评价竞争对手，不发表主观政治观点，针对色情类、政治类、恐怖类、歧视类、暴力类的用户问题，"
    "你要妥善应对潜在的安全风险，并给出幽默，情绪安抚以及安全的劝导。\n"
    "请用文本和音频进行对话，交替生成5个文本token和15个音频token，音频部分使用发音人：default_female")


@dataclass
class Prepared:
    """A clip after steps 1-4: 24 kHz samples, its audio-token count and its segments."""

    wave24: np.ndarray  # [T] float32, T a multiple of 480
    tokens: int
    segments: list[np.ndarray]

    @property
    def seconds(self) -> float:
        return self.wave24.shape[0] / RATE


def token_count(samples24: int) -> int:
    """Audio tokens (placeholders) for a prepared 24 kHz clip of `samples24` samples."""
    n = samples24 * 100 // RATE
    for s in STRIDES:
        n = (n + s - 1) // s
    return n


def read(path: Any) -> tuple[np.ndarray, int]:
    """A file as get_dialog_prompt takes it: channel mean at the file's own rate (checked)."""
    clip = audio.load_checked(path)
    return clip.samples, clip.sample_rate


def prepare(wave: Any, sample_rate: int) -> Prepared:
    """Steps 1-4 for [T] or [C, T] audio at `sample_rate`."""
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim == 2:
        x = audio.mix_to_mono(x)
    if x.ndim != 1 or x.shape[0] == 0:
        raise AudioError(f"covo front end takes [T] or [C, T] audio, got shape {x.shape}",
                         "give a non-empty mono or multi-channel clip")
    x = resample.resample(x, sample_rate, RATE, kernel_dtype=torch.float32).numpy()
    x = x[: x.shape[0] // HOP * HOP]
    if x.shape[0] == 0:
        raise AudioError(f"the clip is shorter than one 10-ms frame ({HOP} samples at 24 kHz)",
                         "give at least 0.1 s of audio")
    x = np.pad(x, (0, -x.shape[0] % MULTIPLE))
    segments = [x[i:i + SEGMENT] for i in range(0, x.shape[0], SEGMENT)]
    return Prepared(x, token_count(x.shape[0]), segments)


def to_encoder_rate(segment24: np.ndarray) -> np.ndarray:
    """24 kHz -> 16 kHz as the release's Resample(24000, 16000) module does."""
    return resample.resample(segment24, RATE, ENCODER_RATE).numpy()


def segment_log_mel(segment24: np.ndarray, device: Any = None) -> torch.Tensor:
    """Step 5 for one segment: [128, 3000] float32 log-mel on `device`."""
    x16 = audio.pad_or_trim(to_encoder_rate(segment24), WINDOW)
    return audio.log_mel(x16, SPEC, device=device)


def features(prep: Prepared, device: Any = None,
             dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """[S, 128, 3000] encoder input of every segment, in `dtype` (the release: bfloat16)."""
    return torch.stack([segment_log_mel(s, device) for s in prep.segments]).to(dtype)


def prompt_text(tokens: int, first_round: bool = True) -> str:
    """The chat prompt with `tokens` audio placeholders (get_dialog_prompt)."""
    audio_part = AUDIO_BEGIN + AUDIO_TOKEN * tokens + AUDIO_END
    user = "<|im_start|>user\n" + audio_part + "<|im_end|>\n<|im_start|>assistant\n"
    if not first_round:
        return "\n" + user
    return "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n" + user


def check_tokenizer(tokenizer: Any) -> None:
    """The tokenizer must know the chat and audio markers as single tokens."""
    from helpers.errors import ModelLoadError

    bad = [t for t in (AUDIO_BEGIN, AUDIO_TOKEN, AUDIO_END, "<|im_start|>", "<|im_end|>")
           if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if bad:
        raise ModelLoadError(f"covo-audio-chat: the tokenizer has no token {', '.join(bad)}",
                             "use the release's tokenizer files (they add the chat and audio "
                             "tokens to Qwen2's)")


def chat_inputs(tokenizer: Any, wave: Any, sample_rate: int, device: Any = None,
                dtype: torch.dtype = torch.bfloat16, first_round: bool = True,
                ) -> dict[str, torch.Tensor]:
    """input_ids [1, S], attention_mask [1, S], input_features [S_seg, 128, 3000]."""
    check_tokenizer(tokenizer)
    prep = prepare(wave, sample_rate)
    enc = tokenizer(prompt_text(prep.tokens, first_round), return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device),
            "attention_mask": enc["attention_mask"].to(device),
            "input_features": features(prep, device, dtype)}
