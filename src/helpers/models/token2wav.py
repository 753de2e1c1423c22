"""Covo-Audio-Chat's token2wav: audio tokens -> flow-matching DiT latents -> BigVGAN-style
flow-VAE decoder -> 24 kHz waveform. Our own code, state-dict compatible with the release's
checkpoint (keys token2latent.* and wavegan.*, weight norm as weight_g / weight_v).

Facts from the release (GitHub Tencent/Covo-Audio, token2wav/), file next to each:
  layout      token2wav/config.json (json5 in the release; plain JSON here), a torch checkpoint
              (model.pt; its state dict, under "model" when saved with one, "module." prefixes
              dropped), global_mean_var.npy next to it, prompt/{prompt_token, prompt_latent,
              speaker_embed}.npy  (decode.py, utils/util.py load_ckpt, example.sh)
  decoder     Token2WavDecoder: latents = mean + z * sqrt(var) (global_mean_var.npy chunked in
              two), the prompt's latents replace the first frames, the prompt's frames are cut,
              then wavegan.inference_from_latents(do_sample=False)  (models/audio_decoder.py)
  token2latent  Token2latentFlowMatchingWithEmbed: token_embedding (16,384 x token_input_dim,
              id -1 = padding -> zeros), token_proj = Linear(token_input_dim, D) ->
              ConvTranspose1d(D, D, kernel 2u, stride u, padding u/2) (u = upsample_factor 4),
              cond_proj Linear(D + spkr, D) of [time embedding, speaker embedding],
              transformer_input_proj Linear(D + 2 z, D) of [tokens, latent condition, x_t],
              conv_embed (Conv1d(D, D, 31, groups 16, padding 15) -> GELU, added), blocks,
              output_layer  (models/token2latent.py)
  time        TimestepEmbedder: 256 sinusoid features [cos, sin], max period 10000 -> Linear ->
              SiLU -> Linear  (modules/dit/modules.py)
  blocks      TransformerBlock with modulation: LayerNorm without affine (eps 1e-6), SiLU ->
              Linear(D, 6D) giving shift/scale/gate for attention and FFN, x * (1 + scale) +
              shift  (modules/attentions/modules.py); attention: q/k/v_proj without bias,
              o_proj with bias, rotary on every head (theta 50000, halves rotated) and SDPA
              (modules/attentions/multihead_attention.py, utils.py); Mlp fc1 -> GELU(tanh) -> fc2
  output      FinalLayer: SiLU -> Linear(D, 2D) for shift/scale, LayerNorm without affine,
              Linear(D, z)  (modules/dit/modules.py)
  sampling    noise -> odeint(midpoint) over linspace(0, 1, s_steps); with cfg_alpha the
              velocity is v_c + alpha (v_c - v_u), v_u with the tokens zeroed; inference
              settings s_steps 10, cfg_alpha 1.0 (config.json "inference"; models/token2latent.py)
  wavegan     BigVGANFlowVAE decoder: conv_pre Conv1d(z, C0, 7, padding 3), ups[i][0] causal
              ConvTranspose1d (kernel 2u, the last u samples dropped), 3 AMPBlock1 per stage
              (convs1 dilations 1/3/5 and convs2, all causal (left padding), weight norm,
              SnakeBeta with log-scale alpha/beta inside Activation1d: 2x up, act, 2x down with
              kaiser-sinc filters of 12 taps), averaged; activation_post, causal conv_post
              Conv1d(C, 1, 7), tanh  (models/latent2wav.py, modules/bigvgan/)
Full-shape values: config.json of the release (12 layers, hidden 1024, 16 heads, ffn 4096,
token_input_dim 512, z 64, speaker 1024, upsample 5,3,2,2,2,2 = 240 samples per latent at
24 kHz, i.e. 100 Hz latents and 25 Hz tokens, initial channels 1536; the config's data.hop_size
480 is not used by decoding; Token2WavDecoder's hop is prod(downsample_rates) = 240).

The sampling noise: the release draws it from the global RNG; here it comes from a CPU
generator seeded with `noise_seed`, so a device and the CPU decode the same trajectory.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.errors import ModelLoadError
from helpers.records import write_json

SAMPLE_RATE = 24_000
CHECKPOINT = "model.pt"
MEAN_VAR = "global_mean_var.npy"
PROMPT_DIR = "prompt"
PROMPT_FILES = ("prompt_token.npy", "prompt_latent.npy", "speaker_embed.npy")
RANDOM_INIT = "normal 0.02, weight-norm gain 0.5"  # in the tiny cache's fingerprint
TOKEN_RATE_HZ = 25.0  # 100 Hz latents (240 samples at 24 kHz) / upsample_factor 4

# token2wav/config.json of the release
RELEASE_CONFIG: dict[str, Any] = {
    "data": {"audio": {"sample_rate": 24000, "hop_size": 480}},
    "model": {
        "type": "Token2WavDecoder",
        "token2latent": {
            "upsample_factor": 4, "token_vocab_size": 16384, "token_input_dim": 512,
            "z_dim": 64, "spkr_embed_dim": 1024, "spkr_mask_ratio": 0.0, "bert_mask_rate0": 0.7,
            "bert_mask_rate1": 1.0, "random_maskrate": 0.3, "cfg_dropout": 0.2, "sigma": 1e-05,
            "transformer": {"num_layers": 12, "hidden_size": 1024, "ffn_hidden_size": 4096,
                            "num_heads": 16, "modulation": True, "alibi_bias": False,
                            "rotary_bias": True, "qk_norm": False,
                            "max_position_embeddings": 4096, "attn_dropout": 0.0,
                            "dropout": 0.1}},
        "wav_input_sr": 24000, "n_speakers": 1, "n_styles": 1,
        "wavegan": {
            "type": "BigVGANFlowVAE", "upsample_rates": [5, 3, 2, 2, 2, 2],
            "upsample_kernel_sizes": [10, 6, 4, 4, 4, 4], "upsample_initial_channel": 1536,
            "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "downsample_rates": [2, 2, 2, 2, 3, 5], "activation": "snakebeta",
            "downsample_channels": [12, 24, 48, 96, 192, 384, 768], "snake_logscale": True,
            "latent_dim": 64, "use_flow": True, "use_vae": True, "kl_weight": 5, "causal": True,
            "flow_hidden_channels": 256}},
    "inference": {"s_steps": 10, "cfg_alpha": 1.0, "dynamic_thr": False,
                  "rescale_logits": False},
}


@dataclass
class Token2WavConfig:
    """The fields of token2wav/config.json this decoder uses (the rest is kept as read)."""

    upsample_factor: int = 4
    token_vocab_size: int = 16_384
    token_input_dim: int = 512
    z_dim: int = 64
    spkr_embed_dim: int = 1024
    num_layers: int = 12
    hidden_size: int = 1024
    ffn_hidden_size: int = 4096
    num_heads: int = 16
    rotary_theta: float = 50_000.0  # RotaryEmbedding default (multihead_attention.py)
    upsample_rates: list[int] = field(default_factory=lambda: [5, 3, 2, 2, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [10, 6, 4, 4, 4, 4])
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    sample_rate: int = SAMPLE_RATE
    s_steps: int = 10
    cfg_alpha: float | None = 1.0
    noise_seed: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def hop(self) -> int:
        return math.prod(self.upsample_rates)

    def to_dict(self) -> dict[str, Any]:
        """The fields and the config.json they write (the tiny cache's fingerprint reads it)."""
        return {**{k: v for k, v in asdict(self).items() if k != "raw"},
                "release_config": self.to_release(), "random_init": RANDOM_INIT}

    @classmethod
    def from_release(cls, data: dict[str, Any]) -> Token2WavConfig:
        """From the release's config.json layout (data / model / inference sections)."""
        m = data["model"]
        t2l, tr, wg = m["token2latent"], m["token2latent"]["transformer"], m["wavegan"]
        unsupported = {k: v for k, v in (("alibi_bias", tr.get("alibi_bias", False)),
                                         ("qk_norm", tr.get("qk_norm", False)),
                                         ("rotary_bias", not tr.get("rotary_bias", True)),
                                         ("modulation", not tr.get("modulation", True)),
                                         ("causal", not wg.get("causal", True))) if v}
        if unsupported or wg.get("resblock", "1") != "1" or wg.get("activation") != "snakebeta":
            raise ModelLoadError(
                f"token2wav/config.json asks for options this decoder does not implement "
                f"({unsupported or wg.get('resblock')}, activation {wg.get('activation')})",
                "it implements the released settings: rotary, modulation, causal AMPBlock1, "
                "snakebeta")
        inf = data.get("inference", {})
        return cls(upsample_factor=t2l["upsample_factor"],
                   token_vocab_size=t2l["token_vocab_size"],
                   token_input_dim=t2l.get("token_input_dim", tr["hidden_size"]),
                   z_dim=t2l["z_dim"], spkr_embed_dim=t2l.get("spkr_embed_dim", 512),
                   num_layers=tr["num_layers"], hidden_size=tr["hidden_size"],
                   ffn_hidden_size=tr.get("ffn_hidden_size", 4096), num_heads=tr["num_heads"],
                   upsample_rates=list(wg["upsample_rates"]),
                   upsample_kernel_sizes=list(wg["upsample_kernel_sizes"]),
                   upsample_initial_channel=wg["upsample_initial_channel"],
                   resblock_kernel_sizes=list(wg["resblock_kernel_sizes"]),
                   resblock_dilation_sizes=[list(d) for d in wg["resblock_dilation_sizes"]],
                   sample_rate=data.get("data", {}).get("audio", {}).get("sample_rate",
                                                                         SAMPLE_RATE),
                   s_steps=inf.get("s_steps", 10), cfg_alpha=inf.get("cfg_alpha", 2.0),
                   raw=data)

    def to_release(self) -> dict[str, Any]:
        """This config in the release's config.json layout."""
        out = copy.deepcopy(self.raw or RELEASE_CONFIG)
        t2l, wg = out["model"]["token2latent"], out["model"]["wavegan"]
        t2l.update(upsample_factor=self.upsample_factor, token_vocab_size=self.token_vocab_size,
                   token_input_dim=self.token_input_dim, z_dim=self.z_dim,
                   spkr_embed_dim=self.spkr_embed_dim)
        t2l["transformer"].update(num_layers=self.num_layers, hidden_size=self.hidden_size,
                                  ffn_hidden_size=self.ffn_hidden_size, num_heads=self.num_heads)
        wg.update(upsample_rates=self.upsample_rates, latent_dim=self.z_dim,
                  upsample_kernel_sizes=self.upsample_kernel_sizes,
                  upsample_initial_channel=self.upsample_initial_channel,
                  resblock_kernel_sizes=self.resblock_kernel_sizes,
                  resblock_dilation_sizes=self.resblock_dilation_sizes)
        out["data"]["audio"]["sample_rate"] = self.sample_rate
        out["inference"].update(s_steps=self.s_steps, cfg_alpha=self.cfg_alpha)
        return out

    @classmethod
    def from_pretrained(cls, folder: str | Path, **_: Any) -> Token2WavConfig:
        """token2wav/config.json, or the release's values when the folder has none."""
        path = Path(folder) / "config.json"
        if not path.is_file():
            return cls.from_release(RELEASE_CONFIG)
        try:
            return cls.from_release(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"token2wav: cannot read {path}: {type(exc).__name__}: {exc}",
                                 "it must be the release's token2wav/config.json (plain JSON: "
                                 "remove json5 comments)") from exc


# ---- building blocks ------------------------------------------------------------------------

def _wn_norm(v: torch.Tensor) -> torch.Tensor:
    """||v|| over every dim but 0, shaped to broadcast (torch.nn.utils.weight_norm, dim 0)."""
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


class WNConv1d(nn.Module):
    """Weight-normalized Conv1d (weight_g, weight_v, bias); causal = left padding only."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1,
                 causal: bool = False) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(c_out, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(c_out, c_in, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.dilation = dilation
        span = dilation * (kernel - 1)
        self.pad = (span, 0) if causal else (span // 2, span // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_g * self.weight_v / _wn_norm(self.weight_v)
        return F.conv1d(F.pad(x, self.pad), w, self.bias, dilation=self.dilation)  # [B, C', T]


class WNCausalConvTranspose1d(nn.Module):
    """Weight-normalized ConvTranspose1d, kernel 2 u, stride u, the last u samples dropped."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(c_in, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(c_in, c_out, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_g * self.weight_v / _wn_norm(self.weight_v)
        y = F.conv_transpose1d(x, w, self.bias, stride=self.stride)  # [B, C', (T + 1) u]
        return y[..., :-self.stride]  # [B, C', T u]


def kaiser_sinc(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """[1, 1, taps] low-pass: kaiser-windowed sinc, unit DC gain (Kaiser's beta formula)."""
    half = taps // 2
    atten = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    beta = (0.1102 * (atten - 8.7) if atten > 50 else
            0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21) if atten >= 21 else 0.0)
    window = torch.kaiser_window(taps, periodic=False, beta=beta)
    t = torch.arange(-half, half) + 0.5 if taps % 2 == 0 else torch.arange(taps) - half
    h = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (h / h.sum()).view(1, 1, taps)


class UpSample1d(nn.Module):
    """2x: replicate-pad, zero-stuffing transposed conv with the low-pass (x ratio), trim."""

    def __init__(self, ratio: int = 2, taps: int = 12) -> None:
        super().__init__()
        self.ratio, self.pad = ratio, taps // ratio - 1
        self.cut_left = self.pad * ratio + (taps - ratio) // 2
        self.cut_right = self.pad * ratio + (taps - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc(0.5 / ratio, 0.6 / ratio, taps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        y = self.ratio * F.conv_transpose1d(x, self.filter.expand(c, -1, -1), stride=self.ratio,
                                            groups=c)
        return y[..., self.cut_left:-self.cut_right]  # [B, C, ratio T]


class LowPass1d(nn.Module):
    """The down-sampler's filter: replicate-pad (taps/2 - 1, taps/2), strided depthwise conv."""

    def __init__(self, ratio: int = 2, taps: int = 12) -> None:
        super().__init__()
        self.stride = ratio
        self.pad = (taps // 2 - int(taps % 2 == 0), taps // 2)
        self.register_buffer("filter", kaiser_sinc(0.5 / ratio, 0.6 / ratio, taps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, self.pad, mode="replicate")
        return F.conv1d(x, self.filter.expand(c, -1, -1), stride=self.stride, groups=c)


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, taps: int = 12) -> None:
        super().__init__()
        self.lowpass = LowPass1d(ratio, taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin^2(x e^alpha) / (e^beta + 1e-9), per channel (log-scale parameters)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.exp()[None, :, None]  # [1, C, 1]
        b = self.beta.exp()[None, :, None]
        return x + torch.sin(x * a).pow(2) / (b + 1e-9)


class Activation1d(nn.Module):
    """Anti-aliased activation: 2x up, SnakeBeta, 2x down."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d()
        self.downsample = DownSample1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


class AMPBlock1(nn.Module):
    """Three (act, dilated causal conv, act, causal conv) residual units."""

    def __init__(self, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(WNConv1d(channels, channels, kernel, d, causal=True)
                                    for d in dilations)
        self.convs2 = nn.ModuleList(WNConv1d(channels, channels, kernel, 1, causal=True)
                                    for _ in dilations)
        self.activations = nn.ModuleList(Activation1d(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.activations
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            x = x + c2(acts[2 * i + 1](c1(acts[2 * i](x))))
        return x


class FlowVAEDecoder(nn.Module):
    """Latents [B, z, N] -> waveform [B, 1, N * hop] (the release's BigVGANFlowVAE decoder)."""

    def __init__(self, cfg: Token2WavConfig) -> None:
        super().__init__()
        c0 = cfg.upsample_initial_channel
        self.conv_pre = WNConv1d(cfg.z_dim, c0, 7)
        self.ups = nn.ModuleList(
            nn.ModuleList([WNCausalConvTranspose1d(c0 // 2 ** i, c0 // 2 ** (i + 1), k, u)])
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes,
                                           strict=True)))
        self.kernels = len(cfg.resblock_kernel_sizes)
        self.resblocks = nn.ModuleList(
            AMPBlock1(c0 // 2 ** (i + 1), k, d) for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True))
        last = c0 // 2 ** len(self.ups)
        self.activation_post = Activation1d(last)
        self.conv_post = WNConv1d(last, 1, 7, causal=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(z)  # [B, C0, N]
        for i, up in enumerate(self.ups):
            x = up[0](x)  # [B, C_i, N * prod(u[:i+1])]
            blocks = self.resblocks[i * self.kernels:(i + 1) * self.kernels]
            x = sum(b(x) for b in blocks) / self.kernels
        return torch.tanh(self.conv_post(self.activation_post(x)))  # [B, 1, T]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, theta: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim))

    def forward(self, n: int) -> torch.Tensor:
        t = torch.arange(n, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        freqs = t[:, None] * self.inv_freq[None, :]  # [N, d/2]
        return torch.cat((freqs, freqs), dim=-1)  # [N, d]


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions on q and k."""

    def __init__(self, dim: int, heads: int, theta: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim)
        self.rotary = RotaryEmbedding(dim // heads, theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2)  # [B, h, N, d/h]
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        pos = self.rotary(n).float()  # [N, d/h]
        cos, sin = pos.cos(), pos.sin()
        q, k = ((t.float() * cos + rotate_half(t.float()) * sin).to(v.dtype) for t in (q, k))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, N, d/h]
        return self.o_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # [B, N, D]


class DiTBlock(nn.Module):
    """Attention and FFN, each modulated (shift, scale, gate) by the condition c [B, D]."""

    def __init__(self, cfg: Token2WavConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.num_heads, cfg.rotary_theta)
        self.ffn = Mlp(d, cfg.ffn_hidden_size)
        self.modulation_layer = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sa, ca, ga, sf, cf, gf = self.modulation_layer(c).chunk(6, dim=1)  # 6 x [B, D]
        x = x + ga[:, None] * self.attn(modulate(self.norm1(x), sa, ca))
        return x + gf[:, None] * self.ffn(modulate(self.norm2(x), sf, cf))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs.to(t.device)[None]  # [B, half]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, freq_dim]
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # [B, D]


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))  # [B, N, z]


class ConvPositionEmbed(nn.Module):
    def __init__(self, dim: int, kernel: int = 31, groups: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, groups=groups, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)  # [B, N, D]


class Token2Latent(nn.Module):
    """The flow-matching DiT: velocity of the latents given tokens, prompt latents, time."""

    def __init__(self, cfg: Token2WavConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.z_dim = cfg.z_dim
        self.token_embedding = nn.Embedding(cfg.token_vocab_size, cfg.token_input_dim)
        self.token_proj = nn.Sequential(nn.Linear(cfg.token_input_dim, d),
                                        nn.ConvTranspose1d(d, d, 2 * cfg.upsample_factor,
                                                           stride=cfg.upsample_factor,
                                                           padding=cfg.upsample_factor // 2))
        self.cond_proj = nn.Linear(d + cfg.spkr_embed_dim, d)
        self.transformer_input_proj = nn.Linear(d + 2 * cfg.z_dim, d)
        self.time_embedder = TimestepEmbedder(d)
        self.conv_embed = ConvPositionEmbed(d)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.output_layer = FinalLayer(d, cfg.z_dim)

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, N] ids (-1 = padding) -> [B, u N, D] upsampled token features."""
        pad = ids == -1
        x = self.token_embedding(ids.masked_fill(pad, 0)).masked_fill(pad[..., None], 0.0)
        x = self.token_proj[0](x)  # [B, N, D]
        return self.token_proj[1](x.transpose(1, 2)).transpose(1, 2)  # [B, u N, D]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, spkr: torch.Tensor) -> torch.Tensor:
        """x [B, L, D + 2z] = [tokens, latent condition, x_t]; t [B]; spkr [B, S] -> [B, L, z]."""
        c = self.cond_proj(torch.cat([self.time_embedder(t), spkr], dim=-1))  # [B, D]
        h = self.transformer_input_proj(x)
        h = self.conv_embed(h) + h
        for block in self.blocks:
            h = block(h, c)
        return self.output_layer(h, c)


def midpoint(f: Any, y: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Fixed-grid explicit midpoint over `times` (torchdiffeq's 'midpoint' on that grid)."""
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        dt = t1 - t0
        y = y + dt * f(t0 + dt / 2, y + f(t0, y) * (dt / 2))
    return y


class Token2Wav(nn.Module):
    """Audio tokens [B, N] (0..16383) -> 24 kHz waveform [B, (4 (P + N) - Lp) * 240]
    (P prompt tokens, Lp prompt latents).

    Buffers read from the release's .npy files (not part of the checkpoint): global_mean,
    global_var [z]; prompt_token [1, P]; prompt_latent [1, Lp, z]; spkr_embed [1, S].
    """

    main_input_name = "audio_tokens"

    def __init__(self, config: Token2WavConfig) -> None:
        super().__init__()
        self.config = config
        self.token2latent = Token2Latent(config)
        self.wavegan = FlowVAEDecoder(config)
        z = config.z_dim
        for name, shape in (("global_mean", (z,)), ("global_var", (z,)),
                            ("prompt_latent", (1, 0, z)), ("spkr_embed", (1, config.spkr_embed_dim))):
            self.register_buffer(name, torch.zeros(shape), persistent=False)
        self.register_buffer("prompt_token", torch.zeros(1, 0, dtype=torch.long), persistent=False)

    # ---- transformers-like surface used by the recipe and the weights helpers --------------
    @classmethod
    def _from_config(cls, config: Token2WavConfig, dtype: torch.dtype = torch.float32,
                     **_: Any) -> Token2Wav:
        return cls(config).to(dtype)

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        """Nothing is tied."""

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Random weights (normal 0.02, weight-norm gains 0.5, zero biases), the filter and
        rotary buffers computed, and a random prompt (tiny and full-shape profiles)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (WNConv1d, WNCausalConvTranspose1d)):
                nn.init.normal_(m.weight_v, std=0.02)
                # filters of norm 0.5: a random decoder gives a -36 dBFS signal (norm 1
                # saturates the tanh; the release's ||v|| of N(0, 0.01) fades to 1e-7)
                nn.init.constant_(m.weight_g, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, SnakeBeta):
                nn.init.zeros_(m.alpha)
                nn.init.zeros_(m.beta)
            elif isinstance(m, (UpSample1d, LowPass1d)):
                m.filter.copy_(kaiser_sinc(0.5 / 2, 0.6 / 2, m.filter.shape[-1]))
            elif isinstance(m, RotaryEmbedding):
                dim = m.inv_freq.shape[0] * 2
                theta = self.config.rotary_theta
                m.inv_freq.copy_(1.0 / theta ** (torch.arange(0, dim, 2).float() / dim))
        self.set_prompt(*random_prompt(self.config))

    def set_prompt(self, mean_var: np.ndarray, token: np.ndarray, latent: np.ndarray,
                   spkr: np.ndarray) -> None:
        """The .npy contents: global_mean_var (mean and var halves), prompt token / latent /
        speaker embedding."""
        z = self.config.z_dim
        mv = torch.as_tensor(np.asarray(mean_var, dtype=np.float32)).reshape(-1)
        checks = [("global_mean_var.npy", mv.numel() == 2 * z, f"{2 * z} values"),
                  ("prompt_latent.npy", latent.ndim == 3 and latent.shape[-1] == z,
                   f"[1, frames, {z}]"),
                  ("speaker_embed.npy", spkr.shape[-1] == self.config.spkr_embed_dim,
                   f"[1, {self.config.spkr_embed_dim}]")]
        for name, ok, want in checks:
            if not ok:
                raise ModelLoadError(f"token2wav: {name} does not fit the config (expected "
                                     f"{want})", "copy the release's file again")
        dev = self.global_mean.device
        self.global_mean, self.global_var = (h.to(dev) for h in mv.chunk(2))
        self.prompt_token = torch.as_tensor(np.asarray(token), dtype=torch.long,
                                            device=dev).reshape(1, -1)
        self.prompt_latent = torch.as_tensor(np.asarray(latent, dtype=np.float32), device=dev)
        self.spkr_embed = torch.as_tensor(np.asarray(spkr, dtype=np.float32),
                                          device=dev).reshape(1, -1)

    def save_pretrained(self, folder: str | Path) -> None:
        """The release's layout: config.json, model.pt, global_mean_var.npy, prompt/*.npy."""
        out = Path(folder)
        (out / PROMPT_DIR).mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", self.config.to_release())
        torch.save({"model": {k: v.detach().cpu() for k, v in self.state_dict().items()}},
                   out / CHECKPOINT)
        mv = torch.cat([self.global_mean, self.global_var]).cpu().numpy()[None]  # [1, 2z]
        np.save(out / MEAN_VAR, mv.astype(np.float32))
        for name, t in zip(PROMPT_FILES, (self.prompt_token, self.prompt_latent, self.spkr_embed),
                           strict=True):
            np.save(out / PROMPT_DIR / name, t.cpu().numpy())

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: Token2WavConfig | None = None,
                        dtype: torch.dtype = torch.float32, device_map: Any = None,
                        output_loading_info: bool = False, **_: Any) -> Any:
        """Read the release's token2wav folder strictly (see read_checkpoint)."""
        folder = Path(folder)
        config = config or Token2WavConfig.from_pretrained(folder)
        model = cls(config)
        read_checkpoint(model, folder)
        model.set_prompt(*read_prompt(folder))
        model = model.to(dtype).eval()
        if isinstance(device_map, dict) and device_map:
            model.to(next(iter(device_map.values())))
        info = {"missing_keys": [], "mismatched_keys": [], "unexpected_keys": []}
        return (model, info) if output_loading_info else model

    # ---- decoding ---------------------------------------------------------------------------
    def latent_frames(self, n_tokens: int) -> int:
        """Latent frames the DiT solves for: u (prompt tokens + tokens)."""
        return self.config.upsample_factor * (self.prompt_token.shape[1] + n_tokens)

    def output_samples(self, n_tokens: int) -> int:
        return max(self.latent_frames(n_tokens) - self.prompt_latent.shape[1], 0) * self.config.hop

    def noise(self, batch: int, n_tokens: int) -> torch.Tensor:
        """The initial noise [B, L, z], from a CPU generator seeded with config.noise_seed."""
        gen = torch.Generator().manual_seed(self.config.noise_seed)
        return torch.randn(batch, self.latent_frames(n_tokens), self.config.z_dim, generator=gen)

    def forward(self, audio_tokens: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] audio tokens -> [B, T] waveform at config.sample_rate."""
        latents = self.solve(audio_tokens, noise)  # [B, L, z] normalized
        dtype = latents.dtype
        latents = self.global_mean.to(dtype) + latents * self.global_var.to(dtype).sqrt()
        # the release writes the prompt's own latents over the first frames, then cuts them
        latents = latents[:, self.prompt_latent.shape[1]:]  # [B, L - Lp, z]
        return self.wavegan(latents.transpose(1, 2))[:, 0]  # [B, T]

    def solve(self, audio_tokens: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The flow-matching ODE from noise (t = 0) to latents (t = 1), with classifier-free
        guidance when cfg_alpha is set: [B, L, z]."""
        t2l, cfg = self.token2latent, self.config
        b = audio_tokens.shape[0]
        ids = torch.cat([self.prompt_token.expand(b, -1), audio_tokens.to(self.prompt_token.device)],
                        dim=1)  # [B, P + N]
        tokens = t2l.tokens(ids)  # [B, L, D]
        dtype, dev = tokens.dtype, tokens.device
        cond = torch.zeros(b, tokens.shape[1], cfg.z_dim, dtype=dtype, device=dev)  # [B, L, z]
        n_prompt = min(self.prompt_latent.shape[1], tokens.shape[1])
        cond[:, :n_prompt] = self.prompt_latent[:, :n_prompt].to(dtype)
        spkr = self.spkr_embed.to(dtype).expand(b, -1)  # [B, S]
        z0 = self.noise(b, audio_tokens.shape[1]) if noise is None else noise
        alpha = cfg.cfg_alpha

        def field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            if alpha is None:
                return t2l.velocity(torch.cat([tokens, cond, z], -1), t.expand(b), spkr)
            both = torch.cat([torch.cat([torch.zeros_like(tokens), tokens]),
                              torch.cat([cond, cond]), torch.cat([z, z])], dim=-1)  # [2B, L, .]
            v = t2l.velocity(both, t.expand(2 * b), torch.cat([spkr, spkr]))
            v_u, v_c = v[:b], v[b:]
            return v_c + (v_c - v_u) * alpha

        times = torch.linspace(0, 1, cfg.s_steps, device=dev)
        return midpoint(field, z0.to(dev, dtype), times.to(dtype))


def random_prompt(cfg: Token2WavConfig, prompt_tokens: int = 8,
                  seed: int = 0) -> tuple[np.ndarray, ...]:
    """A random prompt in the release's .npy shapes (tiny and full-shape profiles):
    mean/var [1, 2z] (var 1), tokens [1, P], latents [1, u P + 3, z], speaker [1, S]."""
    rng = np.random.default_rng(seed)
    mv = np.concatenate([rng.normal(0, 0.1, cfg.z_dim), np.ones(cfg.z_dim)])[None]
    tok = rng.integers(0, cfg.token_vocab_size, (1, prompt_tokens))
    lat = rng.normal(0, 1, (1, cfg.upsample_factor * prompt_tokens + 3, cfg.z_dim))
    spk = rng.normal(0, 1, (1, cfg.spkr_embed_dim))
    return (mv.astype(np.float32), tok.astype(np.int64), lat.astype(np.float32),
            spk.astype(np.float32))


# ---- the release's files ----------------------------------------------------------------------

def present(folder: Path) -> bool:
    """Whether `folder` looks like a token2wav folder (its checkpoint is there)."""
    return (Path(folder) / CHECKPOINT).is_file()


def read_checkpoint(model: Token2Wav, folder: Path) -> None:
    """Load model.pt strictly: every parameter present with its shape, nothing unknown; the
    computed buffers (filters, rotary frequencies) are taken from the file when it has them."""
    path = folder / CHECKPOINT
    if not path.is_file():
        raise ModelLoadError(f"token2wav: {path} does not exist",
                             f"put the release's token2wav checkpoint there ({CHECKPOINT} next "
                             f"to {MEAN_VAR})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with foreign classes
        raise ModelLoadError(f"token2wav: cannot read {path} ({path.stat().st_size:,} bytes): "
                             f"{type(exc).__name__}: {exc}",
                             "it must be a complete torch checkpoint of tensors: copy it again"
                             ) from exc
    state = state.get("model", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    params = dict(model.named_parameters())
    missing = sorted(k for k in params if k not in state)
    extra = sorted(k for k in state if k not in own)
    if missing or extra:
        bad = missing or extra
        kind = "lacks" if missing else "has tensors Token2Wav does not know:"
        raise ModelLoadError(f"token2wav: {path} {kind} {len(bad)} tensor(s), e.g. "
                             f"{', '.join(bad[:4])}",
                             "config.json does not describe this checkpoint")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ModelLoadError(f"token2wav: tensor {key} in {path} has shape "
                                 f"{list(value.shape)}, config.json gives {list(own[key].shape)}",
                                 "config.json and the checkpoint disagree")
    model.load_state_dict(state, strict=False)


def read_prompt(folder: Path) -> tuple[np.ndarray, ...]:
    """global_mean_var.npy and prompt/*.npy (prompt files also accepted directly in folder)."""
    paths = [folder / MEAN_VAR]
    for name in PROMPT_FILES:
        sub = folder / PROMPT_DIR / name
        paths.append(sub if sub.is_file() or not (folder / name).is_file() else folder / name)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelLoadError(f"token2wav: missing {', '.join(missing)}",
                             f"copy {MEAN_VAR} (release model folder) and the prompt .npy files "
                             "(the release's token2wav/prompt/) into the token2wav folder")
    try:
        return tuple(np.load(p, allow_pickle=False) for p in paths)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"token2wav: cannot read the .npy files in {folder}: {exc}",
                             "copy them again") from exc
