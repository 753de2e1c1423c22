"""Covo-Audio-Chat: Whisper-large-v3 encoder -> conv adapter -> Qwen2 7B LM (8.40B end to end).

Written from the published description (the Covo-Audio-Chat on 2x Ascend 910 adaptation
report), with our own code:

  audio_encoder  transformers' WhisperEncoder at whisper-large-v3 shape: 128 mel bins, 1500
                 source positions (30 s at 50 Hz after its stride-2 conv), d_model 1280,
                 32 layers, 20 heads, ffn 5120: 636,968,960 parameters (~0.64B)
  adapter        AudioAdapter (below): three stride-2 Conv1d blocks, 1500 -> 750 -> 375 -> 188
                 frames (50 Hz -> 6.25 Hz), 1280 -> 1280 -> 2048 -> 3584 channels:
                 34,820,352 parameters (~35M)
  lm             Qwen2ForCausalLM: hidden 3584, intermediate 18944, 28 layers, 28 / 4 heads,
                 vocab 168,055, untied: 7,730,240,000 parameters (7.73B; 602.3M each in the
                 input embeddings and lm_head)
  chat           AudioChat, the end-to-end module: the adapter's audio embeddings replace the
                 <|audio|> placeholder positions of the text embeddings (masked_scatter), then
                 the LM runs. Total 8,402,029,312 parameters (8.40B).
  vocoder        helpers.models.audio_components: a HiFi-GAN generator (transformers'
                 SpeechT5HifiGan) at the BigVGAN-v2 24 kHz / 100-band / 256x shape that speaks
                 the token2wav mels at 24 kHz: 112,360,033 parameters (~112M). Built-in shapes
                 only (tiny, full-shape): the real profile does not read it. The published
                 8.40B counts encoder + adapter + LM, so the vocoder is outside that figure.

Adapter block layout (block i = 1, 2, 3):
  Conv1d(c_in, c_out, kernel 3, stride 2, padding 1) -> LayerNorm(c_out) -> GELU (not after
  block 3, whose output is an LM input embedding). Frames: T -> floor((T - 1) / 2) + 1.
  Parameters: 3 c_in c_out + c_out (conv) + 2 c_out (norm) per block.

Real profile, the MODEL_DIR layout read here (each folder a save_pretrained folder):
  MODEL_DIR/config.json, model*.safetensors    the Qwen2 LM (AutoModelForCausalLM)
  MODEL_DIR/tokenizer files                     must contain the audio placeholder token
  MODEL_DIR/audio_encoder/config.json + weights  a WhisperConfig and either a WhisperEncoder
                                                  save or a whole Whisper checkpoint (its
                                                  model.encoder.* tensors are used)
  MODEL_DIR/adapter/config.json + weights        an AudioAdapter save (model_type
                                                  covo_audio_adapter; names the placeholder)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from helpers.models import audio_components as ac
from helpers.models.base import (
    Component,
    LoadedModel,
    Recipe,
    Reference,
    shipped_tokenizer,
    text_inputs,
)
from helpers.models.weights import ModelLoadError

COVO_REPORT = "Covo-Audio-Chat on 2x Ascend 910 adaptation report (published component sizes)"
ADAPTER_SIZE = "Covo-Audio-Chat published component sizes (adapter about 35M)"
AUDIO_TOKEN = "<|audio|>"
QUESTION = "Please transcribe the audio."

ENCODER_FULL = dict(num_mel_bins=128, max_source_positions=1500, d_model=1280, encoder_layers=32,
                    encoder_attention_heads=20, encoder_ffn_dim=5120)
ADAPTER_FULL = dict(input_dim=1280, channels=[1280, 2048], output_dim=3584)
LM_FULL = dict(vocab_size=168_055, hidden_size=3584, intermediate_size=18944,
               num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               max_position_embeddings=32_768, tie_word_embeddings=False)
# Tiny: same classes and the same input contract (128 mel bins, 30 s = 3000 frames, 188 audio
# tokens); widths differ between encoder (48), adapter and LM (64) so a wiring mistake shows.
ENCODER_TINY = dict(num_mel_bins=128, max_source_positions=1500, d_model=48, encoder_layers=2,
                    encoder_attention_heads=4, encoder_ffn_dim=96)
ADAPTER_TINY = dict(input_dim=48, channels=[48, 64], output_dim=64)
LM_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32_768,
               tie_word_embeddings=False)


class AudioAdapterConfig(PretrainedConfig):
    """Shape of the adapter: encoder width in, two hidden widths, LM width out."""

    model_type = "covo_audio_adapter"

    def __init__(self, input_dim: int = 1280, channels: list[int] | None = None,
                 output_dim: int = 3584, kernel_size: int = 3, stride: int = 2,
                 audio_token: str = AUDIO_TOKEN, initializer_range: float = 0.02,
                 layer_norm_eps: float = 1e-5, **kwargs: Any) -> None:
        self.input_dim = input_dim
        self.channels = list(channels if channels is not None else [1280, 2048])
        self.output_dim = output_dim
        self.kernel_size = kernel_size
        self.stride = stride
        self.audio_token = audio_token
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)


class DownsampleBlock(nn.Module):
    """Conv1d (stride 2) -> LayerNorm over channels -> optional GELU; [B, T, C] -> [B, T', C']."""

    def __init__(self, c_in: int, c_out: int, cfg: AudioAdapterConfig, act: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, cfg.kernel_size, stride=cfg.stride,
                              padding=cfg.kernel_size // 2)
        self.norm = nn.LayerNorm(c_out, eps=cfg.layer_norm_eps)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # [B, T', C']
        return self.act(self.norm(x))


class AudioAdapter(PreTrainedModel):
    """Three stride-2 Conv1d blocks: encoder states [B, T, D_enc] -> audio embeddings [B, T/8, H]."""

    config_class = AudioAdapterConfig
    base_model_prefix = "adapter"
    main_input_name = "audio_states"
    _no_split_modules = ["AudioAdapter"]

    def __init__(self, config: AudioAdapterConfig) -> None:
        super().__init__(config)
        widths = [config.input_dim, *config.channels, config.output_dim]
        last = len(widths) - 2
        self.blocks = nn.ModuleList(
            DownsampleBlock(widths[i], widths[i + 1], config, act=i < last) for i in range(last + 1)
        )
        self.post_init()

    def forward(self, audio_states: torch.Tensor) -> torch.Tensor:
        x = audio_states  # [B, T, D_enc]
        for block in self.blocks:
            x = block(x)
        return x  # [B, T_out, H]

    def output_length(self, frames: int) -> int:
        """Frames after the blocks: each maps T -> floor((T + 2p - k) / s) + 1."""
        k, s = self.config.kernel_size, self.config.stride
        for _ in self.blocks:
            frames = (frames + 2 * (k // 2) - k) // s + 1
        return frames


class AudioChat(nn.Module):
    """Encoder -> adapter -> audio embeddings at the placeholder positions -> LM."""

    def __init__(self, audio_encoder: nn.Module, adapter: AudioAdapter, lm: nn.Module,
                 audio_token_id: int) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder
        self.adapter = adapter
        self.lm = lm
        self.audio_token_id = audio_token_id

    def audio_embeddings(self, input_features: torch.Tensor) -> torch.Tensor:
        """[B, mel, frames] log-mel -> [B, N, H] LM-width audio embeddings."""
        states = self.audio_encoder(input_features=input_features).last_hidden_state  # [B, T, D]
        adapter_dev = next(self.adapter.parameters()).device
        return self.adapter(states.to(adapter_dev))  # [B, N, H]

    def embed(self, input_ids: torch.Tensor, input_features: torch.Tensor) -> torch.Tensor:
        """Text embeddings with every placeholder replaced by the next audio embedding."""
        table = self.lm.get_input_embeddings()
        embeds = table(input_ids.to(table.weight.device))  # [B, S, H]
        audio = self.audio_embeddings(input_features)  # [B, N, H]
        mask = (input_ids == self.audio_token_id).to(embeds.device)  # [B, S]
        placeholders, frames = int(mask.sum()), audio.shape[0] * audio.shape[1]
        if placeholders != frames:
            raise ValueError(
                f"input_ids hold {placeholders} audio placeholder token(s) (id {self.audio_token_id}) "
                f"but the audio gives {frames} embeddings ({audio.shape[1]} per clip): put "
                f"{audio.shape[1]} placeholders per clip (see CovoRecipe.chat_inputs)"
            )
        mask3 = mask.unsqueeze(-1).expand_as(embeds)  # [B, S, H]
        return embeds.masked_scatter(mask3, audio.to(embeds.device, embeds.dtype))

    def forward(self, input_ids: torch.Tensor, input_features: torch.Tensor,
                attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        embeds = self.embed(input_ids, input_features)
        if attention_mask is not None:
            attention_mask = attention_mask.to(embeds.device)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


class CovoRecipe(Recipe):
    name = "covo-audio-chat"
    title = "Covo-Audio-Chat (Whisper encoder + adapter + Qwen2 7B, 8.40B)"
    components = (
        Component("audio_encoder", "Whisper-large-v3 encoder, log-mel -> 50 Hz states", "audio_encoder"),
        Component("adapter", "3 stride-2 Conv1d blocks, 50 Hz -> 6.25 Hz, to LM width", "adapter"),
        Component("lm", "Qwen2 causal LM (untied)"),
        *(Component(n, ac.part(n).role, ac.part(n).subfolder)
          for n in ac.names_for("covo-audio-chat")),
    )
    builtin_only = ac.names_for("covo-audio-chat")
    references = (
        Reference("audio_encoder+adapter+lm", 8.40e9, 0.005e9, "8.40B", COVO_REPORT),
        Reference("lm", 7.73e9, 0.005e9, "7.73B", COVO_REPORT),
        Reference("lm.input_embeddings", 602.3e6, 0.05e6, "602.3M", COVO_REPORT),
        Reference("lm.output_embeddings", 602.3e6, 0.05e6, "602.3M", COVO_REPORT),
        Reference("audio_encoder", 0.64e9, 0.005e9, "0.64B", COVO_REPORT),
        Reference("adapter", 35e6, 0.5e6, "35M", ADAPTER_SIZE),
        Reference("vocoder", 112e6, 0.5e6, "112M", ac.BIGVGAN),
    )
    entry = "chat"
    layout = ("MODEL_DIR/{config.json, model*.safetensors, tokenizer files} for the Qwen2 LM; "
              "MODEL_DIR/audio_encoder/ (WhisperConfig + Whisper weights); "
              "MODEL_DIR/adapter/ (AudioAdapter config + weights)")

    def configs(self, profile: str) -> dict[str, Any]:
        from transformers import Qwen2Config, WhisperConfig

        tok = shipped_tokenizer()
        ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
        if profile == "full-shape":
            enc, ada, lm = ENCODER_FULL, ADAPTER_FULL, dict(LM_FULL, **ids)
        elif profile == "tiny":
            enc, ada, lm = ENCODER_TINY, ADAPTER_TINY, dict(LM_TINY, vocab_size=len(tok), **ids)
        else:
            return super().configs(profile)
        return {"audio_encoder": WhisperConfig(**enc), "adapter": AudioAdapterConfig(**ada),
                "lm": Qwen2Config(**lm), **ac.configs(self.name, profile)}

    def read_configs(self, root: Path) -> dict[str, Any]:
        from transformers import AutoConfig, WhisperConfig

        return {
            "audio_encoder": WhisperConfig.from_pretrained(str(root / "audio_encoder")),
            "adapter": AudioAdapterConfig.from_pretrained(str(root / "adapter")),
            "lm": AutoConfig.from_pretrained(str(root), trust_remote_code=True),
            **ac.read_configs(self, root),
        }

    def loader(self, component: str) -> Any:
        from transformers import AutoModelForCausalLM
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if component in self.builtin_only:
            return ac.loader(component)
        return {"audio_encoder": WhisperEncoder, "adapter": AudioAdapter,
                "lm": AutoModelForCausalLM}[component]

    def read_kwargs(self, component: str) -> dict[str, Any]:
        if component == "audio_encoder":  # a whole Whisper checkpoint: keep model.encoder.*
            return {"key_mapping": {r"^(model\.)?encoder\.": ""}}
        if component == "lm":
            return {"trust_remote_code": True}
        return {}

    def assemble(self, modules: dict[str, nn.Module], tokenizer: Any) -> nn.Module:
        adapter = modules["adapter"]
        token = adapter.config.audio_token
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ModelLoadError(
                f"{self.name}: the tokenizer has no audio placeholder token {token!r} (named by "
                "adapter/config.json audio_token); add it to the tokenizer or fix audio_token"
            )
        return AudioChat(modules["audio_encoder"], adapter, modules["lm"], token_id).eval()

    # ---- inputs -------------------------------------------------------------------------
    def audio_tokens(self, loaded: LoadedModel) -> int:
        """Placeholders per 30-s clip: the adapter's output length for the encoder's frames."""
        frames = loaded.components["audio_encoder"].config.max_source_positions
        return loaded.components["adapter"].output_length(frames)

    def random_features(self, loaded: LoadedModel, batch: int) -> torch.Tensor:
        """Seeded standard-normal stand-ins for log-mel features, [B, mel, 2 * positions]."""
        cfg = loaded.components["audio_encoder"].config
        gen = torch.Generator().manual_seed(loaded.seed)
        feats = torch.randn(batch, cfg.num_mel_bins, 2 * cfg.max_source_positions, generator=gen)
        enc = loaded.components["audio_encoder"]
        return feats.to(loaded.input_device("audio_encoder"), next(enc.parameters()).dtype)

    def chat_inputs(self, loaded: LoadedModel, input_features: torch.Tensor,
                    question: str = QUESTION) -> dict[str, torch.Tensor]:
        """A one-turn chat prompt with one placeholder per audio embedding, plus the features."""
        tok = loaded.tokenizer
        content = loaded.components["adapter"].config.audio_token * self.audio_tokens(loaded)
        messages = [{"role": "user", "content": f"{content}\n{question}"}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tok([text] * input_features.shape[0], return_tensors="pt", add_special_tokens=False)
        dev = loaded.input_device("lm")
        return {"input_ids": enc["input_ids"].to(dev),  # [B, S]
                "attention_mask": enc["attention_mask"].to(dev),  # [B, S]
                "input_features": input_features}  # [B, mel, frames]

    def example_inputs(self, loaded: LoadedModel, component: str,
                       batch: int) -> dict[str, torch.Tensor]:
        if component == "audio_encoder":
            return {"input_features": self.random_features(loaded, batch)}
        if component == "adapter":
            enc = loaded.components["audio_encoder"].config
            gen = torch.Generator().manual_seed(loaded.seed)
            states = torch.randn(batch, enc.max_source_positions, enc.d_model, generator=gen)
            ada = loaded.components["adapter"]
            return {"audio_states": states.to(loaded.input_device("adapter"),
                                              next(ada.parameters()).dtype)}
        if component == "lm":
            return text_inputs(loaded.tokenizer, batch, loaded.input_device("lm"))
        if component == "chat":
            return self.chat_inputs(loaded, self.random_features(loaded, batch))
        if component in self.builtin_only and component in loaded.components:
            return ac.example_inputs(component, loaded.components[component], batch)
        raise KeyError(f"{self.name} has no component {component!r}; known: {loaded.input_names()}")


RECIPE = CovoRecipe()
