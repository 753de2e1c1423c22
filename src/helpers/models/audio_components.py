"""The recipes' audio components: gpa's speech tokenizer and codec, covo-audio-chat's vocoder.

Each has a tiny config (same classes, same sample rates, frame rates and code-book sizes; small
widths) and a full-shape config (the published dimensions), and is saved / read with
save_pretrained / from_pretrained like the LMs:

  speech_tokenizer (gpa)  GLM-4-Voice's WhisperVQEncoder, our implementation in
                          helpers.models.glm_tokenizer, read from and saved as the release's
                          glm-4-voice-tokenizer/ folder (config.json + model.safetensors +
                          preprocessor_config.json): Whisper log-mel -> causal convs -> 16
                          layers -> avg pool 4 (12.5 Hz) -> nearest of 16,384 codes.
  codec (gpa)             BiCodec, our implementation in helpers.models.bicodec, read from and
                          saved as the release's BiCodec/ folder (config.yaml + model.safetensors
                          + wav2vec2-large-xlsr-53/): wav2vec2 layers 11/14/16 -> encoder -> 50 Hz
                          semantic tokens of 8,192; mel -> ECAPA-TDNN -> perceiver -> residual
                          FSQ: 32 global tokens of 4,096; prenet + wave generator x320 -> 16 kHz.
  vocoder (covo)          token2wav as released (helpers.models.token2wav.Token2Wav): audio
                          tokens (0..16383, 25 Hz) -> flow-matching DiT latents (100 Hz) ->
                          BigVGAN-style flow-VAE decoder (x240) -> 24 kHz waveform; read from
                          and saved as the release's token2wav folder (model.pt, config.json,
                          global_mean_var.npy, prompt/*.npy).

Profile real: gpa's two components are read from the release's own folders, strictly (a
missing, unknown or mis-shaped tensor is an error naming the file); a model directory without
such a folder leaves that component out and says so. Covo's token2wav is read from the
release's token2wav/ folder (helpers.models.token2wav, strict the same way); without its
model.pt the recipe leaves the vocoder out and says so in its load notes (stage 6 shows it as
not loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from helpers import audio
from helpers.models import bicodec, glm_tokenizer, token2wav
from helpers.models.token2wav import Token2Wav, Token2WavConfig

# ---- shapes --------------------------------------------------------------------------------

GLM_VOICE = ("glm-4-voice-tokenizer as GPA releases it (" + glm_tokenizer.SOURCE + "): "
             "WhisperVQEncoder, causal convs, avg pool 4 to 12.5 Hz, 16,384 codes at layer 16")
BICODEC = ("BiCodec as GPA releases it (SparkAudio/Spark-TTS sparktts/models/bicodec.py; AutoArk/"
           "GPA models/bicodec_tokenizer/spark_tokenizer.py, spark_detokenizer.py): wav2vec2-"
           "large-xlsr-53 -> 50 Hz semantic tokens of 8,192 + 32 global tokens of 4,096, x320")
TOKEN2WAV = ("Covo-Audio-Chat token2wav (GitHub Tencent/Covo-Audio token2wav/config.json: DiT "
             "12 x 1024, 16 heads, 4x token upsampling, 16,384 tokens, z 64; flow-VAE decoder "
             "5*3*2*2*2*2 = 240 to 24 kHz)")

VOCODER_FULL: dict[str, Any] = {}  # token2wav/config.json's values (Token2WavConfig defaults)
# Tiny: the same token vocabulary, 4x upsampling, hop 240 (5*3*2*2*2*2) and 24 kHz; a 2-layer
# DiT of width 64, z 16, decoder channels 64 -> 1, 3 ODE steps (the release: 10).
VOCODER_TINY = dict(token_input_dim=16, z_dim=16, spkr_embed_dim=32, num_layers=2,
                    hidden_size=64, ffn_hidden_size=128, num_heads=4,
                    upsample_initial_channel=64, resblock_kernel_sizes=[3],
                    resblock_dilation_sizes=[[1, 3, 5]], s_steps=3)

# Mel distance of 24 kHz waveforms (the vocoder's output): BigVGAN's mel (n_fft 1024, hop 256,
# 100 slaney bins, magnitude, natural log of clamp 1e-5).
VOCODER_SPEC = audio.codec_spec(sample_rate=24_000, n_mels=100, n_fft=1024, hop_length=256)


@dataclass(frozen=True)
class AudioPart:
    """What a stage needs to know about one audio component."""

    name: str
    kind: str  # "tokenizer" (token ids out) | "codec" | "vocoder" (waveform out)
    role: str
    subfolder: str
    input_rate: int  # Hz of the audio the component's input is made from
    output_rate: int  # Hz of its waveform output (0: tokens, no waveform)
    source: str


PARTS: dict[str, AudioPart] = {
    "speech_tokenizer": AudioPart(
        "speech_tokenizer", "tokenizer",
        "GLM-4-Voice WhisperVQEncoder: log-mel -> 16 layers -> avg pool 4 (12.5 Hz) -> "
        "16,384 codes", "glm-4-voice-tokenizer", 16_000, 0, GLM_VOICE),
    "codec": AudioPart(
        "codec", "codec",
        "BiCodec: wav2vec2 -> 50 Hz semantic tokens (8,192) + 32 global tokens (4,096) -> "
        "wave generator x320 -> 16 kHz", "BiCodec", 16_000, 16_000, BICODEC),
    "vocoder": AudioPart(
        "vocoder", "vocoder",
        "token2wav: audio tokens -> flow-matching DiT -> flow-VAE decoder -> 24 kHz",
        "token2wav", 24_000, 24_000, TOKEN2WAV),
}


# ---- registry ------------------------------------------------------------------------------


_CLASSES: dict[str, tuple[type, type]] = {
    "speech_tokenizer": (glm_tokenizer.WhisperVQConfig, glm_tokenizer.GlmSpeechTokenizer),
    "codec": (bicodec.BiCodecConfig, bicodec.BiCodecCodec),
    "vocoder": (Token2WavConfig, Token2Wav),
}
# gpa's components: their release formats, configs built from their own modules' shapes
RELEASE_FORMAT = ("speech_tokenizer", "codec")


def _glm_config(shape: dict[str, Any]) -> glm_tokenizer.WhisperVQConfig:
    return glm_tokenizer.WhisperVQConfig(**shape)


def _bicodec_config(shape: tuple[dict[str, Any], dict[str, Any]]) -> bicodec.BiCodecConfig:
    from transformers import Wav2Vec2Config

    return bicodec.BiCodecConfig(shape[0], Wav2Vec2Config(**shape[1]))


_MAKERS: dict[str, Any] = {"speech_tokenizer": _glm_config, "codec": _bicodec_config}
_SHAPES: dict[str, dict[str, Any]] = {
    "speech_tokenizer": {"tiny": glm_tokenizer.TINY, "full-shape": glm_tokenizer.FULL},
    "codec": {"tiny": (bicodec.TINY_YAML, bicodec.WAV2VEC2_TINY),
              "full-shape": (bicodec.FULL_YAML, bicodec.WAV2VEC2_FULL)},
    "vocoder": {"tiny": VOCODER_TINY, "full-shape": VOCODER_FULL},
}


def part(name: str) -> AudioPart:
    if name not in PARTS:
        raise KeyError(f"unknown audio component {name!r}; known: {', '.join(PARTS)}")
    return PARTS[name]


def config(name: str, profile: str) -> Any:
    """The component's config at profile tiny or full-shape."""
    part(name)
    if profile not in _SHAPES[name]:
        raise ValueError(f"audio component {name} has built-in shapes for "
                         f"{', '.join(_SHAPES[name])}, not {profile!r}")
    if name in _MAKERS:
        return _MAKERS[name](_SHAPES[name][profile])
    cfg_cls = _CLASSES[name][0]
    return cfg_cls(**_SHAPES[name][profile])


def configs(names: tuple[str, ...], profile: str) -> dict[str, Any]:
    """Configs of these components (a recipe's audio_parts) at profile tiny or full-shape."""
    return {n: config(n, profile) for n in names}


def saved_in(folder: Path, name: str) -> bool:
    """Whether `folder` holds this component: for gpa's (release formats) that the folder
    exists (its files are checked strictly when read); otherwise a save_pretrained of the
    component's class (by model_type)."""
    if part(name).name in RELEASE_FORMAT:
        return Path(folder).is_dir()
    if name == "vocoder":  # the release's token2wav folder: its checkpoint (config.json optional)
        return token2wav.present(Path(folder))
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == _CLASSES[part(name).name][0].model_type


def read_configs(recipe: Any, root: Path) -> dict[str, Any]:
    """Configs of the recipe's audio components that `root` holds saves of (see saved_in)."""
    return {n: _CLASSES[n][0].from_pretrained(str(recipe.component_dir(root, n)))
            for n in recipe.audio_parts if saved_in(recipe.component_dir(root, n), n)}


def config_of(name: str, module: nn.Module | None) -> Any:
    """The config a gpa component's inputs follow (its padding, reference window); None for
    the others (their inputs need none)."""
    if module is None or part(name).name not in RELEASE_FORMAT:
        return None
    return getattr(module, "config", None)


# The dtype upstream runs each gpa component in (a rule of its code, recorded next to the
# dtype this run chose): SparkTokenizer / SparkDeTokenizer use float16 on CUDA and float32
# elsewhere (spark_tokenizer.py, tokenizer_utils.get_dtype); SpeechTokenExtractor keeps the
# encoder's float32 (gpa_inference.py loads WhisperVQEncoder without a dtype).
UPSTREAM_DTYPE: dict[str, dict[str, str]] = {
    "speech_tokenizer": {"cuda": "float32", "default": "float32"},
    "codec": {"cuda": "float16", "default": "float32"},
}


def upstream_dtype(name: str, device_type: str) -> str:
    """The dtype upstream would use for this component on this device type ("" unknown)."""
    rule = UPSTREAM_DTYPE.get(part(name).name)
    return "" if rule is None else rule.get(device_type, rule["default"])


def loader(name: str) -> type:
    """The class whose _from_config / from_pretrained makes the component."""
    part(name)
    return _CLASSES[name][1]


# ---- inputs --------------------------------------------------------------------------------

DEFAULT_FIXTURE = "en_fox"


def module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def tokenizer_inputs(x16k: Any, device: torch.device, dtype: torch.dtype, batch: int = 1,
                     part_config: Any = None) -> dict[str, torch.Tensor]:
    """16 kHz mono audio -> what GPA's SpeechTokenExtractor feeds WhisperVQEncoder: Whisper
    log-mel padded to a multiple of 1280 samples [B, 128, T] and its frame mask [B, T]."""
    part_config = part_config or config("speech_tokenizer", "full-shape")
    return glm_tokenizer.inputs(x16k, part_config, device, dtype, batch)


def codec_inputs(x16k: Any, device: torch.device, dtype: torch.dtype, batch: int = 1,
                 part_config: Any = None) -> dict[str, torch.Tensor]:
    """16 kHz mono audio -> what SparkTokenizer feeds BiCodec: normalized input_values [B, T]
    for wav2vec2 and the 6-s reference clip ref_wav [B, R] for the speaker mel."""
    part_config = part_config or config("codec", "full-shape")
    return bicodec.inputs(x16k, part_config, device, dtype, batch)


def vocoder_inputs(x24k: Any, device: torch.device, dtype: torch.dtype,
                   batch: int = 1) -> dict[str, torch.Tensor]:
    """24 kHz audio -> as many audio tokens as its duration holds at 25 Hz (at least 2),
    seeded random ids in 0..16383 (the LM's audio tokens are its own; these exercise the same
    decoder on equal input on every side), [B, N] int64."""
    n = max(2, round(np.asarray(x24k).shape[-1] / 24_000 * token2wav.TOKEN_RATE_HZ))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, token2wav.Token2WavConfig().token_vocab_size, (1, n), generator=gen)
    del dtype  # token ids stay int64
    return {"audio_tokens": ids.repeat(batch, 1).to(device)}


_INPUTS = {"speech_tokenizer": tokenizer_inputs, "codec": codec_inputs, "vocoder": vocoder_inputs}


def inputs_for(name: str, samples: Any, device: torch.device, dtype: torch.dtype,
               batch: int = 1, part_config: Any = None) -> dict[str, torch.Tensor]:
    """Forward kwargs of a component for mono audio already at part(name).input_rate; gpa's
    take the component's config (padding, reference window; default: the released values)."""
    if part(name).name in RELEASE_FORMAT:
        return _INPUTS[name](samples, device, dtype, batch, part_config)
    return _INPUTS[part(name).name](samples, device, dtype, batch)


def example_inputs(name: str, module: nn.Module, batch: int = 1,
                   fixture: str = DEFAULT_FIXTURE) -> dict[str, torch.Tensor]:
    """Forward kwargs made from a shipped fixture, on the module's device and in its dtype."""
    p = part(name)
    samples = audio.load_fixture(fixture, sr=p.input_rate)
    dev = next(module.parameters()).device
    cfg = getattr(module, "config", None) if p.name in RELEASE_FORMAT else None
    return inputs_for(name, samples, dev, module_dtype(module), batch, cfg)


# ---- running -------------------------------------------------------------------------------

@torch.inference_mode()
def run(name: str, module: nn.Module, inputs: dict[str, torch.Tensor],
        codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One forward; outputs by kind: tokenizer {tokens [B, N], lengths [B], states [B, N, D]
    (the pooled encoder states the codes are chosen from), codebook [K, D]}, codec {codes
    [B, Q, N], waveform [B, T]}, vocoder {waveform [B, T]}. Tensors stay on the device.

    For the codec, `codes` (e.g. the CPU reference's) are decoded instead of its own, so the
    decoder's numerics are compared on equal input, as when it speaks an LM's tokens.
    """
    kind = part(name).kind
    if kind == "tokenizer":  # GLM-4-Voice: ids, the real tokens' count, pre-quantization states
        out = module(**inputs)
        return {"tokens": out["token_ids"], "lengths": out["token_mask"].sum(dim=-1),
                "states": out["states"], "codebook": module.codebook.weight}
    if kind == "codec":  # BiCodec: codes = the 32 global tokens then the N semantic ones
        semantic, glob = module.tokenize(inputs["input_values"], inputs["ref_wav"])
        own = torch.cat([glob.flatten(1).long(), semantic.long()], dim=-1)  # [B, G + N]
        use = own if codes is None else codes.to(own.device)
        g = glob.flatten(1).shape[1]
        wave = module.detokenize(use[:, g:], use[:, :g].reshape(glob.shape))  # [B, 1, N * 320]
        return {"codes": own, "semantic_tokens": semantic.long(),
                "global_tokens": glob.flatten(1).long(), "waveform": wave[:, 0]}
    out = module(**inputs)
    return {"waveform": out if out.dim() == 2 else out.unsqueeze(0)}
