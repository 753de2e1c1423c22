"""Extending the report without editing the package: a user's recipe (a file or an entry
point), stage knobs (STAGE.KNOB=VALUE) and extra stage notebooks (EXTRA_STAGES).

Real runs through run_pipeline with small notebooks written here; every rejection is checked
to happen before a run folder exists."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import models, paths
from helpers.cli import main, parse_assignments
from helpers.config import ConfigError, RunConfig
from helpers.knobs import Knobs, KnobSpec
from helpers.records import read_result
from helpers.runner.pipeline import discover_stages, run_pipeline, select_stages

# A stage that records what it was given: its values, their Python types, and its cwd.
RECORDER_PARAMS = """model = "gpa"
run_dir = ""
count = 2
ratio = 0.5
flag = True
sizes = [1, 2]
label = "x"
"""
RECORDER_BODY = """import os
from helpers.stages.kit import Stage

st = Stage({name!r}, run_dir)
values = dict(model=model, count=count, ratio=ratio, flag=flag, sizes=sizes, label=label)
st.metric("values", values)
st.metric("types", {{k: type(v).__name__ for k, v in values.items()}})
st.metric("cwd", os.getcwd())
st.finish();
"""
# An extra stage, as a user writes one: its own knobs, the stage kit, st.finish().
EXTRA_PARAMS = """run_dir = ""
count = 7
note = "default"
"""
EXTRA_BODY = """import os
from pathlib import Path
from helpers.stages.kit import Stage

st = Stage("mine", run_dir, "My extra stage")
st.metric("count", count)
st.metric("note", note)
st.metric("cwd", os.getcwd())
st.metric("seen", sorted(p.name for p in (Path(run_dir) / "results").glob("*.json")))
Path("ran-here.txt").write_text("the extra stage runs in its own folder")
st.finish();
"""
GPA_RECIPE = """from helpers.models.gpa import GpaRecipe


class MyGpa(GpaRecipe):
    name = "my-gpa"
    title = "GPA, my variant"


RECIPE = MyGpa()
"""
HF_RECIPE = """from helpers.models.hf import HfRecipe


class MyLm(HfRecipe):
    name = "my-lm"
    title = "My causal LM"


RECIPE = MyLm()
"""


def _notebook(path: Path, params: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # as Jupyter saves every notebook
    nb.metadata["language_info"] = {"name": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), cell,
                nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _recorder(folder: Path, number: int, name: str) -> Path:
    return _notebook(folder / f"{number:02d}_{name}.ipynb", RECORDER_PARAMS,
                     RECORDER_BODY.format(name=name))


def _extra(folder: Path, filename: str = "02_mine.ipynb") -> Path:
    return _notebook(folder / filename, EXTRA_PARAMS, EXTRA_BODY)


# ---- recipes ----------------------------------------------------------------------------


def test_user_recipe_file_subclassing_gpa_is_loaded_once_and_accepted(tmp_path, monkeypatch):
    from helpers.models.gpa import GpaRecipe

    path = tmp_path / "my_recipe.py"
    path.write_text(GPA_RECIPE)
    monkeypatch.chdir(tmp_path)
    recipe = models.get("my_recipe.py")
    assert isinstance(recipe, GpaRecipe) and recipe.title == "GPA, my variant"
    assert models.get(str(path)) is recipe  # once per process, cached by the resolved path
    module = type(recipe).__module__
    assert "my_recipe" in module and sys.modules[module].__file__ == str(path)
    cfg = RunConfig.from_params(model="my_recipe.py")
    assert cfg.profile == "tiny" and cfg.absolute().model == str(path)


def test_user_recipe_subclassing_hf_needs_model_dir(tmp_path):
    path = tmp_path / "lm_recipe.py"
    path.write_text(HF_RECIPE)
    with pytest.raises(ConfigError, match="no profile 'tiny'; its profiles: real.*MODEL_DIR"):
        RunConfig.from_params(model=str(path))
    cfg = RunConfig.from_params(model=str(path), model_dir=str(tmp_path))
    assert cfg.profile == "real" and models.get(cfg.model).title == "My causal LM"


@pytest.mark.parametrize("source, needle", [
    (None, "does not exist"),
    ("x = 1\n", "defines no RECIPE"),
    ("RECIPE = 3\n", "is int 3; expected a module-level RECIPE"),
    ("from helpers.models.hf import HfRecipe\nRECIPE = HfRecipe\n", "the class HfRecipe"),
    ("def broken(:\n", "failed to import: SyntaxError"),
    ("import no_such_module_here\n", "failed to import: ModuleNotFoundError"),
])
def test_bad_recipe_file_is_rejected_with_its_path(tmp_path, capsys, source, needle):
    path = tmp_path / "bad_recipe.py"
    if source is not None:
        path.write_text(source)
    for call in (lambda: models.get(str(path)), lambda: RunConfig.from_params(model=str(path))):
        with pytest.raises(ConfigError) as exc:
            call()
        assert str(path) in str(exc.value) and needle in str(exc.value)
    out = tmp_path / "out"
    assert main([f"MODEL={path}", f"OUT={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and needle in err
    assert not out.exists()  # rejected before any run folder


def _site(root: Path, dist: str, entry_points: str) -> Path:
    """A real installed distribution (a dist-info folder on sys.path) with entry points."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{models.ENTRY_POINT_GROUP}]\n{entry_points}\n")
    return root


def test_entry_point_recipe_is_listed_loaded_and_checked(tmp_path, monkeypatch, capsys):
    from helpers.models.__main__ import main as models_main

    site = _site(tmp_path / "site", "my_ep_recipes", "my-ep = my_ep_recipes:RECIPE")
    (site / "my_ep_recipes.py").write_text(HF_RECIPE.replace("my-lm", "my-ep"))
    monkeypatch.syspath_prepend(str(site))
    assert "my-ep" in models.names() and set(models.BUILTIN) <= set(models.names())
    recipe = models.get("my-ep")
    assert recipe.name == "my-ep" and models.get("my-ep") is recipe
    assert RunConfig.from_params(model="my-ep", model_dir=str(tmp_path)).profile == "real"
    with pytest.raises(ConfigError, match="my-ep .*no profile 'tiny'"):
        RunConfig.from_params(model="my-ep")
    assert models_main(["list"]) == 0
    assert "my-ep" in capsys.readouterr().out  # python -m helpers.models list

    broken = _site(tmp_path / "site2", "broken_ep", "broken-ep = my_ep_recipes:NOPE")
    monkeypatch.syspath_prepend(str(broken))
    with pytest.raises(ConfigError, match="entry point broken-ep = my_ep_recipes:NOPE"):
        RunConfig.from_params(model="broken-ep")
    with pytest.raises(ConfigError, match="unknown model 'nope'; known recipes: .*my-ep"):
        RunConfig.from_params(model="nope")


# ---- knobs, extra stages, a recipe file: one real run --------------------------------------


def test_knobs_recipe_file_and_extra_stage_reach_their_notebooks(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    _recorder(nbs, 1, "record")
    _recorder(nbs, 3, "late")
    mine = tmp_path / "mine"
    _extra(mine)
    (tmp_path / "recipe.py").write_text(GPA_RECIPE)
    monkeypatch.chdir(tmp_path)  # relative MODEL, EXTRA_STAGES and OUT, as a user types them
    words = ["MODEL=recipe.py", "OUT=out", "EXTRA_STAGES=mine", "record.count=5", "1.ratio=2",
             "RECORD.flag=off", "record.sizes=3,4", "mine.note=hello world"]
    cfg = RunConfig.from_strings(parse_assignments(words))  # what the CLI does with its words
    out = run_pipeline(cfg, notebooks_dir=nbs, figures_dir=None, pdf=False)
    assert out.exit_code == 0, {k: r.error for k, r in out.results.items()}

    rec = read_result(out.run_dir / "results" / "record.json").metrics
    assert rec["values"] == {"model": str(tmp_path / "recipe.py"), "count": 5, "ratio": 2.0,
                             "flag": False, "sizes": [3, 4], "label": "x"}
    assert rec["types"] == {"model": "str", "count": "int", "ratio": "float", "flag": "bool",
                            "sizes": "list", "label": "str"}
    late = read_result(out.run_dir / "results" / "late.json").metrics
    assert late["values"]["count"] == 2 and late["values"]["flag"] is True  # not its knobs

    ext = read_result(out.run_dir / "results" / "mine.json").metrics
    assert ext["cwd"] == str(mine) and (mine / "ran-here.txt").is_file()
    assert ext["count"] == 7 and ext["note"] == "hello world"
    assert ext["seen"] == ["record.json"]  # after stage 1, before stage 3

    manifest = json.loads((out.run_dir / "run.json").read_text())
    assert [(s["name"], s["origin"]) for s in manifest["stages"]] == [
        ("record", "built-in"), ("mine", "extra"), ("late", "built-in")]
    assert manifest["knobs"] == {"record": {"count": 5, "ratio": 2.0, "flag": False,
                                            "sizes": [3, 4]},
                                 "mine": {"note": "hello world"}}
    assert manifest["config"]["model"] == str(tmp_path / "recipe.py")
    assert manifest["config"]["extra_stages"] == str(mine)
    assert out.run_dir.parent == tmp_path / "out" and "-recipe-tiny" in out.run_dir.name


# ---- knob rejections (before anything runs) ------------------------------------------------


@pytest.mark.parametrize("words, needles", [
    (["mine.nope=1"], ["stage 7 mine has no knob 'nope'", "count = 7 (int)",
                       'note = "default" (str)']),
    (["mine.count=seven"], ["knob mine.count must be an integer (default 7), got 'seven'"]),
    (["7.count=1.5"], ["knob mine.count must be an integer"]),
    (["performance.new_token=32"], ["stage 5 performance has no knob 'new_token'",
                                    "new_tokens = ", "(int)", "graph_mode = ", "(bool)"]),
    (["performance.new_tokens=many"], ["performance.new_tokens must be an integer"]),
    (["performance.graph_mode=maybe"], ["performance.graph_mode must be true or false"]),
    (["performance.sweep_batches=1,x"], ["comma-separated list of integers"]),
    (["perf.new_tokens=1"], ["unknown stage 'perf'", "5 performance", "7 mine"]),
    (["STAGES=environment", "mine.count=1"], ["STAGES leaves out", "add mine to STAGES"]),
    (["performance.seed=1"], ["seed is a run parameter", "SEED="]),
    (["mine.count=1", "7.count=2"], ["mine.count is given twice"]),
    (["mine.=1"], ["expected STAGE.KNOB=VALUE"]),
])
def test_bad_knobs_exit_2_before_any_run_folder(tmp_path, capsys, words, needles):
    _extra(tmp_path / "mine", "07_mine.ipynb")
    out = tmp_path / "out"
    assert main([*words, f"EXTRA_STAGES={tmp_path / 'mine'}", f"OUT={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err
    assert not out.exists()


def test_shipped_stage_knobs_are_typed_from_their_defaults():
    stages = discover_stages(paths.NOTEBOOKS)
    raw = {"performance.new_tokens": "32", "4.golden": "off", "5.sweep_batches": "1, 2",
           "PERFORMANCE.graph_mode": "no", "performance.min_seconds": "1"}
    knobs = Knobs.from_strings(raw).resolve(stages)
    assert knobs.to_params() == {
        "accuracy_parity": {"golden": "off"},
        "performance": {"new_tokens": 32, "sweep_batches": [1, 2], "graph_mode": False,
                        "min_seconds": 1.0},
    }
    assert isinstance(knobs.stage("performance")["min_seconds"], float)  # int literal, float knob


def test_knob_types_follow_the_default_or_the_annotation():
    def spec(default: str, annotation: str = "None") -> KnobSpec:
        return KnobSpec.from_declared({"name": "k", "default": default,
                                       "inferred_type_name": annotation, "help": ""})

    assert spec("0.0").parse("3", "s.k") == 3.0
    assert spec("0", "float").parse("2.5", "s.k") == 2.5
    assert spec("[0.5]").parse("1,2.5", "s.k") == (1.0, 2.5)
    assert spec("[]").parse("a b,c", "s.k") == ("a", "b", "c")
    assert spec('"x"').parse(" keep  spaces ", "s.k") == " keep  spaces "
    assert [spec("False").parse(w, "s.k") for w in ("on", "YES", "1", "off", "no", "")] == [
        True, True, True, False, False, False]
    with pytest.raises(ConfigError, match="cannot be set"):
        spec("None").parse("1", "s.k")
    with pytest.raises(ConfigError, match="must be an integer"):
        spec("1").check(True, "s.k")  # typed values: a bool is no int
    with pytest.raises(ConfigError, match="must be an integer"):
        spec("1").check("3", "s.k")
    assert spec("1.0").check(3, "s.k") == 3.0


def test_list_knobs_and_list_stages_show_every_stage_and_its_origin(tmp_path, capsys):
    mine = tmp_path / "mine"
    _extra(mine, "07_mine.ipynb")
    assert main(["--list-stages", "--list-knobs", f"EXTRA_STAGES={mine}"]) == 0
    text = capsys.readouterr().out
    assert "built-in  notebooks/01_environment.ipynb" in text
    assert f"extra     {mine / '07_mine.ipynb'}" in text
    assert "performance.new_tokens" in text and "list[int]" in text
    assert "mine.count" in text and "mine.note" in text


# ---- extra stage folders ------------------------------------------------------------------


@pytest.mark.parametrize("extra, needles", [
    ("01_other.ipynb", ["number 01", "01_other.ipynb", "01_record.ipynb", "free numbers: 02"]),
    ("05_record.ipynb", ["name record", "05_record.ipynb", "01_record.ipynb"]),
    (None, ["does not exist"]),
    ("notes.ipynb", ["holds no stage notebook", "notes.ipynb"]),
])
def test_extra_stage_clash_or_missing_folder_is_rejected(tmp_path, extra, needles):
    nbs = tmp_path / "notebooks"
    _recorder(nbs, 1, "record")
    mine = tmp_path / "mine"
    if extra is not None:
        _extra(mine, extra)
    cfg = RunConfig.from_params(out=str(tmp_path / "out"), extra_stages=str(mine))
    with pytest.raises(ConfigError) as exc:
        run_pipeline(cfg, notebooks_dir=nbs, figures_dir=None, pdf=False)
    for needle in needles:
        assert needle in str(exc.value)
    if extra and extra[:2].isdigit():
        assert str(mine / extra) in str(exc.value) and str(nbs / "01_record.ipynb") in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_extra_stages_join_in_number_order_and_are_selectable(tmp_path):
    nbs = tmp_path / "notebooks"
    _recorder(nbs, 1, "record")
    _recorder(nbs, 3, "late")
    _extra(tmp_path / "mine")
    stages = discover_stages(nbs, tmp_path / "mine")
    assert [(s.number, s.name, s.origin) for s in stages] == [
        (1, "record", "built-in"), (2, "mine", "extra"), (3, "late", "built-in")]
    assert stages[1].folder == tmp_path / "mine"
    assert [s.name for s in select_stages(stages, ("LATE", "2"))] == ["mine", "late"]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_passes_stage_knobs_through_to_the_cli():
    done = subprocess.run(["make", "-n", "report", "performance.new_tokens=32", "4.golden=off",
                           "TORCH_SPEC=torch"], cwd=paths.ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    line = next(x for x in done.stdout.splitlines() if "-m helpers.report" in x)
    words = line.split("-m helpers.report", 1)[1].split()  # make lists them newest first
    assert sorted(words) == ["4.golden=off", "performance.new_tokens=32"]
