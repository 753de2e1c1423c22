"""BiCodec as GPA uses it (SparkTokenizer / SparkDeTokenizer), read from the release's BiCodec/
folder: config.yaml (section audio_tokenizer) + model.safetensors + wav2vec2-large-xlsr-53/.

Our own implementation of the released architecture, written from these upstream sources
(read, never imported or copied); AutoArk/GPA models/bicodec_tokenizer/ carries the same
modules as SparkAudio/Spark-TTS sparktts/ (the diffs are import paths):

  sparktts/models/bicodec.py                 BiCodec: tokenize (wav2vec2 features -> encoder ->
      quantizer.tokenize; mel of the reference clip -> speaker_encoder.tokenize), detokenize
      (quantizer.detokenize, speaker_encoder.detokenize -> prenet(z_q, d) + d -> decoder);
      the mel (torchaudio MelSpectrogram, power 1, slaney) from mel_params
  sparktts/modules/encoder_decoder/feat_encoder.py, feat_decoder.py   Encoder / Decoder:
      VocosBackbone + SamplingBlock stages (ratio 1: x + x + x), linear projections
  sparktts/modules/blocks/vocos.py           VocosBackbone, ConvNeXtBlock (dwconv k7, LayerNorm
      or AdaLayerNorm eps 1e-6, pwconv1 / GELU / pwconv2, gamma), AdaLayerNorm (scale, shift)
  sparktts/modules/blocks/samper.py          SamplingBlock (LeakyReLU 0.2, grouped
      ConvTranspose1d / Conv1d, repeat / average-pool skips)
  sparktts/modules/encoder_decoder/wave_generator.py, modules/blocks/layers.py   WaveGenerator
      (WNConv1d k7 -> DecoderBlock(snake, WNConvTranspose1d k, stride, padding (k - s) // 2,
      ResidualUnits dilation 1, 3, 9) -> snake -> WNConv1d k7 -> tanh), Snake1d
  sparktts/modules/vq/factorized_vector_quantize.py   1x1 WNConv1d projections, L2-normalized
      nearest code, cluster_size buffer
  sparktts/modules/speaker/speaker_encoder.py, ecapa_tdnn.py, pooling_layers.py,
      perceiver_encoder.py   ECAPA_TDNN_GLOB_c512 (channels 512, 1536 latent, ASTP with global
      context), PerceiverResampler (depth 2, 8 heads of 64, GEGLU feed-forward x4 * 2/3,
      queries joined to the context, RMSNorm), project(latent * token_num -> out_dim)
  sparktts/modules/fsq/residual_fsq.py, finite_scalar_quantization.py   ResidualFSQ / FSQ
      (tanh bound with eps 1e-3, round, quantize in float32, mixed-radix indices)
  AutoArk/GPA models/bicodec_tokenizer/spark_tokenizer.py   the pipeline: volume normalize
      (a file path, as the release's scripts pass: load_audio's audio_volume_normalize, Spark-TTS
      sparktts/utils/audio.py; a tensor: / max|x| * 0.9), reference clip = the clip tiled to
      ref_segment_duration (6 s, a multiple of latent_hop_length 320),
      Wav2Vec2FeatureExtractor (zero mean, unit variance), wav2vec2 hidden states 11, 14, 16
      averaged; dtype float16 on CUDA, else float32 (for wav2vec2; BiCodec is .half() everywhere there)
  AutoArk/GPA models/bicodec_tokenizer/spark_detokenizer.py, base_model.py   SparkDeTokenizer:
      the same model.safetensors, load_state_dict then remove_weight_norm; output cut to
      tokens * 320 samples; float16 autocast on CUDA GPUs that support it, else float32

Weight norm: upstream wraps convolutions in torch.nn.utils.weight_norm (the hook API), so the
released file stores `<conv>.weight_g` / `<conv>.weight_v` (a file with parametrizations names
would load as "unexpected" under upstream's strict=False and not run); here WNConv1d keeps the
same two tensors and computes the weight from them (remove_weight_norm's result, each call).

BiCodec/config.yaml's values (Spark-TTS-0.5B, as several public re-implementations restate
them) are FULL_YAML below; the wav2vec2 shape is facebook/wav2vec2-large-xlsr-53's published
config.json (24 layers, hidden 1024, 16 heads, ffn 4096, conv 512 x 7, stable layer norm).
Both are assumed only for full-shape and tiny; a real folder's files always win.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers import audio
from helpers.errors import ModelLoadError
from helpers.models import release_io as rio

WAV2VEC2_DIR = "wav2vec2-large-xlsr-53"
MIX_LAYERS = (11, 14, 16)  # spark_tokenizer.py extract_wav2vec2_features
LAYOUT = ("BiCodec/: config.yaml (section audio_tokenizer) + model.safetensors + "
          f"{WAV2VEC2_DIR}/ (a transformers Wav2Vec2 folder: config.json, weights, "
          "preprocessor_config.json)")
WHAT = "gpa codec (BiCodec)"
# state the release's file may or may not hold: torchaudio's mel buffers of BiCodec's
# mel_transformer (rebuilt from mel_params), BatchNorm's step counters (unused in eval)
OPTIONAL_STATE = ("mel_transformer.", "num_batches_tracked")

_VOCOS = dict(input_channels=1024, vocos_dim=384, vocos_intermediate_dim=2048,
              vocos_num_layers=12, out_channels=1024)
FULL_YAML: dict[str, Any] = {
    "audio_tokenizer": {
        "mel_params": dict(sample_rate=16_000, n_fft=1024, win_length=640, hop_length=320,
                           mel_fmin=10, mel_fmax=None, num_mels=128),
        "encoder": dict(_VOCOS, sample_ratios=[1, 1]),
        "decoder": dict(input_channel=1024, channels=1536, rates=[8, 5, 4, 2],
                        kernel_sizes=[16, 11, 8, 4]),
        "quantizer": dict(input_dim=1024, codebook_size=8192, codebook_dim=8, commitment=0.25,
                          codebook_loss_weight=2.0, use_l2_normlize=True,
                          threshold_ema_dead_code=0.2),
        "speaker_encoder": dict(input_dim=128, out_dim=1024, latent_dim=128, token_num=32,
                                fsq_levels=[4, 4, 4, 4, 4, 4], fsq_num_quantizers=1),
        "prenet": dict(_VOCOS, condition_dim=1024, sample_ratios=[1, 1],
                       use_tanh_at_final=False),
        "postnet": dict(_VOCOS, vocos_num_layers=6, use_tanh_at_final=False),
    },
    "sample_rate": 16_000, "latent_hop_length": 320, "ref_segment_duration": 6,
    "volume_normalize": True,
}
WAV2VEC2_FULL: dict[str, Any] = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
    conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    feat_extract_activation="gelu", hidden_act="gelu", layer_norm_eps=1e-5,
)


def _tiny_yaml() -> dict[str, Any]:
    """Tiny: the same rates (x320 to 16 kHz, 50 Hz semantic, 32 global tokens), code books and
    module tree; small widths. ECAPA's 512 channels are fixed in upstream's code, not config,
    so the speaker reference is cut from 6 s to 2 s instead (ECAPA's cost is per frame)."""
    y = copy.deepcopy(FULL_YAML)
    y["ref_segment_duration"] = 2
    a = y["audio_tokenizer"]
    vocos = dict(input_channels=32, vocos_dim=16, vocos_intermediate_dim=32, vocos_num_layers=1,
                 out_channels=32)
    a["encoder"].update(vocos)
    a["prenet"].update(vocos, condition_dim=32)
    a["postnet"].update(vocos)
    a["decoder"].update(input_channel=32, channels=32)
    a["quantizer"].update(input_dim=32)
    a["speaker_encoder"].update(out_dim=32, latent_dim=16)
    return y


TINY_YAML = _tiny_yaml()
# 17 layers: hidden states 11, 14 and 16 stay inner layers as in the released 24 (the last
# state is the final layer norm's output, which transformers 4.x and 5.x hand out differently)
WAV2VEC2_TINY: dict[str, Any] = dict(WAV2VEC2_FULL, hidden_size=32, num_hidden_layers=17,
                                     num_attention_heads=2, intermediate_size=64,
                                     conv_dim=[16] * 7)


# ---- config --------------------------------------------------------------------------------

class BiCodecConfig:
    """BiCodec/config.yaml (every key kept) plus its wav2vec2 folder's Wav2Vec2Config."""

    model_type = "bicodec"

    def __init__(self, yaml: dict[str, Any] | None = None, wav2vec2: Any = None) -> None:
        from transformers import Wav2Vec2Config

        self.yaml = copy.deepcopy(yaml if yaml is not None else FULL_YAML)
        self.wav2vec2 = wav2vec2 if wav2vec2 is not None else Wav2Vec2Config(**WAV2VEC2_FULL)

    @property
    def section(self) -> dict[str, Any]:
        return self.yaml["audio_tokenizer"]

    def get(self, key: str, default: Any) -> Any:
        return self.yaml.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"yaml": self.yaml, "wav2vec2": self.wav2vec2.to_dict()}

    @property
    def ref_samples(self) -> int:
        """The speaker reference window: ref_segment_duration s, a multiple of the hop."""
        hop = int(self.get("latent_hop_length", 320))
        return int(self.get("sample_rate", 16_000) * self.get("ref_segment_duration", 6)) \
            // hop * hop

    def mel_spec(self) -> audio.MelSpec:
        m = self.section["mel_params"]
        return audio.bicodec_spec(n_mels=m["num_mels"], n_fft=m["n_fft"],
                                  win_length=m["win_length"], hop_length=m["hop_length"],
                                  f_min=m["mel_fmin"], f_max=m["mel_fmax"],
                                  sample_rate=m["sample_rate"])

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> BiCodecConfig:
        root = Path(folder)
        data = rio.read_yaml(root / "config.yaml", WHAT, f"expected {LAYOUT}")
        _check_yaml(data, root / "config.yaml")
        cfg = cls(data, _read_wav2vec2_config(root / WAV2VEC2_DIR))
        cfg.check_wav2vec2(root / WAV2VEC2_DIR / "config.json")
        return cfg

    def check_wav2vec2(self, path: Path | str) -> None:
        """The wav2vec2 must feed the encoder: hidden_size == encoder.input_channels, and
        deep enough for hidden state 16."""
        w, want = self.wav2vec2, self.section["encoder"]["input_channels"]
        bad = []
        if w.hidden_size != want:
            bad.append(f"hidden_size {w.hidden_size} (BiCodec's encoder.input_channels is "
                       f"{want})")
        if w.num_hidden_layers < max(MIX_LAYERS):
            bad.append(f"num_hidden_layers {w.num_hidden_layers} (hidden states "
                       f"{', '.join(map(str, MIX_LAYERS))} are averaged)")
        if bad:
            raise ModelLoadError(f"{WHAT}: {path} has {' and '.join(bad)}",
                                 f"BiCodec/{WAV2VEC2_DIR} must be the wav2vec2-large-xlsr-53 "
                                 "the release ships with BiCodec")

    def save(self, folder: Path) -> None:
        import yaml
        from transformers import Wav2Vec2FeatureExtractor

        (folder / "config.yaml").write_text(yaml.safe_dump(self.yaml, sort_keys=False),
                                            encoding="utf-8")
        sub = folder / WAV2VEC2_DIR
        sub.mkdir(parents=True, exist_ok=True)
        self.wav2vec2.save_pretrained(str(sub))
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                                 do_normalize=True, return_attention_mask=True
                                 ).save_pretrained(str(sub))


_SECTIONS = {"mel_params": ("sample_rate", "n_fft", "win_length", "hop_length", "mel_fmin",
                            "mel_fmax", "num_mels"),
             "encoder": ("input_channels", "vocos_dim", "vocos_intermediate_dim",
                         "vocos_num_layers", "out_channels"),
             "decoder": ("input_channel", "channels", "rates", "kernel_sizes"),
             "quantizer": ("input_dim", "codebook_size", "codebook_dim"),
             "speaker_encoder": ("input_dim", "out_dim", "latent_dim", "token_num",
                                 "fsq_levels", "fsq_num_quantizers"),
             "prenet": ("input_channels", "vocos_dim", "vocos_intermediate_dim",
                        "vocos_num_layers", "out_channels"),
             "postnet": ("input_channels", "vocos_dim", "vocos_intermediate_dim",
                         "vocos_num_layers", "out_channels")}


def _check_yaml(data: dict[str, Any], path: Path) -> None:
    section = data.get("audio_tokenizer")
    if not isinstance(section, dict):
        raise ModelLoadError(f"{WHAT}: {path} has no audio_tokenizer section",
                             f"expected {LAYOUT}")
    missing = [f"{s}.{k}" for s, keys in _SECTIONS.items() for k in keys
               if not isinstance(section.get(s), dict) or k not in section[s]]
    if missing:
        raise ModelLoadError(f"{WHAT}: {path} audio_tokenizer lacks {', '.join(missing[:6])}",
                             "copy the release's BiCodec/config.yaml again")


def _read_wav2vec2_config(folder: Path) -> Any:
    from transformers import Wav2Vec2Config

    path = folder / "config.json"
    data = rio.read_json(path, f"{WHAT} wav2vec2", f"expected {LAYOUT}")
    if data.get("model_type") != "wav2vec2":
        raise ModelLoadError(f"{WHAT}: {path} says model_type {data.get('model_type')!r}",
                             "expected wav2vec2 (facebook/wav2vec2-large-xlsr-53)")
    rio.read_json(folder / "preprocessor_config.json", f"{WHAT} wav2vec2",
                  "expected the Wav2Vec2FeatureExtractor config next to the weights")
    return Wav2Vec2Config.from_pretrained(str(folder))


# ---- weight-normed convolutions and snake --------------------------------------------------

class WNConv1d(nn.Conv1d):
    """Conv1d whose weight is weight_g * weight_v / ||weight_v|| (torch weight_norm, dim 0)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        v = self.weight.detach()
        del self.weight
        self.weight_g = nn.Parameter(torch.ones(v.shape[0], *([1] * (v.dim() - 1)),
                                                dtype=v.dtype, device=v.device))
        self.weight_v = nn.Parameter(v.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, torch._weight_norm(self.weight_v, self.weight_g, 0),
                                  self.bias)


class WNConvTranspose1d(nn.ConvTranspose1d):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        v = self.weight.detach()
        del self.weight
        self.weight_g = nn.Parameter(torch.ones(v.shape[0], 1, 1, dtype=v.dtype,
                                                device=v.device))
        self.weight_v = nn.Parameter(v.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return F.conv_transpose1d(x, w, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class Snake1d(nn.Module):
    """x + sin^2(alpha x) / (alpha + 1e-9), alpha [1, C, 1] (layers.py)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        pad = (6 * dilation) // 2
        self.block = nn.Sequential(Snake1d(dim), WNConv1d(dim, dim, 7, dilation=dilation,
                                                          padding=pad),
                                   Snake1d(dim), WNConv1d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        return (x[..., crop:-crop] if crop > 0 else x) + y


class DecoderBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim_in),
            WNConvTranspose1d(dim_in, dim_out, kernel, stride=stride,
                              padding=(kernel - stride) // 2),
            ResidualUnit(dim_out, 1), ResidualUnit(dim_out, 3), ResidualUnit(dim_out, 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WaveGenerator(nn.Module):
    """[B, C, N] at 50 Hz -> [B, 1, N * prod(rates)] in [-1, 1]."""

    def __init__(self, input_channel: int, channels: int, rates: list[int],
                 kernel_sizes: list[int], d_out: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(input_channel, channels, 7, padding=3)]
        out = channels
        for i, (k, s) in enumerate(zip(kernel_sizes, rates, strict=True)):
            out = channels // 2 ** (i + 1)
            layers.append(DecoderBlock(channels // 2 ** i, out, k, s))
        layers += [Snake1d(out), WNConv1d(out, d_out, 7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ---- Vocos encoder / decoders -------------------------------------------------------------

class AdaLayerNorm(nn.Module):
    def __init__(self, condition_dim: int, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.scale = nn.Linear(condition_dim, dim)
        self.shift = nn.Linear(condition_dim, dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (self.dim,), eps=self.eps)  # [B, T, C]
        return x * self.scale(cond).unsqueeze(1) + self.shift(cond).unsqueeze(1)


def _norm(dim: int, condition_dim: int | None) -> nn.Module:
    return AdaLayerNorm(condition_dim, dim) if condition_dim else nn.LayerNorm(dim, eps=1e-6)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate_dim: int, scale: float,
                 condition_dim: int | None) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = _norm(dim, condition_dim)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(scale * torch.ones(dim)) if scale > 0 else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)  # [B, T, C]
        y = self.norm(y, cond) if isinstance(self.norm, AdaLayerNorm) else self.norm(y)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.transpose(1, 2)  # [B, C, T]


class VocosBackbone(nn.Module):
    """[B, C_in, T] -> [B, T, dim] (ConvNeXt blocks, final LayerNorm)."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int,
                 condition_dim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, 7, padding=3)
        self.norm = _norm(dim, condition_dim)
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, 1 / num_layers,
                                                    condition_dim) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(x).transpose(1, 2)  # [B, T, C]
        x = self.norm(x, condition) if isinstance(self.norm, AdaLayerNorm) else self.norm(x)
        x = x.transpose(1, 2)
        for block in self.convnext:
            x = block(x, condition)
        return self.final_layer_norm(x.transpose(1, 2))  # [B, T, C]


class SamplingBlock(nn.Module):
    """[B, T, C] -> [B, C, T']: up (repeat + transposed conv) and / or down (conv + pooled
    skips), the three branches summed (ratio 1 in both: 3 x)."""

    def __init__(self, dim: int, groups: int = 1, upsample_scale: int = 1,
                 downsample_scale: int = 1) -> None:
        super().__init__()
        self.up, self.down = upsample_scale, downsample_scale
        if self.up > 1:
            u = self.up
            self.de_conv_upsampler = nn.Sequential(nn.LeakyReLU(0.2), nn.ConvTranspose1d(
                dim, dim, 2 * u, stride=u, padding=u // 2 + u % 2, output_padding=u % 2,
                groups=groups))
        if self.down > 1:
            d = self.down
            self.conv_downsampler = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv1d(
                dim, dim, 2 * d, stride=d, padding=d // 2 + d % 2, groups=groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # [B, C, T]
        repeat = merged = x
        if self.up > 1:
            repeat = x.repeat_interleave(self.up, dim=2)
            merged = repeat + self.de_conv_upsampler(x)
        if self.down <= 1:
            return merged + repeat + merged
        return (self.conv_downsampler(merged) + F.avg_pool1d(repeat, self.down, self.down)
                + F.avg_pool1d(merged, self.down, self.down))


def _stages(dim: int, inter: int, ratios: list[int], up: bool) -> nn.Sequential:
    return nn.Sequential(*(nn.Sequential(
        SamplingBlock(dim, groups=dim, **({"upsample_scale": r} if up else {"downsample_scale": r})),
        VocosBackbone(dim, dim, inter, 2)) for r in ratios))


class FeatEncoder(nn.Module):
    """feat_encoder.py Encoder: [B, C_in, T] -> [B, out, T']."""

    def __init__(self, input_channels: int, vocos_dim: int, vocos_intermediate_dim: int,
                 vocos_num_layers: int, out_channels: int, sample_ratios: list[int] = (1, 1),
                 **_: Any) -> None:
        super().__init__()
        self.encoder = VocosBackbone(input_channels, vocos_dim, vocos_intermediate_dim,
                                     vocos_num_layers)
        self.downsample = _stages(vocos_dim, vocos_intermediate_dim, list(sample_ratios), False)
        self.project = nn.Linear(vocos_dim, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.downsample(self.encoder(x))).transpose(1, 2)


class FeatDecoder(nn.Module):
    """feat_decoder.py Decoder: [B, C_in, T] (+ condition [B, cond]) -> [B, out, T']."""

    def __init__(self, input_channels: int, vocos_dim: int, vocos_intermediate_dim: int,
                 vocos_num_layers: int, out_channels: int, condition_dim: int | None = None,
                 sample_ratios: list[int] = (1, 1), use_tanh_at_final: bool = False,
                 **_: Any) -> None:
        super().__init__()
        self.linear_pre = nn.Linear(input_channels, vocos_dim)
        self.downsample = _stages(vocos_dim, vocos_intermediate_dim, list(sample_ratios), True)
        self.vocos_backbone = VocosBackbone(vocos_dim, vocos_dim, vocos_intermediate_dim,
                                            vocos_num_layers, condition_dim)
        self.linear = nn.Linear(vocos_dim, out_channels)
        self.use_tanh_at_final = use_tanh_at_final

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = self.downsample(self.linear_pre(x.transpose(1, 2))).transpose(1, 2)  # [B, D, T]
        x = self.linear(self.vocos_backbone(x, condition=c)).transpose(1, 2)  # [B, out, T]
        return torch.tanh(x) if self.use_tanh_at_final else x


# ---- semantic quantizer --------------------------------------------------------------------

class FactorizedVectorQuantize(nn.Module):
    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, **_: Any) -> None:
        super().__init__()
        if input_dim != codebook_dim:
            self.in_project: nn.Module = WNConv1d(input_dim, codebook_dim, 1)
            self.out_project: nn.Module = WNConv1d(codebook_dim, input_dim, 1)
        else:
            self.in_project = self.out_project = nn.Identity()
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))

    def tokenize(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, T] -> ids [B, T]: nearest L2-normalized code (largest -distance)."""
        e = self.in_project(z)  # [B, d, T]
        flat = F.normalize(e.transpose(1, 2).reshape(-1, e.shape[1]))  # [B*T, d]
        book = F.normalize(self.codebook.weight)  # [K, d]
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t()
                + book.pow(2).sum(1, keepdim=True).t())  # [B*T, K]
        return (-dist).max(1)[1].view(e.shape[0], e.shape[2])

    def detokenize(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out_project(self.codebook(ids).transpose(1, 2))  # [B, D, T]


# ---- speaker encoder (global tokens) -------------------------------------------------------

class Conv1dReluBn(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=padding)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    def __init__(self, channels: int, kernel: int, padding: int, dilation: int,
                 scale: int) -> None:
        super().__init__()
        self.width, self.scale = channels // scale, scale
        n = scale if scale == 1 else scale - 1
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel, 1, padding,
                                             dilation) for _ in range(n))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.width, 1)
        out, sp = [], parts[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            sp = bn(F.relu(conv(sp if i == 0 else sp + parts[i])))
            out.append(sp)
        if self.scale != 1:
            out.append(parts[len(self.convs)])
        return torch.cat(out, dim=1)


class SEConnect(nn.Module):
    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * w.unsqueeze(2)


class SERes2Block(nn.Module):
    def __init__(self, channels: int, padding: int, dilation: int) -> None:
        super().__init__()
        self.se_res2block = nn.Sequential(
            Conv1dReluBn(channels, channels), Res2Conv1dReluBn(channels, 3, padding, dilation, 8),
            Conv1dReluBn(channels, channels), SEConnect(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_res2block(x)


class ASTP(nn.Module):
    """Attentive statistics pooling with global context (pooling_layers.py)."""

    def __init__(self, in_dim: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.linear1 = nn.Conv1d(in_dim * 3, bottleneck, 1)
        self.linear2 = nn.Conv1d(bottleneck, in_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True).expand_as(x)
        std = torch.sqrt(x.var(dim=-1, keepdim=True) + 1e-7).expand_as(x)
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(torch.cat((x, mean, std), 1)))),
                              dim=2)
        mu = (alpha * x).sum(2)
        sd = torch.sqrt(((alpha * x * x).sum(2) - mu * mu).clamp(min=1e-7))
        return torch.cat([mu, sd], dim=1)


class EcapaTdnn(nn.Module):
    """ECAPA_TDNN_GLOB_c512: mel [B, T, F] -> (x-vector [B, E], latent [B, 1536, T])."""

    def __init__(self, feat_dim: int, embed_dim: int, channels: int = 512) -> None:
        super().__init__()
        self.layer1 = Conv1dReluBn(feat_dim, channels, 5, 2)
        self.layer2 = SERes2Block(channels, 2, 2)
        self.layer3 = SERes2Block(channels, 3, 3)
        self.layer4 = SERes2Block(channels, 4, 4)
        self.conv = nn.Conv1d(channels * 3, 512 * 3, 1)
        self.pool = ASTP(512 * 3)
        self.bn = nn.BatchNorm1d(512 * 3 * 2)
        self.linear = nn.Linear(512 * 3 * 2, embed_dim)

    def latent(self, mel: torch.Tensor) -> torch.Tensor:
        o1 = self.layer1(mel.permute(0, 2, 1))
        o2 = self.layer2(o1)
        o3 = self.layer3(o2)
        o4 = self.layer4(o3)
        return F.relu(self.conv(torch.cat([o2, o3, o4], dim=1)))  # [B, 1536, T]

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lat = self.latent(mel)
        return self.linear(self.bn(self.pool(lat))), lat


class PerceiverAttention(nn.Module):
    """Cross-attention of the latents over [latents ; context] (cross_attn_include_queries)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, heads * dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = torch.cat((x, context), dim=-2)  # [B, Nq + Nc, D]
        q, k, v = (self.to_q(x), *self.to_kv(context).chunk(2, dim=-1))

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)  # [B, H, N, d]

        q, k, v = heads(q), heads(k), heads(v)
        sim = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, H, Nq, N]
        out = sim.softmax(dim=-1) @ v  # [B, H, Nq, d]
        return self.to_out(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class PerceiverResampler(nn.Module):
    """Context [B, T, C_ctx] -> num_latents x dim (depth 2, 8 heads of 64, ff x4)."""

    def __init__(self, dim: int, dim_context: int, num_latents: int, depth: int = 2,
                 ff_mult: int = 4) -> None:
        super().__init__()
        self.proj_context = nn.Linear(dim_context, dim) if dim_context != dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        inner = int(dim * ff_mult * 2 / 3)
        self.layers = nn.ModuleList(nn.ModuleList([
            PerceiverAttention(dim),
            nn.Sequential(nn.Linear(dim, inner * 2), GEGLU(), nn.Linear(inner, dim))])
            for _ in range(depth))
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_context(x)
        lat = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)  # [B, N, D]
        for attn, ff in self.layers:
            lat = attn(lat, x) + lat
            lat = ff(lat) + lat
        return self.norm(lat)


class ResidualFSQ(nn.Module):
    """Residual finite scalar quantization (levels, num_quantizers), channel first.

    FSQ's constant tables (levels, mixed-radix basis, implicit code book, residual scales)
    are computed from `levels` on use instead of kept as buffers: upstream keeps them
    non-persistent, so they are not in the file either way.
    """

    def __init__(self, levels: list[int], num_quantizers: int, dim: int) -> None:
        super().__init__()
        self.levels, self.num_quantizers = list(levels), num_quantizers
        cd = len(levels)
        self.project_in = nn.Linear(dim, cd) if cd != dim else nn.Identity()
        self.project_out = nn.Linear(cd, dim) if cd != dim else nn.Identity()

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        lv = torch.tensor(self.levels, dtype=torch.int32, device=device)
        basis = torch.cumprod(torch.tensor([1, *self.levels[:-1]], device=device), 0,
                              dtype=torch.int32)
        return lv, basis

    def _fsq(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One FSQ layer on [B, N, d]: (codes in [-1, 1] in z's dtype, ids [B, N] int32)."""
        lv, basis = self._tables(z.device)
        orig = z.dtype
        z = z.float() if orig not in (torch.float32, torch.float64) else z
        half_l = (lv - 1) * (1 + 1e-3) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        shift = (offset / half_l).atanh()
        bounded = (z + shift).tanh() * half_l - offset
        half_w = lv // 2
        codes = bounded.round() / half_w
        ids = ((codes * half_w + half_w) * basis).sum(dim=-1).to(torch.int32)
        return codes.to(orig), ids

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, D, N] -> (quantized [B, D, N], ids [B, Q, N])."""
        h = self.project_in(x.transpose(1, 2))  # [B, N, d]
        out, residual, all_ids = 0.0, h, []
        base = torch.tensor(self.levels, dtype=h.dtype, device=x.device) - 1  # [d]
        for q in range(self.num_quantizers):
            scale = base ** -q
            codes, ids = self._fsq(residual / scale)
            codes = codes * scale
            residual = residual - codes
            out = out + codes
            all_ids.append(ids)
        return self.project_out(out).transpose(1, 2), torch.stack(all_ids, dim=1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, Q, N] -> [B, N, D] (the summed, scaled codes, projected out)."""
        lv, basis = self._tables(ids.device)
        base = lv.float() - 1
        out = 0.0
        for q in range(ids.shape[1]):
            level = (ids[:, q, :, None].long() // basis) % lv  # [B, N, d]
            half_w = lv // 2
            out = out + (level - half_w) / half_w * base ** -q
        return self.project_out(out.to(self.project_out_dtype()))

    def project_out_dtype(self) -> torch.dtype:
        p = next(self.project_out.parameters(), None)
        return p.dtype if p is not None else torch.float32


class SpeakerEncoder(nn.Module):
    """mel [B, T, F] -> 32 global ids [B, 1, 32]; ids -> d-vector [B, out_dim]."""

    def __init__(self, input_dim: int, out_dim: int, latent_dim: int, token_num: int,
                 fsq_levels: list[int], fsq_num_quantizers: int, **_: Any) -> None:
        super().__init__()
        self.speaker_encoder = EcapaTdnn(input_dim, out_dim)
        self.perceiver_sampler = PerceiverResampler(latent_dim, 512 * 3, token_num)
        self.quantizer = ResidualFSQ(fsq_levels, fsq_num_quantizers, latent_dim)
        self.project = nn.Linear(latent_dim * token_num, out_dim)

    def tokenize(self, mel: torch.Tensor) -> torch.Tensor:
        lat = self.speaker_encoder.latent(mel)  # [B, 1536, T]
        x = self.perceiver_sampler(lat.transpose(1, 2)).transpose(1, 2)  # [B, D, 32]
        return self.quantizer(x)[1]  # [B, Q, 32]

    def detokenize(self, ids: torch.Tensor) -> torch.Tensor:
        z = self.quantizer.decode(ids).transpose(1, 2)  # [B, D, 32]
        return self.project(z.reshape(z.shape[0], -1))  # [B, out_dim]


class BiCodec(nn.Module):
    """The tensors of BiCodec/model.safetensors: encoder, quantizer, speaker_encoder, prenet,
    postnet (training only; kept so the file loads strictly), decoder (WaveGenerator)."""

    def __init__(self, section: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = FeatEncoder(**section["encoder"])
        self.decoder = WaveGenerator(**{k: section["decoder"][k] for k in
                                        ("input_channel", "channels", "rates", "kernel_sizes")})
        self.quantizer = FactorizedVectorQuantize(**section["quantizer"])
        self.speaker_encoder = SpeakerEncoder(**section["speaker_encoder"])
        self.prenet = FeatDecoder(**section["prenet"])
        self.postnet = FeatDecoder(**section["postnet"])

    def tokenize(self, feat: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav2vec2 features [B, T, C] and reference mel [B, F, Tm] -> (semantic [B, T],
        global [B, 1, 32])."""
        semantic = self.quantizer.tokenize(self.encoder(feat.transpose(1, 2)))
        return semantic, self.speaker_encoder.tokenize(mel.transpose(1, 2))

    def detokenize(self, semantic: torch.Tensor, global_ids: torch.Tensor) -> torch.Tensor:
        """-> waveform [B, 1, T * 320]."""
        z_q = self.quantizer.detokenize(semantic)  # [B, D, T]
        d = self.speaker_encoder.detokenize(global_ids)  # [B, out]
        x = self.prenet(z_q, d) + d.unsqueeze(-1)
        return self.decoder(x)


# ---- the component: wav2vec2 + BiCodec -----------------------------------------------------

class BiCodecCodec(rio.ReleaseModule):
    """GPA's codec: SparkTokenizer (wav2vec2-large-xlsr-53 features + BiCodec.tokenize) and
    SparkDeTokenizer (BiCodec.detokenize) over one BiCodec/ folder."""

    config_class = BiCodecConfig
    main_input_name = "input_values"

    def __init__(self, config: BiCodecConfig) -> None:
        from transformers import Wav2Vec2Model

        super().__init__(config)
        cfg = copy.deepcopy(config.wav2vec2)
        cfg._attn_implementation = "eager"  # spark_tokenizer.py attn_implementation="eager"
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.bicodec = BiCodec(config.section)
        self._follow_default_device()

    def _follow_default_device(self) -> None:
        """Wav2Vec2Model makes masked_spec_embed with torch.Tensor(), which ignores a default
        device: under a meta skeleton it would be the one tensor with storage."""
        spec = getattr(self.wav2vec2, "masked_spec_embed", None)
        here = self.bicodec.encoder.project.weight.device
        if isinstance(spec, nn.Parameter) and spec.device != here:
            self.wav2vec2.masked_spec_embed = nn.Parameter(torch.empty_like(spec, device=here))

    # ---- weights --------------------------------------------------------------------------
    def read_weights(self, folder: Path) -> None:
        path = folder / "model.safetensors"
        found = rio.read_tensors(path, WHAT)
        expected = self.bicodec.state_dict()
        rio.check_state(expected, found, path, WHAT, OPTIONAL_STATE)
        self.bicodec.load_state_dict({k: v for k, v in found.items() if k in expected},
                                     strict=False)
        self.wav2vec2 = read_wav2vec2(folder / WAV2VEC2_DIR, self.config.wav2vec2)

    def write_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.bicodec.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        self.wav2vec2.save_pretrained(str(folder / WAV2VEC2_DIR))

    # ---- running ---------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.bicodec.encoder.project.weight.dtype

    def features(self, input_values: torch.Tensor) -> torch.Tensor:
        """Normalized 16 kHz audio [B, T] -> mean of wav2vec2 hidden states 11, 14, 16."""
        out = self.wav2vec2(input_values.to(self.dtype), output_hidden_states=True)
        hs = out.hidden_states
        return (hs[MIX_LAYERS[0]] + hs[MIX_LAYERS[1]] + hs[MIX_LAYERS[2]]) / 3  # [B, T', C]

    def ref_mel(self, ref_wav: torch.Tensor) -> torch.Tensor:
        """[B, R] -> BiCodec's linear mel [B, F, frames] (STFT in float32, then the dtype)."""
        return audio.log_mel(ref_wav, self.config.mel_spec()).to(self.dtype)

    def tokenize(self, input_values: torch.Tensor,
                 ref_wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bicodec.tokenize(self.features(input_values), self.ref_mel(ref_wav))

    def detokenize(self, semantic: torch.Tensor, global_ids: torch.Tensor) -> torch.Tensor:
        return self.bicodec.detokenize(semantic, global_ids)

    def forward(self, input_values: torch.Tensor, ref_wav: torch.Tensor) -> dict[str, Any]:
        """Tokenize then detokenize (one codec round trip, as a codec's forward is timed):
        {semantic_tokens [B, N], global_tokens [B, 1, 32], waveform [B, 1, N * 320]}."""
        semantic, global_ids = self.tokenize(input_values, ref_wav)
        return {"semantic_tokens": semantic, "global_tokens": global_ids,
                "waveform": self.detokenize(semantic, global_ids)}

    @torch.no_grad()
    def reset_parameters_(self) -> None:
        """Random weights: PyTorch's layer inits (a normal(0, 0.02) draw leaves the global
        branch all zeros: FSQ rounds the near-zero latents to its zero code), the constants
        upstream starts from where it sets them (layer scale 1 / num_layers, snake alpha 1,
        RMSNorm gain 1)."""
        rio.random_init(self)
        rio.torch_default_init(self.bicodec)
        for m in self.modules():
            if isinstance(m, VocosBackbone):
                for block in m.convnext:
                    if block.gamma is not None:
                        block.gamma.fill_(1.0 / len(m.convnext))
            elif isinstance(m, Snake1d):
                m.alpha.fill_(1.0)
            elif isinstance(m, RMSNorm):
                m.gamma.fill_(1.0)


def read_wav2vec2(folder: Path, config: Any) -> nn.Module:
    """transformers' Wav2Vec2Model from the release's folder: no tensor missing or
    mis-shaped; unexpected ones only of the pretraining heads (a Wav2Vec2ForPreTraining save,
    as facebook/wav2vec2-large-xlsr-53 is)."""
    from transformers import Wav2Vec2Model

    cfg = copy.deepcopy(config)
    try:
        model, info = Wav2Vec2Model.from_pretrained(str(folder), config=cfg,
                                                    attn_implementation="eager",
                                                    output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{WHAT}: cannot read the wav2vec2 weights in {folder}: "
                             f"{type(exc).__name__}: {exc}", f"expected {LAYOUT}") from exc
    heads = ("quantizer.", "project_q.", "project_hid.", "lm_head.")
    unexpected = [k for k in info.get("unexpected_keys") or []
                  if not k.removeprefix("wav2vec2.").startswith(heads)]
    bad = sorted(info.get("missing_keys") or []) + sorted(map(str, info.get("mismatched_keys")
                                                                or [])) + sorted(unexpected)
    if bad:
        raise ModelLoadError(f"{WHAT}: the wav2vec2 weights in {folder} do not match its "
                             f"config.json ({len(bad)} tensor(s) missing, mis-shaped or unknown, "
                             f"e.g. {', '.join(bad[:4])})",
                             f"copy BiCodec/{WAV2VEC2_DIR} from the release again")
    return model.eval()


# ---- inputs (what SparkTokenizer hands the model) ------------------------------------------

def volume_normalize(x: np.ndarray, coeff: float = 0.2) -> np.ndarray:
    """Spark-TTS's audio_volume_normalize (SparkAudio/Spark-TTS sparktts/utils/audio.py, the
    same in AutoArk/GPA models/bicodec_tokenizer/utils/audio.py), in float64: a clip peaking
    under 0.1 is first raised to peak 0.1 (dividing by at least 1e-3); then the mean of the
    90th-99th percentile of the ORIGINAL |x| above 0.01 is brought to `coeff`, the gain kept
    in [0.1, 10]; a peak over 1 is scaled back to 1. Ten or fewer samples above 0.01: only
    the first step."""
    x = np.asarray(x, dtype=np.float64)
    level = np.sort(np.abs(x))  # [T], of the input as given (upstream never re-sorts)
    if level[-1] < 0.1:
        x = x / max(level[-1], 1e-3) * 0.1
    level = level[level > 0.01]
    n = level.shape[0]
    if n <= 10:
        return x
    volume = np.mean(level[int(0.9 * n): int(0.99 * n)])
    x = x * np.clip(coeff / volume, 0.1, 10)
    peak = np.max(np.abs(x))
    return x / peak if peak > 1 else x


def prepare(x16k: Any, cfg: BiCodecConfig) -> tuple[np.ndarray, np.ndarray]:
    """(wav, reference clip) as SparkTokenizer.process_audio makes them from a file path
    (load_audio with volume_normalize from config.yaml, default on): `volume_normalize`, then
    the reference tiled to ref_samples. (Its tensor path scales to peak 0.9 instead; the
    release's scripts pass paths.)"""
    wav = np.asarray(x16k, dtype=np.float32)
    if cfg.get("volume_normalize", True) and wav.size:
        wav = volume_normalize(wav)
    n = cfg.ref_samples
    ref = np.tile(wav, n // len(wav) + 1) if n > len(wav) else wav
    return wav.astype(np.float32), ref[:n].astype(np.float32)


def zero_mean_unit_var(x: np.ndarray) -> np.ndarray:
    """Wav2Vec2FeatureExtractor's do_normalize: (x - mean) / sqrt(var + 1e-7), float32."""
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)


def inputs(x16k: Any, cfg: BiCodecConfig, device: torch.device, dtype: torch.dtype,
           batch: int = 1) -> dict[str, torch.Tensor]:
    """{input_values [B, T] (normalized for wav2vec2), ref_wav [B, R] (float32: the mel's
    STFT runs in float32)}."""
    wav, ref = prepare(x16k, cfg)
    values = torch.from_numpy(zero_mean_unit_var(wav)).to(device)
    return {"input_values": values.to(dtype).unsqueeze(0).repeat(batch, 1),
            "ref_wav": torch.from_numpy(ref).to(device).unsqueeze(0).repeat(batch, 1)}


def semantic_tokens_for(n_samples: int, cfg: BiCodecConfig) -> int:
    """wav2vec2 frames (hence semantic tokens) for n_samples: its conv stack's output length."""
    n = n_samples
    for k, s in zip(cfg.wav2vec2.conv_kernel, cfg.wav2vec2.conv_stride, strict=True):
        n = (n - k) // s + 1
    return int(n)
