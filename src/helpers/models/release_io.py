"""Reading and writing audio components in their release's own folder formats, strictly.

The GPA release keeps its audio sub-models as their upstream projects save them, not as
save_pretrained folders: glm-4-voice-tokenizer/ (config.json + model.safetensors of
WhisperVQEncoder) and BiCodec/ (config.yaml + model.safetensors of the whole BiCodec, plus
wav2vec2-large-xlsr-53/, a transformers folder). The classes here read those files with every
tensor accounted for: a tensor missing from the file, one the file has that the class does not
know, or one of the wrong shape is an error naming the file and what was expected.

`ReleaseModule` gives such a class the interface the recipes already use for transformers
models (from_pretrained / save_pretrained / _from_config / initialize_weights), so the tiny
profile is saved in the release's format and read back through the very loader real weights
take.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from helpers.errors import ModelLoadError


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object from `path`; a missing or malformed file names itself and `fix`."""
    if not path.is_file():
        raise ModelLoadError(f"{what}: {path} is missing", fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{what}: {path} is not valid JSON ({exc})", fix) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what}: {path} holds {type(data).__name__}, not a JSON object", fix)
    return data


def read_yaml(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A YAML mapping from `path` (BiCodec's config.yaml)."""
    import yaml

    if not path.is_file():
        raise ModelLoadError(f"{what}: {path} is missing", fix)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"{what}: {path} is not valid YAML ({exc})", fix) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what}: {path} holds no mapping", fix)
    return data


def read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file on the CPU; a missing or truncated file is named."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"{what}: weights file {path} is missing",
                             "copy the release's model.safetensors into that folder")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(
            f"{what}: weights file {path} ({path.stat().st_size:,} bytes) is corrupt or "
            f"truncated: {exc}", "copy the complete model.safetensors again") from exc


def check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path,
                what: str, optional: Iterable[str] = ()) -> None:
    """Refuse a file whose tensors differ from the module's by name or shape.

    `optional` lists name parts the file may or may not hold (state the release's loader
    recomputes or never uses, e.g. BatchNorm's num_batches_tracked); their shapes still count.
    """
    opt = tuple(optional)

    def required(key: str) -> bool:
        return not any(part in key for part in opt)

    missing = sorted(k for k in expected if k not in found and required(k))
    unexpected = sorted(k for k in found if k not in expected and required(k))
    shapes = sorted(f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})"
                    for k in expected if k in found and found[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"lacks {len(missing)} tensor(s) the class expects (e.g. "
                        f"{', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"has {len(unexpected)} tensor(s) the class does not know (e.g. "
                        f"{', '.join(unexpected[:4])})")
    if shapes:
        problems.append(f"has {len(shapes)} tensor(s) of the wrong shape (e.g. "
                        f"{'; '.join(shapes[:3])})")
    if problems:
        raise ModelLoadError(f"{what}: {path} " + " and ".join(problems),
                             "the weights do not match the config next to them: copy the "
                             "release's folder again, config and weights together")


def weight_norm_gain(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """||v|| over every dim where g has size 1 (torch's weight-norm gain for direction v)."""
    dims = [i for i in range(v.dim()) if g.shape[i] == 1]
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True) if dims else v.abs()


@torch.no_grad()
def random_init(module: nn.Module, std: float = 0.02) -> None:
    """Deterministic random weights for any tree of standard layers (under the caller's seed):
    normal(0, std) weights and zero biases for linear / conv / embedding layers, ones and zeros
    for norms (BatchNorm's running statistics too), weight-norm gains equal to the norm of
    their direction (so weight == direction, as a fresh weight_norm starts)."""
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if name == "bias" or name.endswith("_bias"):
                p.zero_()
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)):
                p.fill_(1.0)
            elif name in ("weight_g", "original0"):
                continue  # set from its direction below
            else:
                p.normal_(0.0, std)
        for gname, vname in (("weight_g", "weight_v"), ("original0", "original1")):
            g, v = getattr(m, gname, None), getattr(m, vname, None)
            if isinstance(g, torch.Tensor) and isinstance(v, torch.Tensor):
                g.copy_(weight_norm_gain(g, v))
        if isinstance(m, nn.BatchNorm1d) and m.running_mean is not None:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.num_batches_tracked.zero_()


@torch.no_grad()
def torch_default_init(module: nn.Module) -> None:
    """PyTorch's own layer inits (kaiming-uniform weights, uniform biases, N(0, 1) embeddings)
    over a tree, weight-normed convolutions included (direction v drawn like a weight, gain
    g = ||v||). Parameters of other kinds keep what random_init gave them."""
    for m in module.modules():
        pair = next(((m, g, v) for g, v in (("weight_g", "weight_v"),)
                     if isinstance(getattr(m, v, None), torch.Tensor)), None)
        param = getattr(getattr(m, "parametrizations", None), "weight", None)
        if pair is not None or param is not None:
            v = m.weight_v if pair is not None else param.original1
            g = m.weight_g if pair is not None else param.original0
            nn.init.kaiming_uniform_(v, a=5 ** 0.5)
            g.copy_(weight_norm_gain(g, v))
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor):
                fan_in = v.shape[1] * (v[0, 0].numel() if v.dim() > 2 else 1)
                nn.init.uniform_(bias, -fan_in ** -0.5, fan_in ** -0.5)
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d, nn.Embedding)):
            m.reset_parameters()


class ReleaseModule(nn.Module):
    """The transformers-like surface of a release-format component (see the module docstring).

    A subclass sets `config_class` (with from_pretrained(folder) and save(folder)) and defines
    `read_weights(folder, config)` and `write_weights(folder)`; `reset_parameters_()` gives
    random weights under the current seed.
    """

    config_class: ClassVar[type]
    main_input_name: ClassVar[str] = "input_values"

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    # ---- what a subclass defines ----------------------------------------------------------
    def read_weights(self, folder: Path) -> None:
        raise NotImplementedError

    def write_weights(self, folder: Path) -> None:
        raise NotImplementedError

    def reset_parameters_(self) -> None:
        random_init(self)

    # ---- the transformers-like surface ----------------------------------------------------
    @classmethod
    def _from_config(cls, config: Any, dtype: torch.dtype | None = None, **_: Any) -> Any:
        model = cls(config)
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: Any = None,
                        dtype: torch.dtype | None = None, device_map: Any = None,
                        output_loading_info: bool = False, **_: Any) -> Any:
        """Read a release-format folder strictly (every tensor by name and shape)."""
        root = Path(folder)
        cfg = config if config is not None else cls.config_class.from_pretrained(root)
        model = cls(cfg)
        model.read_weights(root)
        if dtype is not None:
            model.to(dtype)
        if isinstance(device_map, dict) and len(set(device_map.values())) == 1:
            model.to(next(iter(device_map.values())))
        model.eval()
        info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
        return (model, info) if output_loading_info else model

    def save_pretrained(self, folder: str | Path) -> None:
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.config.save(root)
        self.write_weights(root)

    def initialize_weights(self) -> None:
        self.reset_parameters_()

    def tie_weights(self) -> None:
        """No tied tensors (the transformers interface asks)."""
