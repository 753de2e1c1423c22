"""Model recipes, registered by name and imported lazily (naming them needs no torch).

A recipe module exposes `RECIPE`, an instance of helpers.models.base.Recipe.
"""

from __future__ import annotations

import importlib
from typing import Any

_REGISTRY: dict[str, str] = {
    "gpa": "helpers.models.gpa",
    "covo-audio-chat": "helpers.models.covo",
    "hf": "helpers.models.hf",
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Any:
    """The recipe registered as `name`; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known recipes: {', '.join(names())}")
    return importlib.import_module(_REGISTRY[name]).RECIPE
