"""GPA: a 0.31B Qwen3 causal LM for ASR, TTS and voice conversion (en, zh).

Shape (GPA on Ascend 910 adaptation report): Qwen3ForCausalLM, 28 layers, hidden 512,
intermediate 3072, 16 attention heads / 8 KV heads (GQA), head_dim 128, vocab 180,445, tied
embeddings, max positions 32,768: 312,625,152 parameters (312.6M).

Real profile: the GPA release directory (config.json, model.safetensors, modeling_qwen3.py and
configuration_qwen3.py, tokenizer files) read with AutoModelForCausalLM.from_pretrained(MODEL_DIR,
trust_remote_code=True) and AutoTokenizer, as the release is loaded.

Audio components (helpers.models.audio_components), at the tiny and full-shape profiles:
speech_tokenizer (Whisper-large-v3-shape encoder, 4x pooling to 12.5 Hz, 16,384 codes; folder
glm-4-voice-tokenizer/ as in the release) and codec (DAC-style, 50 Hz codes from 8,192, x320 to
16 kHz; folder BiCodec/). The release's own audio sub-models use their projects' code and
formats, so at profile real they are read only from folders that hold saves of these classes
(helpers.models.audio_components.saved_in); otherwise the LM alone is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.models import audio_components as ac
from helpers.models.base import Component, LoadedModel, Recipe, Reference, shipped_tokenizer

GPA_REPORT = "GPA on Ascend 910 adaptation report (Qwen3 shape, head_dim 128, tied: 312.6M)"

# The published shape; tiny keeps the class and the ratios, shrinks every dimension.
FULL = dict(vocab_size=180_445, hidden_size=512, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            max_position_embeddings=32_768, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=32_768,
            tie_word_embeddings=True)


class GpaRecipe(Recipe):
    name = "gpa"
    title = "GPA (Qwen3 0.31B speech LM)"
    components = (
        Component("lm", "Qwen3 causal LM over text and audio tokens"),
        *(Component(n, ac.part(n).role, ac.part(n).subfolder) for n in ac.names_for("gpa")),
    )
    builtin_only = ac.names_for("gpa")
    references = (
        Reference("lm", 312.6e6, 0.05e6, "312.6M", GPA_REPORT),
    )
    model_types = ("qwen3",)  # the release's config.json (Qwen3ForCausalLM)
    layout = ("MODEL_DIR/config.json + model.safetensors (+ modeling_qwen3.py, "
              "configuration_qwen3.py for trust_remote_code) + tokenizer files")

    def configs(self, profile: str) -> dict[str, Any]:
        from transformers import Qwen3Config

        tok = shipped_tokenizer()
        ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
        if profile == "full-shape":
            return {"lm": Qwen3Config(**FULL, **ids), **ac.configs(self.name, profile)}
        if profile == "tiny":
            return {"lm": Qwen3Config(vocab_size=len(tok), **TINY, **ids),
                    **ac.configs(self.name, profile)}
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

    def saved_here(self, root: Path, name: str) -> bool:
        return ac.saved_in(self.component_dir(root, name), name)

    def example_inputs(self, loaded: LoadedModel, component: str, batch: int) -> dict[str, Any]:
        if component in self.builtin_only and component in loaded.components:
            return ac.example_inputs(component, loaded.components[component], batch)
        return super().example_inputs(loaded, component, batch)


RECIPE = GpaRecipe()
