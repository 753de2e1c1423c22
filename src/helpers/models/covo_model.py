"""Covo-Audio-Chat as released: one CovoAudioForCausalLM with modules llm / encoder /
audio_adapter, read from the release's config.json and safetensors shards.

Our own code, written from the release's sources (GitHub Tencent/Covo-Audio); each fact
names its file:

  config      CovoAudioConfig, model_type "covo_audio", a config.json with nested llm_config
              (Qwen2) and encoder_config (Whisper), audio_token_index (default 151671) and
              adapter_downsample (default 8); to_dict also writes _llm_config_type and
              _encoder_config_type  (covoaudio/configuration_covo_audio.py)
  llm         Qwen2ForCausalLM(llm_config), untied: the release overrides tie_weights to do
              nothing  (covoaudio/modeling_covo_audio.py, CovoAudioForCausalLM)
  encoder     WhisperEncoder(encoder_config)  (same file)
  adapter     audio_adapter.downsample_layers.{0..n-1}, n = log2(adapter_downsample) = 3; each
              DownsampleLayer: conv1d Conv1d(C, C, 3, stride 2, padding 1) -> ReLU -> linear1
              Linear(C, 2048) -> ReLU -> linear2 Linear(2048, C), the last one Linear(2048, H)
              (C = encoder d_model, H = llm hidden_size)  (same file, DownsampleLayer and
              AudioAdapter)
  audio in    the adapter's features replace the <|cAUDIO|> placeholder embeddings with
              masked_scatter; the generation code takes the placeholder id as 151666, the
              tokenizer's <|cAUDIO|>, whatever audio_token_index says; the adapter output of
              every 30-s segment is joined into one row and the first N (N = placeholders)
              frames are used  (same file, prepare_inputs_for_generation, audio_encoder)
  generation  (helpers.generate) a windowed repetition penalty (1.05 over the last 8 tokens) next to
              transformers' repetition_penalty 1.05; tokens >= len(tokenizer) are audio
              tokens: id - len(tokenizer) in 0..16384 goes to token2wav  (example.py)
  weights     every *.safetensors file of the folder, in sorted order, loaded into the model
              built from config.json  (example.py)

Full shape (the defaults of configuration_covo_audio.py), counted on the meta device:
llm 7,730,240,000 + encoder 636,968,960 + audio_adapter 35,208,960 = 8,402,417,920.

Loading here is strict where the release's example.py is not (it passes strict=False): a
tensor the model lacks, one the files lack, a wrong shape, a key in two shards or a truncated
shard is a ModelLoadError naming the tensor and the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    WhisperConfig,
)

from helpers import compat
from helpers.errors import ModelLoadError
from helpers.records import write_json

MODEL_TYPE = "covo_audio"
AUDIO_TOKEN = "<|cAUDIO|>"  # the placeholder (modeling_covo_audio.py, get_dialog_prompt)
AUDIO_BEGIN = "<|begofcAUDIO|>"
AUDIO_END = "<|endofcAUDIO|>"
RELEASE_AUDIO_TOKEN_ID = 151666  # hard-coded in prepare_inputs_for_generation
AUDIO_TOKEN_INDEX = 151671  # configuration_covo_audio.py default (= 168,055 - 16,384)
ADAPTER_HIDDEN = 2048  # DownsampleLayer hidden_dim default (modeling_covo_audio.py)
AUDIO_CODES = 16_384  # example.py: audio tokens 0..16384 go to token2wav
SHARD_GLOB = "*.safetensors"

# configuration_covo_audio.py: the llm_config default (Qwen2.5-7B shape, vocab 168,055)
LLM_RELEASE = dict(
    architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, bos_token_id=151643,
    eos_token_id=151643, hidden_act="silu", hidden_size=3584, initializer_range=0.02,
    intermediate_size=18944, max_position_embeddings=131072, max_window_layers=28,
    num_attention_heads=28, num_hidden_layers=28, num_key_value_heads=4, rms_norm_eps=1e-06,
    rope_theta=1000000.0, sliding_window=131072, use_cache=True, use_sliding_window=False,
    vocab_size=168_055, tie_word_embeddings=False)
# configuration_covo_audio.py: the encoder_config default (openai/whisper-large-v3)
ENCODER_RELEASE = dict(
    activation_dropout=0.0, activation_function="gelu", attention_dropout=0.0, d_model=1280,
    decoder_attention_heads=20, decoder_ffn_dim=5120, decoder_layers=32, dropout=0.0,
    encoder_attention_heads=20, encoder_ffn_dim=5120, encoder_layerdrop=0.0, encoder_layers=32,
    init_std=0.02, max_source_positions=1500, max_target_positions=448, num_hidden_layers=32,
    num_mel_bins=128, scale_embedding=False, vocab_size=51866)


def _sub_config(value: Any, cls: type[PretrainedConfig], defaults: dict[str, Any]) -> Any:
    if value is None:
        return cls(**defaults)
    if isinstance(value, dict):
        return cls.from_dict({k: v for k, v in value.items() if k != "model_type"})
    return value


class CovoAudioConfig(PretrainedConfig):
    """The release's config: nested Qwen2 llm_config and Whisper encoder_config."""

    model_type = MODEL_TYPE
    sub_configs = {"llm_config": Qwen2Config, "encoder_config": WhisperConfig}

    def __init__(self, llm_config: Any = None, encoder_config: Any = None,
                 audio_token_index: int = AUDIO_TOKEN_INDEX, adapter_downsample: int = 8,
                 **kwargs: Any) -> None:
        kwargs.pop("_llm_config_type", None)  # written by the release's to_dict
        kwargs.pop("_encoder_config_type", None)
        self.llm_config = _sub_config(llm_config, Qwen2Config, LLM_RELEASE)
        self.encoder_config = _sub_config(encoder_config, WhisperConfig, ENCODER_RELEASE)
        self.audio_token_index = audio_token_index
        self.adapter_downsample = adapter_downsample
        self.whisper_feats_dim = self.encoder_config.d_model
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["llm_config"] = self.llm_config.to_dict()
        out["encoder_config"] = self.encoder_config.to_dict()
        out["_llm_config_type"] = self.llm_config.model_type
        out["_encoder_config_type"] = self.encoder_config.model_type
        return out


class DownsampleLayer(nn.Module):
    """[B, T, C] -> conv (stride 2) -> ReLU -> linear1 -> ReLU -> linear2 -> [B, ceil(T/2), out]."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int = ADAPTER_HIDDEN) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(input_dim, input_dim, kernel_size=3, stride=2, padding=1)
        self.linear1 = nn.Linear(input_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1d(x.transpose(1, 2)).transpose(1, 2)  # [B, T', C]
        x = self.linear1(torch.relu(x))  # [B, T', hidden]
        return self.linear2(torch.relu(x))  # [B, T', out]


class CovoAudioAdapter(nn.Module):
    """log2(downsample) DownsampleLayers; encoder width C in, LM width H out of the last."""

    def __init__(self, input_dim: int, output_dim: int, downsample: int = 8) -> None:
        super().__init__()
        if downsample < 2 or downsample & (downsample - 1):
            raise ModelLoadError(f"adapter_downsample must be a power of 2 >= 2, got {downsample}",
                                 "fix adapter_downsample in config.json (the release uses 8)")
        layers = downsample.bit_length() - 1
        self.downsample = downsample
        self.downsample_layers = nn.ModuleList(
            DownsampleLayer(input_dim, output_dim if i == layers - 1 else input_dim)
            for i in range(layers))

    def forward(self, audio_states: torch.Tensor) -> torch.Tensor:
        x = audio_states  # [B, T, C]
        for layer in self.downsample_layers:
            x = layer(x)
        return x  # [B, T / downsample (rounded up), H]

    def output_length(self, frames: int) -> int:
        """Frames after the layers: each maps T -> ceil(T / 2)."""
        for _ in self.downsample_layers:
            frames = (frames + 1) // 2
        return frames


class CovoAudioForCausalLM(PreTrainedModel):
    """llm + encoder + audio_adapter under the release's names; forward = the chat step."""

    config_class = CovoAudioConfig
    config: CovoAudioConfig
    main_input_name = "input_ids"
    _no_split_modules = ["Qwen2DecoderLayer", "WhisperEncoderLayer", "DownsampleLayer"]

    def __init__(self, config: CovoAudioConfig) -> None:
        from transformers import Qwen2ForCausalLM
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        super().__init__(config)
        self.llm = Qwen2ForCausalLM(config.llm_config)
        self.encoder = WhisperEncoder(config.encoder_config)
        self.audio_adapter = CovoAudioAdapter(config.encoder_config.d_model,
                                              config.llm_config.hidden_size,
                                              config.adapter_downsample)
        self.audio_token_id = RELEASE_AUDIO_TOKEN_ID  # set from the tokenizer by the recipe
        self.post_init()

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        """Nothing is tied (the release overrides tie_weights the same way)."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d)) and not isinstance(module, nn.Embedding):
            init = compat.init_module()
            init.normal_(module.weight, mean=0.0, std=self.config.llm_config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        super()._init_weights(module)

    def audio_features(self, input_features: torch.Tensor) -> torch.Tensor:
        """[S, mel, 3000] log-mel of S 30-s segments -> [S, 188, H] adapter features."""
        enc_dev = next(self.encoder.parameters()).device
        states = self.encoder(input_features=input_features.to(enc_dev)).last_hidden_state
        ada_dev = next(self.audio_adapter.parameters()).device
        return self.audio_adapter(states.to(ada_dev))  # [S, N, H]

    def embed(self, input_ids: torch.Tensor, input_features: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the <|cAUDIO|> placeholders replaced by audio features."""
        table = self.llm.get_input_embeddings()
        embeds = table(input_ids.to(table.weight.device))  # [B, S, H]
        mask = (input_ids == self.audio_token_id).to(embeds.device)  # [B, S]
        feats = self.audio_features(input_features)  # [S_seg, N, H]
        rows = feats.reshape(1, -1, feats.shape[-1]) if input_ids.shape[0] == 1 else feats
        counts = mask.sum(dim=1)  # [B]
        if rows.shape[0] != input_ids.shape[0] or int(counts.max()) > rows.shape[1]:
            raise ValueError(
                f"input_ids hold {counts.tolist()} {AUDIO_TOKEN} placeholder(s) per row (id "
                f"{self.audio_token_id}) but the audio gives {rows.shape[0]} row(s) of "
                f"{rows.shape[1]} features: build the prompt with "
                "helpers.models.covo_frontend.chat_inputs (one clip per row)")
        keep = torch.arange(rows.shape[1], device=counts.device)[None, :] < counts[:, None]
        picked = rows.to(embeds.device, embeds.dtype)[keep.to(embeds.device)]  # [sum(counts), H]
        return embeds.masked_scatter(mask.unsqueeze(-1), picked)

    def forward(self, input_ids: torch.Tensor, input_features: torch.Tensor,
                attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        embeds = self.embed(input_ids, input_features)
        if attention_mask is not None:
            attention_mask = attention_mask.to(embeds.device)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


def from_parts(config: CovoAudioConfig, llm: nn.Module, encoder: nn.Module,
               adapter: nn.Module, audio_token_id: int) -> CovoAudioForCausalLM:
    """The end-to-end module around already-built parts (no new storage)."""
    with torch.device("meta"):
        whole = CovoAudioForCausalLM(config)
    whole.llm, whole.encoder, whole.audio_adapter = llm, encoder, adapter
    whole.audio_token_id = audio_token_id
    return whole.eval()


def parts(model: CovoAudioForCausalLM) -> dict[str, nn.Module]:
    """The recipe's component names for the release's modules."""
    return {"audio_encoder": model.encoder, "adapter": model.audio_adapter, "lm": model.llm}


PREFIXES = {"audio_encoder": "encoder", "adapter": "audio_adapter", "lm": "llm"}


def split_tokens(tokens: torch.Tensor, text_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated ids -> (text ids < text_vocab, audio tokens id - text_vocab in 0..16384)."""
    flat = tokens.reshape(-1)
    audio = flat - text_vocab
    return flat[flat < text_vocab], audio[(audio >= 0) & (audio <= AUDIO_CODES)]


# ---- the release folder: config.json + safetensors shards ----------------------------------

def read_config(root: Path) -> CovoAudioConfig:
    """config.json of a release folder, with a message that says what was wrong."""
    path = root / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"covo-audio-chat: {path} does not exist",
                             "MODEL_DIR must be the Covo-Audio-Chat release folder "
                             "(config.json, *.safetensors, tokenizer files)") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"covo-audio-chat: cannot read {path}: {exc}",
                             "re-copy the release's config.json") from exc
    missing = [k for k in ("llm_config", "encoder_config") if not isinstance(data.get(k), dict)]
    if missing:
        raise ModelLoadError(f"covo-audio-chat: {path} lacks {', '.join(missing)}",
                             "it must be the release's nested config (CovoAudioConfig)")
    return CovoAudioConfig.from_dict(data)


def shard_files(root: Path) -> list[Path]:
    """Every *.safetensors file of the folder, sorted (as the release's example.py reads)."""
    files = sorted(root.glob(SHARD_GLOB))
    if not files:
        found = ", ".join(sorted(p.name for p in root.iterdir())[:12]) or "nothing"
        raise ModelLoadError(f"covo-audio-chat: {root} holds no *.safetensors (found: {found})",
                             "copy the release's weight shards next to its config.json")
    return files


def shard_index(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """tensor name -> (file, shape) from the shard headers; a truncated file or a name in
    two files is an error naming them."""
    from safetensors import SafetensorError, safe_open

    index: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():
                    if key in index:
                        raise ModelLoadError(f"covo-audio-chat: tensor {key} is in both "
                                             f"{index[key][0]} and {file}",
                                             "remove the stray shard")
                    index[key] = (file, tuple(fh.get_slice(key).get_shape()))
        except SafetensorError as exc:
            raise ModelLoadError(
                f"covo-audio-chat: weights file {file} ({file.stat().st_size:,} bytes) is "
                f"corrupt or truncated: {exc}", "copy it again from the release") from exc
    return index


def check_index(model: nn.Module, index: dict[str, tuple[Path, tuple[int, ...]]],
                root: Path) -> None:
    """Every tensor of the model in the files with its shape, and nothing else."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(index))
    if missing:
        raise ModelLoadError(
            f"covo-audio-chat: the shards in {root} lack {len(missing)} tensor(s) of "
            f"{type(model).__name__}, e.g. {', '.join(missing[:4])}",
            "the folder is incomplete or of another model: copy every shard of the release")
    extra = sorted(set(index) - set(want))
    if extra:
        raise ModelLoadError(
            f"covo-audio-chat: {index[extra[0]][0]} holds {len(extra)} tensor(s) that "
            f"{type(model).__name__} does not have, e.g. {', '.join(extra[:4])}",
            "config.json does not describe these weights (wrong config or foreign shard)")
    for key, shape in want.items():
        if index[key][1] != shape:
            raise ModelLoadError(
                f"covo-audio-chat: tensor {key} in {index[key][0]} has shape "
                f"{list(index[key][1])}, but config.json gives {list(shape)}",
                "config.json and the weights disagree: re-copy both from the release")


@torch.no_grad()
def load_shards(model: CovoAudioForCausalLM, files: list[Path]) -> None:
    """Copy every tensor from the shards into the model's allocated storage (cast to its
    dtype, on its device), then give the tensors no file holds (non-persistent buffers: the
    rotary frequencies) their computed values. check_index has matched names and shapes."""
    from safetensors import safe_open

    targets = model.state_dict(keep_vars=True)
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                t = targets[key]
                t.copy_(fh.get_tensor(key).to(t.device, t.dtype))
                t._is_hf_initialized = True
    compat.init_weights(model)  # initializes only the tensors not flagged as loaded


def save_release(model: CovoAudioForCausalLM, out: Path, shards: int = 2) -> list[Path]:
    """Write config.json + model-0000i-of-0000n.safetensors with the release's key names
    (llm.*, encoder.*, audio_adapter.*) and the index save_pretrained writes."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = ["CovoAudioForCausalLM"]
    write_json(out / "config.json", config)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    keys = list(state)
    per = -(-len(keys) // shards)
    files, weight_map = [], {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        files.append(out / name)
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
             "weight_map": weight_map}
    write_json(out / "model.safetensors.index.json", index)
    return files
