"""Reading weights from a model directory, and materializing random weights, with clear errors.

A model directory is what `save_pretrained` writes: config.json plus model.safetensors (or a
sharded model.safetensors.index.json with its shards; pytorch_model.bin is accepted too).
Before transformers reads it, `check_dir` verifies that it exists, that config.json parses,
that the weight files are all there and that every safetensors header covers its file, so a
missing or truncated file is reported with its path and what was expected instead of a deep
traceback. `read` then calls the class's from_pretrained and re-raises any failure with the
path and the component.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helpers import compat
from helpers.errors import ModelLoadError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
SAVE_PRETRAINED = "a save_pretrained folder: config.json + model.safetensors (or sharded model-*.safetensors with model.safetensors.index.json)"



def check_dir(path: Path, what: str, check_weights: bool = True, layout: str = "") -> list[Path]:
    """Validate a component directory before loading; returns its weight files.

    `what` names the component for the message, e.g. "covo-audio-chat audio_encoder";
    `layout` (the recipe's MODEL_DIR layout) is added to the message when something is missing.
    """
    expected = f"expected {SAVE_PRETRAINED}" + (f"; layout: {layout}" if layout else "")
    if not path.exists():
        raise ModelLoadError(f"{what}: MODEL_DIR path {path} does not exist; {expected}")
    if not path.is_dir():
        raise ModelLoadError(f"{what}: {path} is a file, not a directory; {expected}")
    config = path / "config.json"
    if not config.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
        raise ModelLoadError(f"{what}: {path} has no config.json (found: {found}); {expected}")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{what}: {config} is not valid JSON ({exc}); re-copy the model's config.json") from exc
    if not check_weights:
        return []
    files = weight_files(path, what)
    for file in files:
        if file.suffix == ".safetensors":
            check_safetensors(file, what)
    return files


def weight_files(path: Path, what: str) -> list[Path]:
    """The weight files of a directory, resolved through an index when the weights are sharded."""
    for index_name in (SAFETENSORS_INDEX, PYTORCH_BIN_INDEX):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, AttributeError) as exc:
                raise ModelLoadError(
                    f"{what}: {index} is not a valid weight index (needs a 'weight_map' object): {exc}"
                ) from exc
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise ModelLoadError(
                    f"{what}: {index} lists {len(shards)} shard(s) but {len(missing)} are missing "
                    f"from {path}: {', '.join(missing[:5])}"
                )
            return [path / s for s in shards]
    for name in (SAFETENSORS, PYTORCH_BIN):
        if (path / name).is_file():
            return [path / name]
    found = ", ".join(sorted(p.name for p in path.iterdir())[:12])
    raise ModelLoadError(
        f"{what}: {path} has config.json but no weights (found: {found}); expected {SAVE_PRETRAINED}"
    )


def check_safetensors(file: Path, what: str) -> None:
    """Open the header: safetensors verifies that its tensors cover the file exactly."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            fh.keys()
    except SafetensorError as exc:
        size = file.stat().st_size
        raise ModelLoadError(
            f"{what}: weights file {file} ({size:,} bytes) is corrupt or truncated: {exc}; "
            "expected a complete safetensors file as written by save_pretrained: copy it again"
        ) from exc


def read(cls: Any, path: Path, what: str, config: Any, dtype: torch.dtype,
         device_map: dict[str, str] | None, **kwargs: Any) -> nn.Module:
    """cls.from_pretrained(path) with the given config; any failure names the path.

    Missing, mis-shaped and unknown tensors are errors too (transformers would initialize the
    missing ones randomly and drop the unknown ones, only warning, which would make every later
    number meaningless for real weights).
    """
    from safetensors import SafetensorError

    try:
        model, info = cls.from_pretrained(
            str(path), config=config, dtype=dtype, device_map=device_map,
            output_loading_info=True, **kwargs,
        )
    except ModelLoadError:  # a release-format loader already names the file and the fix
        raise
    except SafetensorError as exc:
        raise ModelLoadError(
            f"{what}: cannot read the weights in {path}: {exc}; expected complete safetensors "
            "files as written by save_pretrained: copy them again"
        ) from exc
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{what}: loading {path} with {getattr(cls, '__name__', cls)}.from_pretrained failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        bad = missing or mismatched
        kind = "lack" if missing else "have wrong shapes for"
        raise ModelLoadError(
            f"{what}: the weights in {path} {kind} {len(bad)} tensor(s) that "
            f"{type(model).__name__} expects (e.g. {', '.join(bad[:4])}); the checkpoint does not "
            "match its config.json"
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        raise ModelLoadError(
            f"{what}: {_holder(path, unexpected[0], what)} holds {len(unexpected)} tensor(s) that "
            f"{type(model).__name__} does not know (e.g. {', '.join(unexpected[:4])}), which "
            "loading would drop silently",
            "the checkpoint does not match its config.json: copy the release's folder again, "
            "config and weights together")
    return model.eval()


def _holder(path: Path, key: str, what: str) -> Path:
    """The weight file of `path` that holds tensor `key` (the folder when none says so)."""
    from safetensors import safe_open

    for file in weight_files(path, what):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as fh:
                if key in fh.keys():
                    return file
    return path


def construct(cls: Any, config: Any, dtype: torch.dtype) -> nn.Module:
    """An instance of cls for config, under the current default device (meta for skeletons)."""
    if hasattr(cls, "from_config"):  # Auto* classes pick the architecture from config
        return cls.from_config(config, dtype=dtype, trust_remote_code=True)
    return cls._from_config(config, dtype=dtype)


def skeleton(cls: Any, config: Any, dtype: torch.dtype) -> nn.Module:
    """The module tree on the meta device: shapes and counts without allocating memory."""
    with torch.device("meta"):
        return construct(cls, config, dtype)


def materialize(module: nn.Module, device_map: dict[str, str], seed: int) -> nn.Module:
    """Give a meta skeleton real storage, random-initialize it, and place it as device_map says.

    The weights do not depend on where or in which dtype they end up: storage is allocated on
    the CPU in float32 (to_empty, no copy), the model's own init (normal(0, initializer_range),
    ones for norms, sinusoids for Whisper positions, rotary frequencies) runs there under
    torch.manual_seed(seed), tie_weights restores shared matrices, and only then is each
    tensor cast back to the skeleton's dtype and moved to its device. So the target (any
    device, any dtype), the CPU reference and a float64 golden of one seed hold the same
    numbers, each in its own dtype. The cost: the float32 model passes through host memory
    once (GPA full shape 1.25 GB; Covo-Audio-Chat 33.6 GB).
    """
    wanted = {n: t.dtype for n, t in [*module.named_parameters(), *module.named_buffers()]}
    module.to_empty(device="cpu")
    with torch.no_grad():
        _cast_each(module, {n: torch.float32 for n, d in wanted.items() if d.is_floating_point})
        torch.manual_seed(seed)
        compat.init_weights(module)
        module.tie_weights()
        _cast_each(module, wanted)
    for name, dev in device_map.items():
        (module.get_submodule(name) if name else module).to(device=dev)
    return module.eval()


def _cast_each(module: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Cast each named parameter / buffer to its dtype in place (tied tensors once)."""
    for name, dtype in dtypes.items():
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner) if owner else module
        if leaf in sub._parameters and sub._parameters[leaf] is not None:
            param = sub._parameters[leaf]
            if param.dtype != dtype:
                param.data = param.data.to(dtype)
        elif leaf in sub._buffers and sub._buffers[leaf] is not None:
            if sub._buffers[leaf].dtype != dtype:
                sub._buffers[leaf] = sub._buffers[leaf].to(dtype)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' progress bars and info/warning chatter while loading."""
    from transformers.utils import logging as tlog

    bars = tlog.is_progress_bar_enabled()
    level = tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()

