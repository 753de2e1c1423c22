"""Each stage's knobs have one home, a Settings dataclass with help text; the stage notebook's
parameters cell mirrors it (the same names, defaults and types), and the notebook builds its
run config and its settings in one line each."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest

from helpers import paths
from helpers.config import RunConfig
from helpers.knobs import KnobSpec, from_namespace, notebook_knobs
from helpers.runner.pipeline import discover_stages

STAGES = discover_stages(paths.NOTEBOOKS)
KIND = {bool: "bool", int: "int", float: "float", str: "str", "tuple[int, ...]": "list[int]"}


def _settings(stage: str) -> type | None:
    return getattr(importlib.import_module(f"helpers.stages.{stage}"), "Settings", None)


def _kind(f: dataclasses.Field) -> str:
    return KIND.get(f.type, KIND.get(eval(f.type, {}) if f.type in ("bool", "int", "float", "str")
                                     else f.type, ""))


@pytest.mark.parametrize("spec", STAGES, ids=[s.name for s in STAGES])
def test_parameters_cell_matches_the_stage_settings(spec) -> None:
    declared = notebook_knobs(spec.path, RunConfig.field_names())
    cls = _settings(spec.name)
    if cls is None or not dataclasses.is_dataclass(cls):
        assert declared == {}, f"{spec.path.name} declares knobs but its stage has no Settings"
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert list(declared) == list(fields), "same names, same order"
    for name, f in fields.items():
        knob: KnobSpec = declared[name]
        default = tuple(knob.default) if isinstance(knob.default, list) else knob.default
        assert default == f.default, f"{spec.name}.{name}: notebook {knob.default!r}"
        assert knob.kind == _kind(f), f"{spec.name}.{name}: notebook {knob.kind}"
        assert f.metadata.get("help"), f"{spec.name}.{name} has no help text"


def test_settings_are_built_from_the_notebook_namespace() -> None:
    perf = _settings("performance")
    made = from_namespace(perf, {"new_tokens": 32, "sweep_batches": [1, 2], "other": 1})
    assert made.new_tokens == 32 and made.sweep_batches == (1, 2) and made.warmup == 1


@pytest.mark.parametrize("spec", STAGES, ids=[s.name for s in STAGES])
def test_notebook_builds_its_config_in_one_line(spec) -> None:
    cells = json.loads(spec.path.read_text(encoding="utf-8"))["cells"]
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "RunConfig.from_notebook(globals())" in code
    assert "from_params(" not in code


def test_config_from_notebook_takes_only_run_parameters() -> None:
    ns = {"model": "gpa", "device": "cpu", "seed": 3, "new_tokens": 8, "run_dir": "",
          "knobs": object()}
    cfg = RunConfig.from_notebook(ns)
    assert cfg.seed == 3 and cfg.device == "cpu" and cfg.profile == "tiny"
