"""Covo-Audio-Chat: Whisper-large-v3 encoder -> audio adapter -> Qwen2 7B LM, and token2wav.

The release (GitHub Tencent/Covo-Audio) is the specification; the classes are our own, in
helpers.models.covo_model (CovoAudioForCausalLM: llm / encoder / audio_adapter, the release's
config.json and safetensors shards), helpers.models.token2wav (the flow-matching DiT and the
flow-VAE decoder, the release's token2wav folder) and helpers.models.covo_frontend (wav ->
log-mel, audio-token count, the chat prompt). Each of those files names the upstream source
of every fact it uses.

Components as the stages see them (the release's module in brackets):
  audio_encoder  [encoder]        WhisperEncoder, whisper-large-v3 shape: 636,968,960
  adapter        [audio_adapter]  3 DownsampleLayers (Conv1d stride 2 -> ReLU -> Linear 2048
                                  -> ReLU -> Linear), 50 Hz -> 6.25 Hz: 35,208,960
  lm             [llm]            Qwen2ForCausalLM, vocab 168,055, untied: 7,730,240,000
  vocoder        [token2wav/]     Token2Wav: audio tokens -> 24 kHz (not in the 8.40B)
  chat           the end-to-end CovoAudioForCausalLM: 8,402,417,920 (8.40B) without token2wav

Real profile, MODEL_DIR as released:
  config.json (model_type covo_audio, nested llm_config / encoder_config), every
  *.safetensors shard (keys llm.*, encoder.*, audio_adapter.*), the tokenizer files (with
  <|begofcAUDIO|> <|cAUDIO|> <|endofcAUDIO|> <|im_start|> <|im_end|>), and token2wav/
  (model.pt + global_mean_var.npy from the model download, config.json and prompt/*.npy from
  the GitHub repository's token2wav/). Without token2wav/ the vocoder is left out and the load
  notes and stage 6 say so; without its config.json the release's values are assumed.

Tiny profile: the same classes at small widths, saved in that layout (two shards and an index,
the shipped tokenizer with the chat and audio tokens added, a token2wav folder) and read back
by the same loader. Its LM vocabulary is the tokenizer's plus 16,384 audio tokens, as in the
release (151,671 text + 16,384 = 168,055).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from helpers import audio, compat
from helpers.errors import ModelLoadError
from helpers.models import audio_components as ac
from helpers.models import covo_frontend as frontend
from helpers.models import covo_model as cm
from helpers.models import placement, weights
from helpers.models import token2wav as t2w
from helpers.models.base import (
    TOKENIZER_DIR,
    Component,
    LoadedModel,
    Recipe,
    Reference,
    _dispatch,
    text_inputs,
)

COVO_SOURCE = ("Covo-Audio-Chat release (GitHub Tencent/Covo-Audio, covoaudio/"
               "configuration_covo_audio.py defaults built with modeling_covo_audio.py's "
               "classes on the meta device)")
COVO_REPORT = "Covo-Audio-Chat on 2x Ascend 910 adaptation report (published component sizes)"
FIXTURE = "en_fox"
VOCODER_SUB = "token2wav"

ENCODER_TINY = dict(num_mel_bins=128, max_source_positions=1500, d_model=48, encoder_layers=2,
                    encoder_attention_heads=4, encoder_ffn_dim=96, decoder_layers=1,
                    decoder_attention_heads=4, decoder_ffn_dim=96)
LLM_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32_768,
                tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-06)


def tiny_tokenizer() -> Any:
    """The shipped byte-level BPE plus the release's chat and audio tokens."""
    tok = compat.load_tokenizer(TOKENIZER_DIR)
    compat.add_special_tokens(tok, [cm.AUDIO_BEGIN, cm.AUDIO_TOKEN, cm.AUDIO_END])
    return tok


def placeholder_note(config: cm.CovoAudioConfig, tokenizer: Any, root: Path) -> list[str]:
    """A note when config.json's audio_token_index is not the tokenizer's <|cAUDIO|> id (the
    release's generation code hard-codes 151666, the tokenizer's id, and never reads it)."""
    token = tokenizer.convert_tokens_to_ids(cm.AUDIO_TOKEN)
    if config.audio_token_index == token:
        return []
    return [f"{root / 'config.json'}: audio_token_index is {config.audio_token_index}, the "
            f"tokenizer's {cm.AUDIO_TOKEN} is {token}; the audio placeholders are {token}, as "
            f"the release's prepare_inputs_for_generation hard-codes "
            f"{cm.RELEASE_AUDIO_TOKEN_ID} (its tokenizer's id) and never reads the config's"]


class CovoRecipe(Recipe):
    name = "covo-audio-chat"
    title = "Covo-Audio-Chat (Whisper encoder + adapter + Qwen2 7B, 8.40B; token2wav)"
    components = (
        Component("audio_encoder", "Whisper-large-v3 encoder (release module `encoder`)"),
        Component("adapter", "3 DownsampleLayers, 50 Hz -> 6.25 Hz (release `audio_adapter`)"),
        Component("lm", "Qwen2 causal LM, untied (release `llm`)"),
        Component("vocoder", ac.part("vocoder").role, VOCODER_SUB),
    )
    audio_parts = ("vocoder",)
    builtin_only = ("vocoder",)
    disk_offload = False  # the release's shards are read by its own loader (load_shards)
    task_family = "covo-audio-chat"
    model_types = (cm.MODEL_TYPE,)
    fixture = FIXTURE  # the clip its example inputs are made from
    references = (
        Reference("audio_encoder+adapter+lm", 8_402_417_920, 0.5, "8,402,417,920", COVO_SOURCE),
        Reference("lm", 7_730_240_000, 0.5, "7,730,240,000", COVO_SOURCE),
        Reference("audio_encoder", 636_968_960, 0.5, "636,968,960", COVO_SOURCE),
        Reference("adapter", 35_208_960, 0.5, "35,208,960", COVO_SOURCE),
        Reference("lm.input_embeddings", 602.3e6, 0.05e6, "602.3M", COVO_REPORT),
        Reference("lm.output_embeddings", 602.3e6, 0.05e6, "602.3M", COVO_REPORT),
    )
    entry = "chat"
    layout = ("MODEL_DIR/config.json (model_type covo_audio), MODEL_DIR/*.safetensors (llm.*, "
              "encoder.*, audio_adapter.*), tokenizer files, MODEL_DIR/token2wav/ (model.pt, "
              "global_mean_var.npy, config.json, prompt/*.npy)")

    # ---- configs ------------------------------------------------------------------------
    def configs(self, profile: str) -> dict[str, Any]:
        from transformers import Qwen2Config, WhisperConfig

        if profile == "full-shape":
            return {"model": cm.CovoAudioConfig(), "vocoder": ac.config("vocoder", profile)}
        if profile != "tiny":
            return super().configs(profile)
        tok = tiny_tokenizer()
        text = len(tok)
        llm = Qwen2Config(**LLM_TINY, vocab_size=text + cm.AUDIO_CODES,
                          eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                          pad_token_id=tok.pad_token_id, bos_token_id=None)
        model = cm.CovoAudioConfig(llm_config=llm, encoder_config=WhisperConfig(**ENCODER_TINY),
                                   audio_token_index=text)
        return {"model": model, "vocoder": ac.config("vocoder", profile)}

    def shape_configs(self, profile: str, model_dir: str | Path = "",
                      check_weights: bool = False) -> dict[str, Any]:
        self.check_profile(profile)
        if profile != "real":
            return self.configs(profile)
        root = self.release_root(model_dir)
        if not root.is_dir():
            raise ModelLoadError(f"{self.name}: MODEL_DIR {root} is not a directory",
                                 f"expected the release folder: {self.layout}")
        configs: dict[str, Any] = {"model": cm.read_config(root)}
        if check_weights:
            cm.shard_index(cm.shard_files(root))
        vocoder = root / VOCODER_SUB
        if t2w.present(vocoder):
            configs["vocoder"] = t2w.Token2WavConfig.from_pretrained(vocoder)
        return configs

    def saved_here(self, root: Path, name: str) -> bool:
        return name == "vocoder" and t2w.present(root / VOCODER_SUB)

    def loader(self, component: str) -> Any:
        from transformers import Qwen2ForCausalLM
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return {"audio_encoder": WhisperEncoder, "adapter": cm.CovoAudioAdapter,
                "lm": Qwen2ForCausalLM, "vocoder": t2w.Token2Wav}[component]

    def import_code(self, profile: str) -> None:
        import transformers.modeling_utils  # noqa: F401
        import transformers.models.qwen2.modeling_qwen2  # noqa: F401
        import transformers.models.whisper.modeling_whisper  # noqa: F401

    # ---- skeletons and random weights -----------------------------------------------------
    def skeletons(self, configs: dict[str, Any], dtype: torch.dtype = torch.float32,
                  ) -> dict[str, nn.Module]:
        whole = weights.skeleton(cm.CovoAudioForCausalLM, configs["model"], dtype)
        out: dict[str, nn.Module] = dict(cm.parts(whole))
        if "vocoder" in configs:
            out["vocoder"] = weights.skeleton(t2w.Token2Wav, configs["vocoder"], dtype)
        return out

    def _random(self, configs: dict[str, Any], maps: dict[str, dict[str, str]], seed: int,
                dtype: torch.dtype) -> tuple[cm.CovoAudioForCausalLM, dict[str, nn.Module]]:
        """Random weights for the whole model (seed) and token2wav (seed + 1), placed by maps."""
        whole = weights.skeleton(cm.CovoAudioForCausalLM, configs["model"], dtype)
        whole_map = {f"{cm.PREFIXES[n]}.{k}" if k else cm.PREFIXES[n]: dev
                     for n, m in maps.items() if n in cm.PREFIXES for k, dev in m.items()}
        weights.materialize(whole, whole_map, seed)
        modules = {n: _dispatch(m, maps[n]) for n, m in cm.parts(whole).items()}
        if "vocoder" in configs:
            voc = weights.skeleton(t2w.Token2Wav, configs["vocoder"], dtype)
            modules["vocoder"] = weights.materialize(voc, maps["vocoder"], seed + 1)
        return whole, modules

    def build(self, profile: str = "tiny", seed: int = 0, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
        configs = self.shape_configs(profile)
        with weights.quiet():
            skel = self.skeletons(configs, dtype)
            return self._random(configs, placement.single(skel, torch.device(device)), seed,
                                dtype)[1]

    def save_random(self, out: Path, profile: str, seed: int) -> None:
        """The release's layout: config.json, 2 shards + index, tokenizer, token2wav/."""
        configs = self.shape_configs(profile)
        with weights.quiet():
            skel = self.skeletons(configs)
            whole, modules = self._random(configs, placement.single(skel, torch.device("cpu")),
                                          seed, torch.float32)
        cm.save_release(whole, out)
        tiny_tokenizer().save_pretrained(str(out))
        modules["vocoder"].save_pretrained(out / VOCODER_SUB)

    random_notes = ("full-shape uses the tiny tokenizer (no release tokenizer is shipped); "
                    "its ids stay inside the 168,055-token vocabulary",)

    def random_components(self, configs: dict[str, Any], skel: dict[str, nn.Module],
                          maps: dict[str, dict[str, str]], seed: int,
                          dtype: torch.dtype) -> dict[str, nn.Module]:
        """The whole CovoAudioForCausalLM at once (the release's one module), then its parts."""
        return self._random(configs, maps, seed, dtype)[1]

    def random_tokenizer(self) -> Any:
        return tiny_tokenizer()

    # ---- reading the release folder -------------------------------------------------------
    def _load_dir(self, root: Path, device: torch.device, dtype: torch.dtype, device_map: str,
                  be: Any, timings: dict[str, float], notes: list[str]) -> tuple[Any, Any, Any]:
        with be.timer() as t:
            configs = self.shape_configs("real", root, check_weights=False)
            files = cm.shard_files(root)
            index = cm.shard_index(files)
            skel = self.skeletons(configs, dtype)
            maps = self._plan(skel, device, dtype, device_map, notes)
            whole = weights.skeleton(cm.CovoAudioForCausalLM, configs["model"], dtype)
            cm.check_index(whole, index, root)
            for name, module in cm.parts(whole).items():
                for key, dev in maps[name].items():
                    (module.get_submodule(key) if key else module).to_empty(device=dev)
        timings["config_init_s"] = t.seconds
        with be.timer() as t:
            tok = self.read_tokenizer(root)
            frontend.check_tokenizer(tok)
        timings["tokenizer_s"] = t.seconds
        notes.extend(placeholder_note(configs["model"], tok, root))
        with be.timer() as t:
            with weights.quiet():
                cm.load_shards(whole, files)
            modules = {n: _dispatch(m.eval(), maps[n]) for n, m in cm.parts(whole).items()}
            if "vocoder" in configs:
                modules["vocoder"] = t2w.Token2Wav.from_pretrained(
                    root / VOCODER_SUB, configs["vocoder"], dtype).to(maps["vocoder"][""])
            else:
                notes.append(f"vocoder: {root / VOCODER_SUB} holds no token2wav checkpoint "
                             f"({t2w.CHECKPOINT}), so token2wav is not loaded")
        timings["weights_read_s"] = t.seconds
        timings["to_device_s"] = 0.0
        notes.append(f"{len(files)} safetensors shard(s) read straight onto their devices "
                     "(as the release's example.py reads them), so to_device_s is 0")
        return modules, tok, maps

    def assemble(self, modules: dict[str, nn.Module], tokenizer: Any) -> nn.Module:
        frontend.check_tokenizer(tokenizer)
        lm, enc, ada = modules["lm"], modules["audio_encoder"], modules["adapter"]
        config = cm.CovoAudioConfig(llm_config=lm.config, encoder_config=enc.config,
                                    adapter_downsample=ada.downsample)
        return cm.from_parts(config, lm, enc, ada, tokenizer.convert_tokens_to_ids(cm.AUDIO_TOKEN))

    # ---- inputs -------------------------------------------------------------------------
    def audio_tokens(self, loaded: LoadedModel) -> int:
        """Adapter frames per 30-s segment (188 for the 1500 encoder positions)."""
        frames = loaded.components["audio_encoder"].config.max_source_positions
        return loaded.components["adapter"].output_length(frames)

    def fixture_features(self, loaded: LoadedModel, batch: int) -> torch.Tensor:
        """The first 30-s segment's log-mel of the fixture, [B, 128, 3000], encoder dtype."""
        enc = loaded.components["audio_encoder"]
        prep = frontend.prepare(*frontend.read(audio.fixture(FIXTURE).path))
        feats = frontend.features(prep, loaded.input_device("audio_encoder"),
                                  next(enc.parameters()).dtype)
        return feats[:1].repeat(batch, 1, 1)

    def chat_inputs(self, loaded: LoadedModel, batch: int = 1) -> dict[str, torch.Tensor]:
        """The release's prompt for the fixture, repeated over the batch (one clip a row)."""
        enc = loaded.components["audio_encoder"]
        inputs = frontend.chat_inputs(loaded.tokenizer, *frontend.read(audio.fixture(FIXTURE).path),
                                      loaded.input_device("lm"),
                                      next(enc.parameters()).dtype)
        return {"input_ids": inputs["input_ids"].repeat(batch, 1),  # [B, S]
                "attention_mask": inputs["attention_mask"].repeat(batch, 1),  # [B, S]
                "input_features": inputs["input_features"][:1].repeat(batch, 1, 1)}

    def example_inputs(self, loaded: LoadedModel, component: str,
                       batch: int) -> dict[str, torch.Tensor]:
        if component == "audio_encoder":
            return {"input_features": self.fixture_features(loaded, batch)}
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
            return self.chat_inputs(loaded, batch)
        if component == "vocoder" and component in loaded.components:
            return ac.example_inputs(component, loaded.components[component], batch)
        raise KeyError(f"{self.name} has no component {component!r}; known: {loaded.input_names()}")

    def audio_seconds(self, loaded: LoadedModel, component: str,
                      inputs: dict[str, torch.Tensor]) -> float | None:
        """token2wav: the seconds of audio it writes for the tokens (other parts: None)."""
        if component != "vocoder" or "audio_tokens" not in inputs:
            return None
        voc = loaded.components["vocoder"]
        return voc.output_samples(inputs["audio_tokens"].shape[1]) / voc.config.sample_rate


RECIPE = CovoRecipe()
