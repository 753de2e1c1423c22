"""The recipes' audio components: gpa's speech tokenizer and codec, covo-audio-chat's vocoder.

Each is a transformers model class (save_pretrained / from_pretrained like the LMs), with a tiny
config (same classes, same sample rates, frame rates and code-book sizes; small widths) and a
full-shape config (the published dimensions):

  speech_tokenizer (gpa)  SpeechTokenizer: transformers' WhisperEncoder at the glm-4-voice /
                          whisper-large-v3 shape (128 mel bins, d_model 1280, 32 layers, 20
                          heads, ffn 5120, 1500 positions = 30 s at 50 Hz) -> 4x average pooling
                          to 12.5 Hz -> nearest code of 16,384 (cdist / argmin). Log-mel in,
                          token ids out.
  codec (gpa)             Codec: transformers' DacModel with weight norm on every convolution
                          (DAC's own layout), downsampling 2*4*5*8 = 320 so the decoder upsamples
                          by ConvTranspose1d strides 8/5/4/2 to 16 kHz, snake activations, one
                          vector quantizer of 8,192 codes at 50 Hz (the BiCodec semantic-token
                          rate and code-book), decoder width 1536, latent 1024. 16 kHz waveform
                          in, 50 Hz codes and the reconstructed waveform out.
  vocoder (covo)          transformers' SpeechT5HifiGan (HiFi-GAN generator) at the BigVGAN-v2
                          24 kHz / 100-band / 256x shape: log-mel (100 bins, hop 256) in, 24 kHz
                          waveform out. 112.4M parameters (the published BigVGAN-v2 model of
                          that shape has 112M; its anti-aliased snake activations are replaced
                          by HiFi-GAN's leaky ReLU, which has no parameters).

Why not the `bigvgan` package: its wheel (2.4.1) requires torch, auraloss, nnAudio, pesq (a C
build), tensorboard and ninja, so it does not install cleanly next to a given torch build; the
HiFi-GAN class in transformers is the same generator family (ConvTranspose1d upsampling +
multi-receptive-field residual blocks) and needs nothing new.

Profile real: the GPA release's BiCodec/ and glm-4-voice-tokenizer/ folders and Covo's
token2wav are in their projects' own formats and code, not save_pretrained folders of these
classes. A model directory's audio folder is read only when its config.json names this
module's model_type (a save of these classes, as the tiny cache holds); otherwise the recipe
leaves that component out and says so in its load notes (stage 6 shows it as not loaded).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import (
    AutoConfig,
    AutoModel,
    DacConfig,
    DacModel,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    WhisperConfig,
)
from transformers import initialization as init
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperPreTrainedModel
from transformers.utils import ModelOutput

from helpers import audio

# ---- shapes --------------------------------------------------------------------------------

GLM_VOICE = ("glm-4-voice-tokenizer (GPA upstream pipeline, as published with the GPA release): "
             "whisper-large-v3 encoder dims, 4x average pooling to 12.5 Hz, 16,384 codes")
BICODEC = ("BiCodec (GPA upstream pipeline, as published with the GPA release): 50 Hz semantic tokens from "
           "8,192 codes, decoder x320 (ConvTranspose1d 8/5/4/2) to 16 kHz, snake, weight norm")
BIGVGAN = ("BigVGAN-v2 24 kHz 100-band 256x (NVIDIA BigVGAN release config: upsample rates "
           "4,4,2,2,2,2, kernels 8,8,4,4,4,4, initial channels 1536; model card: 112M parameters)")

TOKENIZER_FULL = dict(num_mel_bins=128, max_source_positions=1500, d_model=1280,
                      encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                      pooling_kernel_size=4, codebook_size=16_384)
# Tiny: the same input window, rates and code-book sizes; widths small enough that the
# bfloat16 forward on a CPU (no native bfloat16 convolution there) stays near 0.1 s.
TOKENIZER_TINY = dict(TOKENIZER_FULL, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                      encoder_ffn_dim=64)
CODEC_FULL = dict(encoder_hidden_size=64, downsampling_ratios=[2, 4, 5, 8],
                  decoder_hidden_size=1536, n_codebooks=1, codebook_size=8192, codebook_dim=8,
                  sampling_rate=16_000)
CODEC_TINY = dict(CODEC_FULL, encoder_hidden_size=2, decoder_hidden_size=16)  # 1 channel out
VOCODER_FULL = dict(model_in_dim=100, sampling_rate=24_000, upsample_initial_channel=1536,
                    upsample_rates=[4, 4, 2, 2, 2, 2], upsample_kernel_sizes=[8, 8, 4, 4, 4, 4],
                    resblock_kernel_sizes=[3, 7, 11],
                    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
                    normalize_before=False)
# Tiny: the same hop (256 = 8*8*4) and rate with three upsampling stages and one residual
# branch instead of six and three: a HiFi-GAN spends its time on the full-rate stages.
VOCODER_TINY = dict(VOCODER_FULL, upsample_initial_channel=32, upsample_rates=[8, 8, 4],
                    upsample_kernel_sizes=[16, 16, 8], resblock_kernel_sizes=[3],
                    resblock_dilation_sizes=[[1, 3, 5]])

# The vocoder's front end: BigVGAN's mel (n_fft 1024, hop 256, 100 slaney bins, magnitude,
# natural log of clamp 1e-5) at 24 kHz.
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
        "Whisper-large-v3 encoder -> 4x avg pool (12.5 Hz) -> nearest of 16,384 codes",
        "glm-4-voice-tokenizer", 16_000, 0, GLM_VOICE),
    "codec": AudioPart(
        "codec", "codec",
        "DAC-style codec: 16 kHz -> 50 Hz codes (8,192) -> ConvTranspose1d x320 -> 16 kHz",
        "BiCodec", 16_000, 16_000, BICODEC),
    "vocoder": AudioPart(
        "vocoder", "vocoder", "HiFi-GAN generator at BigVGAN-v2 shape: 100-band mel -> 24 kHz",
        "vocoder", 24_000, 24_000, BIGVGAN),
}
RECIPE_PARTS: dict[str, tuple[str, ...]] = {
    "gpa": ("speech_tokenizer", "codec"),
    "covo-audio-chat": ("vocoder",),
}


# ---- speech tokenizer ----------------------------------------------------------------------

class SpeechTokenizerConfig(WhisperConfig):
    """A Whisper config plus the tokenizer's pooling and code book (encoder fields only used)."""

    model_type = "gpa_speech_tokenizer"
    pooling_kernel_size: int = 4
    codebook_size: int = 16_384


@dataclass
class SpeechTokenizerOutput(ModelOutput):
    """token_ids [B, N] (N = positions / pooling, 375 per 30 s), pooled [B, N, D] states,
    token_lengths [B] (tokens covering the real audio; all N without an attention mask)."""

    token_ids: torch.LongTensor | None = None
    pooled: torch.FloatTensor | None = None
    token_lengths: torch.LongTensor | None = None


class SpeechTokenizer(WhisperPreTrainedModel):
    """Log-mel [B, 128, 3000] -> Whisper encoder [B, 1500, D] -> avg pool [B, 375, D] -> ids."""

    config: SpeechTokenizerConfig
    config_class = SpeechTokenizerConfig
    main_input_name = "input_features"
    _no_split_modules = ["WhisperEncoderLayer"]

    def __init__(self, config: SpeechTokenizerConfig) -> None:
        super().__init__(config)
        self.encoder = WhisperEncoder(config)
        self.pooling = nn.AvgPool1d(config.pooling_kernel_size)
        self.codebook = nn.Embedding(config.codebook_size, config.d_model)
        self.post_init()

    def forward(self, input_features: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> SpeechTokenizerOutput:
        states = self.encoder(input_features=input_features).last_hidden_state  # [B, T, D]
        pooled = self.pooling(states.transpose(1, 2)).transpose(1, 2)  # [B, N, D]
        # nearest code in float32 at least, whatever the encoder's dtype: cdist has no bfloat16
        # kernel on the CPU, and bfloat16 distances between 16,384 codes would tie
        wide = torch.promote_types(pooled.dtype, torch.float32)
        dist = torch.cdist(pooled.to(wide), self.codebook.weight.to(wide).unsqueeze(0))  # [B, N, K]
        ids = dist.argmin(dim=-1)  # [B, N]
        if attention_mask is None:
            lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
        else:
            lengths = self.token_lengths(attention_mask.sum(dim=-1))
        return SpeechTokenizerOutput(token_ids=ids, pooled=pooled, token_lengths=lengths)

    def token_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Tokens that cover `frames` mel frames: the stride-2 conv, then the pooling."""
        states = (frames - 1) // 2 + 1
        k = self.config.pooling_kernel_size
        return torch.clamp((states + k - 1) // k, max=self.config.max_source_positions // k)


# ---- codec ---------------------------------------------------------------------------------

class CodecConfig(DacConfig):
    """A DAC config; weight_norm keeps DAC's weight-normalized convolutions in the graph."""

    model_type = "gpa_codec"
    weight_norm: bool = True


class Codec(DacModel):
    """DacModel with weight norm (torch parametrizations) on every convolution, as DAC and
    BiCodec build their blocks; the saved tensors are weight_g / weight_v style pairs
    (parametrizations.weight.original0 / original1)."""

    config: CodecConfig
    config_class = CodecConfig

    def __init__(self, config: CodecConfig) -> None:
        super().__init__(config)
        if config.weight_norm:
            self.apply_weight_norm()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # DAC's init writes module.weight, which a parametrization recomputes on every read;
        # initialize the direction v instead and set the gain g = ||v|| (so weight == v)
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and \
                parametrize.is_parametrized(module, "weight"):
            p = module.parametrizations.weight
            direction, gain = p.original1, p.original0
            if isinstance(module, nn.ConvTranspose1d):
                init.kaiming_uniform_(direction, a=math.sqrt(5))  # ConvTranspose1d's own init
            else:
                init.trunc_normal_(direction, std=0.02)
            init.copy_(gain, torch.norm_except_dim(direction, 2, 0))
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        super()._init_weights(module)


# ---- registry ------------------------------------------------------------------------------

AutoConfig.register(SpeechTokenizerConfig.model_type, SpeechTokenizerConfig, exist_ok=True)
AutoModel.register(SpeechTokenizerConfig, SpeechTokenizer, exist_ok=True)
AutoConfig.register(CodecConfig.model_type, CodecConfig, exist_ok=True)
AutoModel.register(CodecConfig, Codec, exist_ok=True)

_CLASSES: dict[str, tuple[type, type]] = {
    "speech_tokenizer": (SpeechTokenizerConfig, SpeechTokenizer),
    "codec": (CodecConfig, Codec),
    "vocoder": (SpeechT5HifiGanConfig, SpeechT5HifiGan),
}
_SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "speech_tokenizer": {"tiny": TOKENIZER_TINY, "full-shape": TOKENIZER_FULL},
    "codec": {"tiny": CODEC_TINY, "full-shape": CODEC_FULL},
    "vocoder": {"tiny": VOCODER_TINY, "full-shape": VOCODER_FULL},
}


def part(name: str) -> AudioPart:
    if name not in PARTS:
        raise KeyError(f"unknown audio component {name!r}; known: {', '.join(PARTS)}")
    return PARTS[name]


def names_for(recipe: str) -> tuple[str, ...]:
    """The audio components a recipe carries (empty for recipes without any)."""
    return RECIPE_PARTS.get(recipe, ())


def config(name: str, profile: str) -> Any:
    """The component's config at profile tiny or full-shape."""
    part(name)
    if profile not in _SHAPES[name]:
        raise ValueError(f"audio component {name} has built-in shapes for "
                         f"{', '.join(_SHAPES[name])}, not {profile!r}")
    cfg_cls = _CLASSES[name][0]
    return cfg_cls(**_SHAPES[name][profile])


def configs(recipe: str, profile: str) -> dict[str, Any]:
    return {n: config(n, profile) for n in names_for(recipe)}


def saved_in(folder: Path, name: str) -> bool:
    """Whether `folder` holds a save_pretrained of this component's class (by model_type)."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == _CLASSES[part(name).name][0].model_type


def read_configs(recipe: Any, root: Path) -> dict[str, Any]:
    """Configs of the recipe's audio components that `root` holds saves of (see saved_in)."""
    return {n: _CLASSES[n][0].from_pretrained(str(recipe.component_dir(root, n)))
            for n in names_for(recipe.name) if saved_in(recipe.component_dir(root, n), n)}


def loader(name: str) -> type:
    """The class whose _from_config / from_pretrained makes the component."""
    part(name)
    return _CLASSES[name][1]


# ---- inputs --------------------------------------------------------------------------------

DEFAULT_FIXTURE = "en_fox"


def module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def tokenizer_inputs(x16k: Any, device: torch.device, dtype: torch.dtype,
                     batch: int = 1) -> dict[str, torch.Tensor]:
    """16 kHz mono audio -> Whisper log-mel of the 30-s window and its frame mask, on device."""
    window = audio.WHISPER_CHUNK_S * audio.WHISPER.sample_rate
    x = torch.as_tensor(x16k, dtype=torch.float32)
    frames = min(x.shape[-1], window) // audio.WHISPER.hop_length
    mel = audio.log_mel(audio.pad_or_trim(x, window), audio.WHISPER, device=device)  # [128, 3000]
    mask = torch.zeros(mel.shape[-1], dtype=torch.long, device=mel.device)
    mask[:frames] = 1
    return {"input_features": mel.to(dtype).unsqueeze(0).repeat(batch, 1, 1),  # [B, 128, 3000]
            "attention_mask": mask.unsqueeze(0).repeat(batch, 1)}  # [B, 3000]


def codec_inputs(x16k: Any, device: torch.device, dtype: torch.dtype,
                 batch: int = 1) -> dict[str, torch.Tensor]:
    """16 kHz mono audio -> input_values [B, 1, T] on device."""
    x = torch.as_tensor(x16k, dtype=torch.float32).to(device)
    return {"input_values": x.to(dtype).reshape(1, 1, -1).repeat(batch, 1, 1)}


def vocoder_inputs(x24k: Any, device: torch.device, dtype: torch.dtype,
                   batch: int = 1) -> dict[str, torch.Tensor]:
    """24 kHz mono audio -> its 100-band log-mel as the vocoder takes it, [B, frames, 100]."""
    mel = audio.log_mel(torch.as_tensor(x24k, dtype=torch.float32), VOCODER_SPEC, device=device)
    return {"spectrogram": mel.T.to(dtype).unsqueeze(0).repeat(batch, 1, 1)}


_INPUTS = {"speech_tokenizer": tokenizer_inputs, "codec": codec_inputs, "vocoder": vocoder_inputs}


def inputs_for(name: str, samples: Any, device: torch.device, dtype: torch.dtype,
               batch: int = 1) -> dict[str, torch.Tensor]:
    """Forward kwargs of a component for mono audio already at part(name).input_rate."""
    return _INPUTS[part(name).name](samples, device, dtype, batch)


def example_inputs(name: str, module: nn.Module, batch: int = 1,
                   fixture: str = DEFAULT_FIXTURE) -> dict[str, torch.Tensor]:
    """Forward kwargs made from a shipped fixture, on the module's device and in its dtype."""
    p = part(name)
    samples = audio.load_fixture(fixture, sr=p.input_rate)
    dev = next(module.parameters()).device
    return inputs_for(name, samples, dev, module_dtype(module), batch)


# ---- running -------------------------------------------------------------------------------

@torch.inference_mode()
def run(name: str, module: nn.Module, inputs: dict[str, torch.Tensor],
        codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One forward; outputs by kind: tokenizer {tokens [B, N], lengths [B], states [B, N, D]
    (the pooled encoder states the codes are chosen from)}, codec {codes
    [B, Q, N], waveform [B, T]}, vocoder {waveform [B, T]}. Tensors stay on the device.

    For the codec, `codes` (e.g. the CPU reference's) are decoded instead of its own, so the
    decoder's numerics are compared on equal input, as when it speaks an LM's tokens.
    """
    kind = part(name).kind
    if kind == "tokenizer":
        out = module(**inputs)
        return {"tokens": out.token_ids, "lengths": out.token_lengths, "states": out.pooled}
    if kind == "codec":
        wave_in = inputs["input_values"]  # [B, 1, T]
        own = module.encode(wave_in).audio_codes  # [B, Q, N]
        use = own if codes is None else codes.to(own.device)
        wave = module.decode(audio_codes=use).audio_values[..., :wave_in.shape[-1]]  # [B, T]
        return {"codes": own, "waveform": wave}
    out = module(**inputs)
    return {"waveform": out if out.dim() == 2 else out.unsqueeze(0)}
