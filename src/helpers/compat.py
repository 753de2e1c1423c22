"""The supported software stack and every API that differs across it, in one place.

The project is tested from the stack of the published Ascend adaptation reports (torch 2.9.0 +
torch_npu 2.9.0.post1, transformers 4.57.6) up to the newest releases installed by `make
setup`. TESTED is that range: pyproject.toml, environment.yml and the README state the same
numbers (tests/test_stacks.py holds them together), the run preflight refuses a release older
than the floor, and the environment stage places the stack against it.

Where transformers 4.57 and 5.x differ, the difference lives here and nowhere else:
  init                 5.x: transformers.initialization (skips tensors flagged as loaded);
                       4.x: torch.nn.init
  add_special_tokens   5.x: replace_extra_special_tokens=; 4.x: replace_additional_special_tokens=
  load_tokenizer       a tokenizer_config.json written by 5.x lists "extra_special_tokens",
                       which 4.x reads as a dict of named tokens
  cache_keyword        the forward's name for the KV cache: `cache` (5.x) or past_key_values
  init_weights         5.x initializes every tensor not flagged as loaded, rotary frequencies
                       included; 4.x skips every module post_init has seen and never recomputes
                       the rotary frequencies (to_empty leaves them as garbage)
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

from helpers.errors import ReportError

# (lowest, highest) release tested end to end: `make report` and the fast tests on both
# stacks (`make test-stacks` runs the lowest one; `make test` the default one).
TESTED: dict[str, tuple[str, str]] = {
    "python": ("3.11", "3.11"),  # on 3.10 (ipykernel 7.3) stage kernels died at start
    "torch": ("2.9.0", "2.13.0"),
    "transformers": ("4.57.6", "5.25.0"),
}
INSIDE = "inside the tested range"


class StackError(ReportError):
    """The installed stack lacks torch or transformers, or holds one older than the oldest tested."""


def release(text: str) -> tuple[int, ...]:
    """'2.9.0+cpu' / '2.9.0.post1' / '5.0.0rc1' -> (2, 9, 0): the numeric release only."""
    parts = re.match(r"\d+(\.\d+)*", text.strip())
    if not parts:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in parts.group(0).split("."))


def _fields(name: str, version: str) -> tuple[tuple[int, ...], ...]:
    low, high = TESTED[name]
    width = len(release(low))
    cut = lambda v: (release(v) + (0,) * width)[:width]  # noqa: E731 - compare at the range's precision
    return cut(version), cut(low), cut(high)


def placement(name: str, version: str) -> str:
    """Where `version` of `name` (python, torch, transformers) stands against TESTED."""
    have, low, high = _fields(name, version)
    lo, hi = TESTED[name]
    if have < low:
        return f"outside: {name} {version} is older than the oldest tested ({lo})"
    if have > high:
        return f"outside: {name} {version} is newer than the newest tested ({hi})"
    return INSIDE


def installed() -> dict[str, str]:
    """The running python, torch and transformers (read from the package metadata)."""
    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in ("torch", "transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = ""
    return out


def stack_placement(versions: dict[str, str] | None = None) -> dict[str, str]:
    """{python/torch/transformers: placement} of the given or the running stack."""
    versions = versions or installed()
    return {n: placement(n, v) if v else "not installed" for n, v in versions.items()
            if n in TESTED}


def tested_text() -> str:
    """'python 3.11, torch 2.9.0 to 2.13.0, transformers 4.57.6 to 5.25.0'."""
    return ", ".join(f"{n} {lo}" if lo == hi else f"{n} {lo} to {hi}"
                     for n, (lo, hi) in TESTED.items())


def check_stack(versions: dict[str, str] | None = None) -> None:
    """Refuse torch or transformers missing, or any of the three older than the oldest tested
    (pyproject.toml's floor, which pip enforces but a system torch reused by `make setup` may
    not meet); a newer release runs, and the environment stage names it as outside the range."""
    where = stack_placement(versions)
    have = versions or installed()
    bad = [f"{n} {have[n]}" if have[n] else f"{n} not installed"
           for n, p in where.items() if p == "not installed" or "older" in p]
    if bad:
        wants = " ".join(f"'{n}>={TESTED[n][0]}'" for n in where if n != "python")
        raise StackError(
            f"this environment has {', '.join(bad)}; the project runs on {tested_text()} "
            "(the tested range)",
            f"install tested releases (`pip install {wants}`; on an Ascend host torch with the "
            "torch_npu of the same release), or run `make setup` in a new folder")


# ---- API differences ------------------------------------------------------------------------

def _major() -> int:
    import transformers

    return release(transformers.__version__)[0]


def init_module() -> Any:
    """Weight initializers for a model's _init_weights: transformers' own (5.x), which leave a
    tensor flagged as loaded alone, or torch.nn.init (4.x, whose loader skips loaded modules)."""
    if _major() >= 5:
        from transformers import initialization

        return initialization
    from torch.nn import init

    return init


def init_weights(model: Any) -> None:
    """model.initialize_weights() with 5.x's meaning on both releases: every tensor not
    flagged `_is_hf_initialized` (loaded) gets the model's own init, and computed buffers
    (rotary inverse frequencies) get their values."""
    if _major() >= 5 or not hasattr(model, "_initialize_weights"):
        model.initialize_weights()
        return
    for module in model.modules():  # 4.x flags modules, not tensors
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        module._is_hf_initialized = bool(own) and all(
            getattr(t, "_is_hf_initialized", False) for t in own)
    model.initialize_weights()
    for module in model.modules():
        if hasattr(module, "rope_init_fn") and isinstance(getattr(module, "inv_freq", None),
                                                          torch.Tensor):
            inv_freq, module.attention_scaling = module.rope_init_fn(module.config,
                                                                     module.inv_freq.device)
            module.inv_freq = inv_freq.to(module.inv_freq.dtype)  # [head_dim / 2]
            module.original_inv_freq = module.inv_freq


def add_special_tokens(tok: Any, tokens: list[str]) -> None:
    """Append `tokens` to the tokenizer's extra (additional) special tokens, keeping its own."""
    keyword = ("replace_extra_special_tokens" if _major() >= 5
               else "replace_additional_special_tokens")
    tok.add_special_tokens({"additional_special_tokens": tokens}, **{keyword: False})


def tokenizer_kwargs(folder: str | Path) -> dict[str, Any]:
    """from_pretrained overrides that let 4.x read a tokenizer folder 5.x wrote: 5.x lists its
    extra special tokens under "extra_special_tokens", where 4.x expects a dict of named ones."""
    if _major() >= 5:
        return {}
    path = Path(folder) / "tokenizer_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    extra = cfg.get("extra_special_tokens") if isinstance(cfg, dict) else None
    if not isinstance(extra, list):
        return {}
    named = list(cfg.get("additional_special_tokens") or [])
    return {"extra_special_tokens": {},
            "additional_special_tokens": named + [t for t in extra if t not in named]}


def load_tokenizer(folder: str | Path, **kwargs: Any) -> Any:
    """AutoTokenizer.from_pretrained(folder) on either major release."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), **tokenizer_kwargs(folder), **kwargs)


def cache_keyword(forward: Any) -> str:
    """The name a model's forward gives its KV cache argument: `cache` or past_key_values."""
    import inspect

    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def disk_offload_supported(versions: dict[str, str] | None = None) -> bool:
    """Whether REFERENCE_FIT=offload can load here: accelerate's disk offload of a Qwen LM with
    tied embeddings loads under transformers 5 only (4.57.6 opens the offloaded safetensors on a
    device named "disk" and misses the tied lm_head in the offload index)."""
    have = (versions or installed()).get("transformers") or "0"
    return release(have)[:1] >= (5,)
