"""A recipe declares what it can do (audio parts, task family, graph-mode target), and every
stage asks the recipe: a subclass with another name, from a recipe file, behaves like its parent
in stages 2 (model loading), 4 (audio components) and 6 (tasks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import models
from helpers.config import RunConfig
from helpers.stages import accuracy_parity as accuracy
from helpers.stages import model_loading, tasks
from helpers.stages.kit import target

RECIPE_FILE = """
from helpers.models.{module} import {parent}


class Renamed({parent}):
    name = "{name}"


RECIPE = Renamed()
"""
PARENTS = {"gpa": ("gpa", "GpaRecipe", "my-speech-lm"),
           "covo-audio-chat": ("covo", "CovoRecipe", "my-chat")}


@pytest.fixture(scope="module", params=sorted(PARENTS))
def renamed(request, model_cache: Path, tmp_path_factory) -> tuple[RunConfig, object]:
    module, parent, name = PARENTS[request.param]
    path = tmp_path_factory.mktemp("recipes") / f"{name.replace('-', '_')}.py"
    path.write_text(RECIPE_FILE.format(module=module, parent=parent, name=name))
    cfg = RunConfig.from_params(model=str(path), device="cpu", dtype="float32")
    return cfg, models.get(request.param)


def test_capabilities_are_declared_not_looked_up_by_name() -> None:
    gpa, covo, hf = (models.get(n) for n in ("gpa", "covo-audio-chat", "hf"))
    assert gpa.audio_parts == ("speech_tokenizer", "codec") and gpa.task_family == "gpa"
    assert covo.audio_parts == ("vocoder",) and covo.task_family == "covo-audio-chat"
    assert hf.audio_parts == () and hf.task_family == "" and hf.graph_target is None
    assert gpa.graph_target is not None and gpa.graph_target.backend == "cuda"
    assert covo.graph_target is None


def test_renamed_subclass_runs_stages_2_4_and_6(renamed) -> None:
    cfg, parent = renamed
    recipe = models.get(cfg.model)
    assert recipe.name != parent.name and recipe.audio_parts == parent.audio_parts
    tgt = target(cfg)
    # stage 2: every component of the parent, its audio parts included, loads and checks out
    loaded = tgt.load()
    assert set(loaded.components) == set(parent.component_names())
    assert all(c.passed is not False for c in model_loading.checks(loaded))
    del loaded
    # stage 4: the audio components compared device vs CPU, on one fixture
    plan = accuracy.plan(tgt, golden="off", new_tokens=1, languages="en", fixtures="en_fox")
    runs = accuracy.run_all(cfg, plan)
    assert not runs.reference.errors and not runs.target.errors
    assert set(parent.audio_parts) <= set(runs.target.components)  # Covo also: encoder, adapter
    # stage 6: the parent's speech tasks, end to end, on one input with a short budget
    runs = tasks.run_all(tgt, fixtures="en_fox", s=tasks.settings(cfg, max_new_tokens=3))
    assert not runs.skipped and not runs.target.error and not runs.reference.error
    assert runs.tasks == tasks.TASKS[parent.task_family]
    assert {task for task, _ in runs.keys} == set(runs.tasks)
