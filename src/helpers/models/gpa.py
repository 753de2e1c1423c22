"""GPA: a 0.31B Qwen3 causal LM for ASR, TTS and voice conversion (en, zh).

Shape (GPA on Ascend 910 adaptation report): Qwen3ForCausalLM, 28 layers, hidden 512,
intermediate 3072, 16 attention heads / 8 KV heads (GQA), head_dim 128, vocab 180,445, tied
embeddings, max positions 32,768: 312,625,152 parameters (312.6M).

Real profile: the GPA release directory (config.json, model.safetensors, modeling_qwen3.py and
configuration_qwen3.py, tokenizer files) read with AutoModelForCausalLM.from_pretrained(MODEL_DIR,
trust_remote_code=True) and AutoTokenizer, as the release is loaded.

Audio components (helpers.models.audio_components), at every profile and in the release's own
formats: speech_tokenizer (GLM-4-Voice's WhisperVQEncoder, helpers.models.glm_tokenizer; folder
glm-4-voice-tokenizer/) and codec (BiCodec with its wav2vec2-large-xlsr-53,
helpers.models.bicodec; folder BiCodec/). At profile real each is read from its folder when
the folder is there (strictly: a bad file is an error naming it); a MODEL_DIR without the
folder loads without that component and says so. The tiny profile saves both in those same
formats and reads them back through the same loaders.

TOKEN_LAYOUT is where the LM's vocabulary holds the audio tokens and the task markers
(AutoArk/GPA data_utils/audio_dataset_ark_audio.py: the offsets are its constructor defaults,
the markers the strings its prompts are built from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import compat
from helpers.models import audio_components as ac
from helpers.models.base import (
    Component,
    GraphTarget,
    LoadedModel,
    Recipe,
    Reference,
    shipped_tokenizer,
)

# AutoArk/GPA data_utils/audio_dataset_ark_audio.py: glm_semantic_token_offset=151727,
# global_token_offset=168111, semantic_token_offset=172207 (code-book sizes 16,384 / 4,096 /
# 8,192 make the three ranges adjacent: 151727 + 16384 = 168111, + 4096 = 172207, + 8192 =
# 180399 <= vocab 180,445); markers as its STT / TTS / VC prompts spell them.
TOKEN_LAYOUT: dict[str, Any] = {
    "glm": {"offset": 151_727, "size": 16_384, "start": "<|start_glm_token|>",
            "end": "<|end_glm_token|>"},
    "global": {"offset": 168_111, "size": 4_096, "start": "<|start_global_token|>",
               "end": "<|end_global_token|>"},
    "semantic": {"offset": 172_207, "size": 8_192, "start": "<|start_semantic_token|>",
                 "end": "<|end_semantic_token|>"},
    "content": {"start": "<|start_content|>", "end": "<|end_content|>"},
    "eos": "<|im_end|>",
    "source": "AutoArk/GPA data_utils/audio_dataset_ark_audio.py",
}


AUDIO_KINDS = ("glm", "global", "semantic")  # in vocabulary order, adjacent
AUDIO_TOKENS = sum(TOKEN_LAYOUT[k]["size"] for k in AUDIO_KINDS)  # 28,672
MARKERS = tuple(TOKEN_LAYOUT[k][e] for k in (*AUDIO_KINDS, "content") for e in ("start", "end"))
# the release's tokenizer names the BiCodec tokens (gpa_inference.py parses
# <|bicodec_semantic_N|> out of the decoded text; Spark-TTS names the global ones alike)
TOKEN_NAMES = {"global": "<|bicodec_global_{}|>", "semantic": "<|bicodec_semantic_{}|>"}


def lm_ids(kind: str, tokens: Any) -> Any:
    """Component token ids (0-based) -> the LM's ids for `kind` (glm, global, semantic),
    at the release's offsets."""
    return tokens + TOKEN_LAYOUT[kind]["offset"]


def gpa_tokenizer() -> Any:
    """The tiny / full-shape tokenizer: the shipped byte-level BPE plus the task markers and
    <|im_end|> as special tokens (the release's tokenizer has them; the audio tokens follow the
    text vocabulary as plain ids, see layout)."""
    tok = shipped_tokenizer()
    compat.add_special_tokens(tok, [*MARKERS, TOKEN_LAYOUT["eos"]])
    return tok


def layout(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Where this model's vocabulary holds the audio tokens: {kind: offset, size}, marker ids.

    The release's offsets (TOKEN_LAYOUT) when the LM's vocabulary holds them (real GPA, and the
    full-shape profile); a tokenizer that names the BiCodec tokens must agree with them. A
    smaller vocabulary (the tiny profile) holds the three ranges right after the text tokenizer,
    in the release's order and sizes.
    """
    from helpers.errors import ModelLoadError

    release_end = TOKEN_LAYOUT["semantic"]["offset"] + TOKEN_LAYOUT["semantic"]["size"]
    start = TOKEN_LAYOUT["glm"]["offset"] if vocab_size >= release_end else len(tokenizer)
    out: dict[str, Any] = {"source": TOKEN_LAYOUT["source"] if vocab_size >= release_end else
                           "tiny profile: the audio ranges follow the text tokenizer"}
    for kind in AUDIO_KINDS:
        out[kind] = {"offset": start, "size": TOKEN_LAYOUT[kind]["size"]}
        start += TOKEN_LAYOUT[kind]["size"]
        named = tokenizer.convert_tokens_to_ids(TOKEN_NAMES.get(kind, "").format(0)) if (
            kind in TOKEN_NAMES) else None
        if named not in (None, tokenizer.unk_token_id) and named != out[kind]["offset"]:
            raise ModelLoadError(
                f"gpa: the tokenizer puts {TOKEN_NAMES[kind].format(0)} at id {named}, the LM's "
                f"layout at {out[kind]['offset']} ({out['source']})",
                "use the release's tokenizer files with its model.safetensors")
    if start > vocab_size:
        raise ModelLoadError(f"gpa: the LM's vocabulary ({vocab_size:,}) cannot hold the audio "
                             f"tokens (they end at id {start:,})",
                             "the config.json is not GPA's (vocab_size 180,445)")
    missing = [m for m in (*MARKERS, TOKEN_LAYOUT["eos"])
               if tokenizer.convert_tokens_to_ids(m) in (None, tokenizer.unk_token_id)]
    if missing:
        raise ModelLoadError(f"gpa: the tokenizer has no token {', '.join(missing)}",
                             "use the release's tokenizer files (they hold the task markers)")
    out["markers"] = {m: tokenizer.convert_tokens_to_ids(m) for m in (*MARKERS,
                                                                      TOKEN_LAYOUT["eos"])}
    return out


GPA_REPORT = "GPA on Ascend 910 adaptation report (Qwen3 shape, head_dim 128, tied: 312.6M)"

# The published shape; tiny keeps the class and the ratios, shrinks every dimension.
FULL = dict(vocab_size=180_445, hidden_size=512, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            max_position_embeddings=32_768, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=32_768,
            tie_word_embeddings=True)


AUDIO_PARTS = ("speech_tokenizer", "codec")


class GpaRecipe(Recipe):
    name = "gpa"
    title = "GPA (Qwen3 0.31B speech LM)"
    components = (
        Component("lm", "Qwen3 causal LM over text and audio tokens"),
        *(Component(n, ac.part(n).role, ac.part(n).subfolder) for n in AUDIO_PARTS),
    )
    audio_parts = AUDIO_PARTS
    builtin_only = AUDIO_PARTS
    task_family = "gpa"
    graph_target = GraphTarget(
        "cuda", 10.0, "project target: static cache + CUDA graphs at least 10x eager HF "
        "generate for the GPA LM at batch 1 (launch-bound decode)")
    references = (
        Reference("lm", 312.6e6, 0.05e6, "312.6M", GPA_REPORT),
    )
    model_types = ("qwen3",)  # the release's config.json (Qwen3ForCausalLM)
    layout = ("MODEL_DIR/config.json + model.safetensors (+ modeling_qwen3.py, "
              "configuration_qwen3.py for trust_remote_code) + tokenizer files; audio: "
              "glm-4-voice-tokenizer/ (config.json, model.safetensors, preprocessor_config.json) "
              "and BiCodec/ (config.yaml, model.safetensors, wav2vec2-large-xlsr-53/)")

    def configs(self, profile: str) -> dict[str, Any]:
        from transformers import Qwen3Config

        tok = gpa_tokenizer()
        ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
        if profile == "full-shape":
            return {"lm": Qwen3Config(**FULL, **ids), **ac.configs(self.audio_parts, profile)}
        if profile == "tiny":  # the text tokenizer, then the 28,672 audio tokens (see layout)
            return {"lm": Qwen3Config(vocab_size=len(tok) + AUDIO_TOKENS, **TINY, **ids),
                    **ac.configs(self.audio_parts, profile)}
        return super().configs(profile)

    def read_configs(self, root: Path) -> dict[str, Any]:
        from transformers import AutoConfig

        return {"lm": AutoConfig.from_pretrained(str(root), trust_remote_code=True),
                **ac.read_configs(self, root)}

    def loader(self, component: str) -> Any:
        from transformers import AutoModelForCausalLM

        return ac.loader(component) if component in self.builtin_only else AutoModelForCausalLM

    def read_kwargs(self, component: str) -> dict[str, Any]:
        return {} if component in self.builtin_only else {"trust_remote_code": True}

    def random_tokenizer(self) -> Any:
        return gpa_tokenizer()

    def saved_here(self, root: Path, name: str) -> bool:
        return ac.saved_in(self.component_dir(root, name), name)

    def dir_components(self, root: Path) -> list[str]:
        """The save_pretrained-layout components weights.check_dir validates: the LM only (the
        audio folders are in their release formats and checked by their own loaders)."""
        return [n for n in self.component_names() if n not in self.builtin_only]

    def example_inputs(self, loaded: LoadedModel, component: str, batch: int) -> dict[str, Any]:
        if component in self.builtin_only and component in loaded.components:
            return ac.example_inputs(component, loaded.components[component], batch)
        return super().example_inputs(loaded, component, batch)


RECIPE = GpaRecipe()
