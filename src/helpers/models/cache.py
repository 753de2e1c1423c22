"""The tiny-profile cache: random weights saved once with save_pretrained, then always read back.

Folder: <repo>/.cache/models/<recipe>-tiny-seed<seed>/ (HELPERS_MODEL_CACHE overrides the
parent), laid out exactly like a real model directory of that recipe, tokenizer included, plus
a stamp file with the fingerprint of what was built (recipe, seed, tiny configs, tokenizer
files, library versions). A different fingerprint rebuilds the folder.

Two processes may build at once: each builds into its own hidden temp folder next to the
target and renames it into place; rename of a directory is atomic, so a reader sees either no
folder, an old complete one, or a new complete one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Protocol

from helpers import paths


class Recipe(Protocol):
    """What the cache needs of a recipe (helpers.models.base.Recipe has it)."""

    name: str

    def configs(self, profile: str) -> dict[str, Any]: ...

    def save_random(self, out: Path, profile: str, seed: int) -> None: ...

STAMP = "helpers-recipe.json"
CACHE_FORMAT = 1  # bump when the folder layout written here changes
ENV = "HELPERS_MODEL_CACHE"


def root() -> Path:
    return Path(os.environ.get(ENV) or paths.ROOT / ".cache" / "models")


def folder(recipe: Recipe, seed: int) -> Path:
    return root() / f"{recipe.name}-tiny-seed{seed}"


def fingerprint(recipe: Recipe, seed: int) -> str:
    """sha256 of everything that decides the saved files."""
    import torch
    import transformers

    configs = {name: _plain(cfg.to_dict()) for name, cfg in recipe.configs("tiny").items()}
    tok = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(paths.TOKENIZER.iterdir()) if p.suffix in (".json", ".jinja")}
    blob = json.dumps(
        {"format": CACHE_FORMAT, "recipe": recipe.name, "seed": seed, "configs": configs,
         "tokenizer": tok, "torch": torch.__version__, "transformers": transformers.__version__},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def stamp_of(path: Path) -> str | None:
    try:
        return json.loads((path / STAMP).read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def ensure(recipe: Recipe, seed: int) -> tuple[Path, bool]:
    """The tiny folder for (recipe, seed), built if missing or stale; (path, built_now)."""
    final = folder(recipe, seed)
    want = fingerprint(recipe, seed)
    if stamp_of(final) == want:
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.build-"))
    try:
        recipe.save_random(tmp, "tiny", seed)
        stamp = {"fingerprint": want, "recipe": recipe.name, "profile": "tiny", "seed": seed}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, final, want)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, True


def _publish(tmp: Path, final: Path, want: str, attempts: int = 5) -> None:
    """Rename tmp to final; if final exists, keep it when current, else swap it out."""
    for _ in range(attempts):
        try:
            os.rename(tmp, final)  # atomic; fails when final exists and is not empty
            return
        except OSError:
            if stamp_of(final) == want:  # another process built the same thing first
                return
        stale = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(final, stale)
        except FileNotFoundError:
            pass
        shutil.rmtree(stale, ignore_errors=True)
    raise RuntimeError(f"could not publish the tiny model cache at {final} after {attempts} tries")


def _plain(data: Any) -> Any:
    """Config dicts minus the fields that name the writer rather than the model."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items() if k not in ("transformers_version", "_name_or_path")}
    return data
