"""The GLM-4-Voice speech tokenizer as GPA uses it: WhisperVQEncoder, read from
glm-4-voice-tokenizer/ (config.json + model.safetensors + preprocessor_config.json).

Our own implementation of the released architecture, written from these upstream sources
(read, never imported or copied):

  THUDM/GLM-4-Voice speech_tokenizer/configuration_whisper.py   WhisperVQConfig fields and
      defaults (= AutoArk/GPA models/glm_speech_tokenizer/configuration_whisper.py)
  THUDM/GLM-4-Voice speech_tokenizer/modeling_whisper.py        WhisperVQEncoder: CausalConv1d
      (left padding dilation*(k-1)), conv1 k3 / conv2 k3 stride 2, GELU, learned positions
      embed_positions [1500, D], pre-LN encoder layers (k_proj without bias), average pooling
      by pooling_kernel_size after layer pooling_position (zero-padded to a multiple), vector
      quantization after layer quantize_position (squared distances by addmm, first minimum),
      then + embed_positions2 [ceil(1500 / k), D]; block-causal attention mask of
      quantize_causal_block_size frames (divided by the pooling after it); ema_count /
      ema_weight buffers when quantize_ema_decay is set; no final layer_norm when
      quantize_encoder_only (only quantize_position layers are built)
  AutoArk/GPA models/glm_speech_tokenizer/speech_token_extractor.py   what GPA feeds it:
      WhisperFeatureExtractor(padding="longest", pad_to_multiple_of=conv strides x pooling x
      hop = 1280 samples, return_attention_mask), its `quantized_token_ids`, the attention
      mask taken every 2 (conv strides) then every 4 (pooling) frames to keep the real tokens
  AutoArk/GPA scripts/inference/gpa_inference.py   WhisperVQEncoder.from_pretrained(
      glm-4-voice-tokenizer) in float32 (the config's torch_dtype), the feature extractor from
      the same folder

The released config.json (THUDM/glm-4-voice-tokenizer; its values as a third-party loader that
reads that file with strict=True restates them): d_model 1280, 20 heads, ffn 5120, 128 mel
bins, 1500 positions, encoder_causal_convolution true, pooling avg / 4 at layer 16, 16,384
codes at layer 16, quantize_encoder_only true, quantize_causal_block_size 200,
quantize_ema_decay 0.99 (so the file holds ema_count and ema_weight). FULL below repeats them;
a real folder's config.json always wins.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers import audio
from helpers.errors import ModelLoadError
from helpers.models import release_io as rio
from helpers.records import write_json

SOURCE = ("THUDM/GLM-4-Voice speech_tokenizer/modeling_whisper.py (WhisperVQEncoder), "
          "AutoArk/GPA models/glm_speech_tokenizer/speech_token_extractor.py")
FEATURES_FILE = "preprocessor_config.json"
LAYOUT = ("glm-4-voice-tokenizer/: config.json (WhisperVQConfig, architectures "
          "WhisperVQEncoder) + model.safetensors + preprocessor_config.json "
          "(WhisperFeatureExtractor)")

# The fields this implementation reads, with upstream's defaults (configuration_whisper.py for
# the VQ fields, transformers' WhisperConfig for the rest).
DEFAULTS: dict[str, Any] = dict(
    num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6,
    encoder_ffn_dim=1536, max_source_positions=1500, activation_function="gelu",
    pooling_kernel_size=None, pooling_type="max", pooling_position=0, quantize_vocab_size=None,
    quantize_position=16, quantize_ema_decay=None, quantize_encoder_only=False,
    quantize_causal_encoder=False, quantize_causal_block_size=None,
    encoder_causal_attention=False, encoder_causal_convolution=False,
)
# The release (see the module docstring), all other WhisperConfig fields left at their defaults.
FULL: dict[str, Any] = dict(
    DEFAULTS, num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
    encoder_ffn_dim=5120, pooling_kernel_size=4, pooling_type="avg", pooling_position=16,
    quantize_vocab_size=16_384, quantize_position=16, quantize_ema_decay=0.99,
    quantize_encoder_only=True, quantize_causal_block_size=200,
    encoder_causal_convolution=True, model_type="whisper", architectures=["WhisperVQEncoder"],
    torch_dtype="float32",
)
# Tiny: the same window, rates, code book and layer positions of pooling and quantization
# relative to depth (pool + quantize after the last of 2 layers); small widths.
TINY: dict[str, Any] = dict(FULL, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                            encoder_ffn_dim=64, pooling_position=2, quantize_position=2)
CONV_STRIDE = 2  # conv1 stride 1 x conv2 stride 2 (modeling_whisper.py)
# Random code-book rows: normal(0, CODE_STD). A trained code book's rows lie where the encoder's
# states are (its training pulls each used code toward the states it stands for). The states of
# a random-weight encoder are dominated by the sinusoidal positions, whose entries have an rms of
# sqrt(1/2) (measured on the tiny tokenizer and the six fixtures: 0.68). Rows drawn at the
# init's normal(0.02) would sit 35x closer to the origin than every state, so that every code
# is within bfloat16's rounding of every other and no quantizer error could be told from it.
CODE_STD = math.sqrt(0.5)


class WhisperVQConfig:
    """config.json of glm-4-voice-tokenizer: every field kept (written back as read)."""

    model_type = "whisper"

    def __init__(self, **fields: Any) -> None:
        self.fields = {**DEFAULTS, **fields}
        for key, value in self.fields.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields)

    @property
    def hop_samples(self) -> int:
        """Samples per token: conv strides x pooling x the mel hop (1280 = 80 ms)."""
        return CONV_STRIDE * (self.pooling_kernel_size or 1) * audio.WHISPER.hop_length

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> WhisperVQConfig:
        path = Path(folder) / "config.json"
        what = "gpa speech_tokenizer (glm-4-voice-tokenizer)"
        data = rio.read_json(path, what, f"expected {LAYOUT}")
        cfg = cls(**data)
        cfg.check(path)
        check_features(Path(folder), cfg)
        return cfg

    def check(self, path: Path | str = "config.json") -> None:
        """Refuse settings this implementation does not carry (and the release does not use)."""
        bad = [k for k in ("encoder_causal_attention", "quantize_causal_encoder")
               if self.fields.get(k)]
        if self.quantize_vocab_size is None:
            bad.append("quantize_vocab_size (none: not a speech tokenizer)")
        if self.pooling_type not in ("avg", "max"):
            bad.append(f"pooling_type {self.pooling_type!r}")
        if bad:
            raise ModelLoadError(
                f"gpa speech_tokenizer: {path} sets {', '.join(bad)}, which GLM-4-Voice's "
                "released tokenizer does not use and this implementation does not carry",
                "point the gpa recipe at the release's glm-4-voice-tokenizer folder")

    def save(self, folder: Path) -> None:
        write_json(folder / "config.json", self.fields)
        features_config(self).save_pretrained(str(folder))


def features_config(cfg: WhisperVQConfig) -> Any:
    """The WhisperFeatureExtractor the release ships next to the weights (built locally)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=cfg.num_mel_bins, sampling_rate=16_000,
                                   hop_length=audio.WHISPER.hop_length, chunk_length=30,
                                   n_fft=audio.WHISPER.n_fft)


def check_features(folder: Path, cfg: WhisperVQConfig) -> None:
    """preprocessor_config.json must describe the Whisper front end helpers.audio computes."""
    path = folder / FEATURES_FILE
    data = rio.read_json(path, "gpa speech_tokenizer feature extractor",
                         f"expected {LAYOUT}")
    want = {"feature_size": cfg.num_mel_bins, "sampling_rate": 16_000,
            "hop_length": audio.WHISPER.hop_length, "n_fft": audio.WHISPER.n_fft}
    off = {k: (data.get(k), v) for k, v in want.items() if data.get(k) != v}
    if off:
        raise ModelLoadError(
            f"gpa speech_tokenizer: {path} has " + ", ".join(
                f"{k} {got} (expected {v})" for k, (got, v) in off.items()),
            "the Whisper front end here is 16 kHz, n_fft 400, hop 160 with num_mel_bins bins")


# ---- layers --------------------------------------------------------------------------------

class CausalConv1d(nn.Conv1d):
    """Conv1d padded dilation * (k - 1) on the left only (modeling_whisper.py CausalConv1d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.dilation[0] * (self.kernel_size[0] - 1)
        return super().forward(F.pad(x, (left, 0)))


class VQAttention(nn.Module):
    """Whisper self-attention: q/v/out projections with bias, k without."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # [B, H, S, Dh]

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                             split(self.v_proj(x)), attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))  # [B, S, D]


class VQEncoderLayer(nn.Module):
    """Pre-LN transformer layer (WhisperVQEncoderLayer)."""

    def __init__(self, cfg: WhisperVQConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn = VQAttention(d, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.act = _activation(cfg.activation_function)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        x = x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16 and not torch.isfinite(x).all():  # as upstream, fp16 only
            big = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-big, big)
        return x


def _activation(name: str) -> nn.Module:
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def sinusoids(length: int, channels: int, max_timescale: float = 10_000) -> torch.Tensor:
    """Whisper's position table (its init of embed_positions), [length, channels]."""
    step = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-step * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1).float()


# ---- the model -----------------------------------------------------------------------------

class GlmSpeechTokenizer(rio.ReleaseModule):
    """WhisperVQEncoder: log-mel [B, M, T] + frame mask [B, T] -> token ids [B, T / 8].

    Tensor names are the release's: conv1, conv2, embed_positions, layers.N.*, codebook,
    embed_positions2, layer_norm (only without quantize_encoder_only), ema_count, ema_weight.
    """

    config_class = WhisperVQConfig
    main_input_name = "input_features"

    def __init__(self, config: WhisperVQConfig) -> None:
        super().__init__(config)
        c = config
        conv = CausalConv1d if c.encoder_causal_convolution else nn.Conv1d
        pad = {} if c.encoder_causal_convolution else {"padding": 1}
        self.conv1 = conv(c.num_mel_bins, c.d_model, kernel_size=3, **pad)
        self.conv2 = conv(c.d_model, c.d_model, kernel_size=3, stride=2, **pad)
        self.embed_positions = nn.Embedding(c.max_source_positions, c.d_model)
        depth = c.quantize_position if c.quantize_encoder_only else c.encoder_layers
        self.layers = nn.ModuleList(VQEncoderLayer(c) for _ in range(depth))
        if not c.quantize_encoder_only:
            self.layer_norm = nn.LayerNorm(c.d_model)
        k = c.pooling_kernel_size
        self.pooling_layer = None if k is None else (
            nn.AvgPool1d(k) if c.pooling_type == "avg" else nn.MaxPool1d(k))
        self.codebook = nn.Embedding(c.quantize_vocab_size, c.d_model)
        self.embed_positions2 = nn.Embedding(math.ceil(c.max_source_positions / (k or 1)),
                                             c.d_model)
        if c.quantize_ema_decay is not None:  # training state, stored in the release's file
            self.register_buffer("ema_count", torch.ones(c.quantize_vocab_size))
            self.register_buffer("ema_weight", torch.zeros(c.quantize_vocab_size, c.d_model))

    # ---- weights --------------------------------------------------------------------------
    def read_weights(self, folder: Path) -> None:
        path = folder / "model.safetensors"
        what = "gpa speech_tokenizer (glm-4-voice-tokenizer)"
        found = rio.read_tensors(path, what)
        rio.check_state(self.state_dict(), found, path, what)
        self.load_state_dict(found, strict=True)

    def write_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    @torch.no_grad()
    def reset_parameters_(self) -> None:
        """Random weights as WhisperPreTrainedModel._init_weights draws them (normal 0.02,
        sinusoidal positions, embed_positions2 = the first rows of embed_positions), except the
        code book, drawn at the scale of the states it quantizes (CODE_STD)."""
        rio.random_init(self)
        self.codebook.weight.mul_(CODE_STD / 0.02)  # the same draw, rescaled
        self.embed_positions.weight.copy_(sinusoids(*self.embed_positions.weight.shape))
        self.embed_positions2.weight.copy_(
            self.embed_positions.weight[:self.embed_positions2.weight.shape[0]])
        if self.config.quantize_ema_decay is not None:
            self.ema_count.fill_(1.0)
            self.ema_weight.copy_(self.codebook.weight.float())

    # ---- forward ---------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def _mask(self, mask: torch.Tensor, block: int | None) -> torch.Tensor:
        """Additive attention mask [B, 1, S|1, S]: padding keys, and with a block size the
        block-causal pattern (a query sees its own block and every earlier frame)."""
        dtype, low = self.dtype, torch.finfo(self.dtype).min
        keys = mask.bool()  # [B, S]
        if block is None:
            return (1.0 - keys[:, None, None, :].to(dtype)) * low  # [B, 1, 1, S]
        s = keys.shape[-1]
        seen = torch.ones(s, s, dtype=torch.bool, device=mask.device).tril()  # [S, S]
        starts = torch.arange(s, device=mask.device) // block
        seen = seen | (starts[:, None] == starts[None, :])
        allowed = seen[None] & keys[:, None, :]  # [B, S, S]
        return ((1.0 - allowed.to(dtype)) * low).unsqueeze(1)  # [B, 1, S, S]

    def _quantize(self, h: torch.Tensor) -> torch.Tensor:
        """Nearest code by squared distance (upstream's addmm form and first minimum)."""
        book = self.codebook.weight  # [K, D]
        flat = h.reshape(-1, book.shape[1])  # [B*N, D]
        dist = torch.addmm(book.pow(2).sum(1) + flat.pow(2).sum(1, keepdim=True), flat, book.t(),
                           alpha=-2.0, beta=1.0)  # [B*N, K]
        return dist.min(dim=1).indices.view(h.shape[0], h.shape[1])  # [B, N]

    def forward(self, input_features: torch.Tensor,
                attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """{token_ids [B, N], states [B, N, D] (the pooled states the codes are chosen from),
        token_mask [B, N] (1 where the token covers real audio)}."""
        c = self.config
        mask = attention_mask[:, ::CONV_STRIDE]  # [B, S]
        block = c.quantize_causal_block_size
        ext = self._mask(mask, block)
        h = F.gelu(self.conv1(input_features))  # [B, D, T]
        h = F.gelu(self.conv2(h)).permute(0, 2, 1)  # [B, S, D]
        h = h + self.embed_positions.weight[:h.shape[1]]
        ids = states = None
        for idx, layer in enumerate(self.layers):
            h = layer(h, ext)
            if idx + 1 == c.pooling_position and self.pooling_layer is not None:
                k = c.pooling_kernel_size
                t = h.permute(0, 2, 1)  # [B, D, S]
                if t.shape[-1] % k:
                    t = F.pad(t, (0, k - t.shape[-1] % k))
                h = self.pooling_layer(t).permute(0, 2, 1)  # [B, S / k, D]
                mask = mask[:, ::k]
                ext = self._mask(mask, None if block is None else block // k)
            if idx + 1 == c.quantize_position:
                states = h
                ids = self._quantize(h)
                h = self.codebook(ids) + self.embed_positions2.weight[:h.shape[1]]
        if ids is None:
            raise ModelLoadError(f"gpa speech_tokenizer: quantize_position {c.quantize_position} "
                                 f"is past its {len(self.layers)} layers")
        return {"token_ids": ids, "states": states, "token_mask": mask}


# ---- inputs (what SpeechTokenExtractor hands the model) -------------------------------------

def inputs(x16k: Any, cfg: WhisperVQConfig, device: torch.device, dtype: torch.dtype,
           batch: int = 1) -> dict[str, torch.Tensor]:
    """16 kHz mono audio -> {input_features [B, M, T] in `dtype`, attention_mask [B, T]}:
    padded with zeros to a multiple of cfg.hop_samples (at most 30 s), Whisper log-mel."""
    mel, mask = audio.whisper_features(np.asarray(x16k, dtype=np.float32), cfg.num_mel_bins,
                                       pad_to_multiple_of=cfg.hop_samples, device=device)
    return {"input_features": mel.to(dtype).unsqueeze(0).repeat(batch, 1, 1),
            "attention_mask": mask.unsqueeze(0).repeat(batch, 1)}


def tokens_for(n_samples: int, cfg: WhisperVQConfig) -> int:
    """Real tokens for n_samples of 16 kHz audio: ceil(n / 1280), 12.5 per second."""
    window = audio.WHISPER_CHUNK_S * 16_000
    return math.ceil(min(n_samples, window) / cfg.hop_samples)
