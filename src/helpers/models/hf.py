"""hf: any Hugging Face causal LM directory (MODEL_DIR), for models without a recipe.

Real profile only (there are no built-in shapes): AutoConfig / AutoModelForCausalLM /
AutoTokenizer from MODEL_DIR with trust_remote_code=True, like a model's own release code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.models.base import Component, Recipe


class HfRecipe(Recipe):
    name = "hf"
    title = "Hugging Face causal LM (MODEL_DIR)"
    components = (Component("lm", "causal LM read with AutoModelForCausalLM"),)
    profiles = ("real",)
    layout = "MODEL_DIR/config.json + model*.safetensors + tokenizer files (a save_pretrained folder)"

    def read_configs(self, root: Path) -> dict[str, Any]:
        from transformers import AutoConfig

        return {"lm": AutoConfig.from_pretrained(str(root), trust_remote_code=True)}

    def loader(self, component: str) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def read_kwargs(self, component: str) -> dict[str, Any]:
        return {"trust_remote_code": True}


RECIPE = HfRecipe()
