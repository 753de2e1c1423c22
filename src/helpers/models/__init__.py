"""Model recipes, registered by name and imported lazily (naming them needs no torch).

A recipe module exposes `RECIPE`, an instance of helpers.models.base.Recipe. Besides the
built-ins, MODEL may name

  an installed entry point in the group `helpers.recipes` (name -> object reference), e.g. in
  a package's pyproject.toml: [project.entry-points."helpers.recipes"]
  mymodel = "mypkg.recipes:RECIPE"   (a module reference works too: its RECIPE is used)

  a Python file, `path/to/recipe.py`, that defines RECIPE (it may subclass any recipe class
  here, e.g. helpers.models.hf.HfRecipe); it is loaded once per process, cached by its
  resolved path, as a module named after that path. A relative path is read from the current
  directory (the runner makes it absolute before the stages run).

A built-in name wins over an entry point of the same name.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

from helpers.errors import ConfigError

ENTRY_POINT_GROUP = "helpers.recipes"

_REGISTRY: dict[str, str] = {
    "gpa": "helpers.models.gpa",
    "covo-audio-chat": "helpers.models.covo",
    "hf": "helpers.models.hf",
}
BUILTIN: tuple[str, ...] = tuple(sorted(_REGISTRY))

_FILES: dict[Path, Any] = {}  # resolved recipe file -> its RECIPE
_ENTRY_POINTS: dict[tuple[str, str], Any] = {}  # (name, object reference) -> its RECIPE

_EXPECTED = ("a module-level RECIPE = SomeRecipe(), an instance of helpers.models.base.Recipe "
             "(e.g. a subclass of helpers.models.hf.HfRecipe or helpers.models.gpa.GpaRecipe)")


class RecipeError(ConfigError, KeyError):
    """A recipe that cannot be found or loaded (also a KeyError, as get() always raised)."""

    __str__ = BaseException.__str__  # the message as is, not KeyError's repr of it


def is_path(name: str) -> bool:
    """Whether MODEL names a recipe file (ends in .py or has a path separator)."""
    return name.endswith(".py") or "/" in name or os.sep in name


def label(name: str) -> str:
    """A short name for a recipe: the file's stem for a recipe file, else the name itself."""
    return Path(name).stem if is_path(name) else name


def entry_points() -> dict[str, Any]:
    """Installed recipes of the `helpers.recipes` group by name (the first one found wins)."""
    from importlib.metadata import entry_points as _all

    found: dict[str, Any] = {}
    for ep in _all(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def names() -> list[str]:
    """Built-in recipes and installed entry points (recipe files are named by their path)."""
    return sorted(set(_REGISTRY) | set(entry_points()))


def get(name: str) -> Any:
    """The recipe `name`: a built-in, an entry point, or a recipe file's RECIPE.

    Raises RecipeError (a ConfigError) saying what was wrong: an unknown name lists the known
    recipes; a bad file or entry point names it and what is expected.
    """
    if name in _REGISTRY:
        return importlib.import_module(_REGISTRY[name]).RECIPE
    if is_path(name):
        return _from_file(name)
    found = entry_points()
    if name in found:
        return _from_entry_point(found[name])
    raise RecipeError(
        f"unknown model {name!r}; known recipes: {', '.join(names())}",
        fix="or give a recipe file, MODEL=path/to/recipe.py (it defines RECIPE), or install "
            f"a package with an entry point in the group {ENTRY_POINT_GROUP}")


def _check(recipe: Any, what: str) -> Any:
    from helpers.models.base import Recipe

    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, type) and issubclass(recipe, Recipe):
        raise RecipeError(f"{what} is the class {recipe.__name__}, not an instance of it",
                          fix=f"write RECIPE = {recipe.__name__}()")
    raise RecipeError(f"{what} is {type(recipe).__name__} {recipe!r:.80}; expected {_EXPECTED}")


def _module_name(path: Path) -> str:
    """A module name of its own per file: the stem plus a hash of the resolved path."""
    stem = re.sub(r"\W", "_", path.stem)
    return f"_helpers_recipe_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"


def _from_file(text: str) -> Any:
    given = Path(text).expanduser()
    path = given.resolve()
    if path in _FILES:
        return _FILES[path]
    shown = str(given) if str(given) == str(path) else f"{given} ({path})"
    if not path.is_file():
        raise RecipeError(
            f"recipe file {shown} does not exist" if not path.exists()
            else f"recipe file {shown} is not a file",
            fix="MODEL=path/to/recipe.py names a Python file (relative to the current "
                f"directory) that defines {_EXPECTED}")
    if path.suffix != ".py":
        raise RecipeError(f"recipe file {shown} is not a .py file",
                          fix=f"a recipe file is Python source that defines {_EXPECTED}")
    mod_name = _module_name(path)
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has both
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses, pickling and inspect look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise RecipeError(f"recipe file {shown} failed to import: {type(exc).__name__}: {exc}",
                          fix="fix the file; it must import and define " + _EXPECTED) from exc
    if not hasattr(module, "RECIPE"):
        sys.modules.pop(mod_name, None)
        raise RecipeError(f"recipe file {shown} defines no RECIPE", fix=f"add {_EXPECTED}")
    try:
        recipe = _check(module.RECIPE, f"RECIPE in {shown}")
    except RecipeError:
        sys.modules.pop(mod_name, None)
        raise
    _FILES[path] = recipe
    return recipe


def _from_entry_point(ep: Any) -> Any:
    key = (ep.name, ep.value)
    if key in _ENTRY_POINTS:
        return _ENTRY_POINTS[key]
    dist = getattr(getattr(ep, "dist", None), "name", None)
    what = (f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}"
            + (f", package {dist})" if dist else ")"))
    try:
        obj = ep.load()
    except Exception as exc:
        raise RecipeError(f"{what} failed to load: {type(exc).__name__}: {exc}",
                          fix="reinstall or fix that package, or uninstall it") from exc
    if isinstance(obj, types.ModuleType) and hasattr(obj, "RECIPE"):
        obj = obj.RECIPE
    recipe = _check(obj, what)
    _ENTRY_POINTS[key] = recipe
    return recipe
