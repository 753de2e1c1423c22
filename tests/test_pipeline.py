import shutil
from pathlib import Path

import nbformat
import pytest

from helpers import paths
from helpers.config import ConfigError, RunConfig
from helpers.records import read_result
from helpers.runner.pipeline import discover_stages, run_pipeline, select_stages

FIXTURES = Path(__file__).parent / "fixtures"


def _touch(d: Path, *names: str) -> None:
    for n in names:
        nbformat.write(nbformat.v4.new_notebook(), d / n)


def test_discovery_orders_numbered_notebooks_and_ignores_others(tmp_path):
    _touch(tmp_path, "02_model_loading.ipynb", "01_environment.ipynb", "summary.ipynb",
           "scratch.ipynb", "10_late.ipynb")
    specs = discover_stages(tmp_path)
    assert [(s.number, s.name) for s in specs] == [
        (1, "environment"), (2, "model_loading"), (10, "late")]


def test_duplicate_stage_numbers_are_an_error(tmp_path):
    _touch(tmp_path, "01_a.ipynb", "01_b.ipynb")
    with pytest.raises(ConfigError, match="share the number"):
        discover_stages(tmp_path)


def test_select_by_name_or_number_and_reject_unknown(tmp_path):
    _touch(tmp_path, "01_environment.ipynb", "02_model_loading.ipynb", "03_probes.ipynb")
    specs = discover_stages(tmp_path)
    assert [s.name for s in select_stages(specs, ("3", "environment"))] == ["environment", "probes"]
    with pytest.raises(ConfigError, match="stages here: 1 environment, 2 model_loading"):
        select_stages(specs, ("perf",))


def test_the_shipped_notebooks_are_discovered():
    names = [s.name for s in discover_stages(paths.NOTEBOOKS)]
    assert names[0] == "environment"
    assert (paths.NOTEBOOKS / "summary.ipynb").is_file()


def test_failing_stage_is_recorded_shown_and_exits_nonzero(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    shutil.copy(paths.NOTEBOOKS / "01_environment.ipynb", nbs)
    shutil.copy(FIXTURES / "02_broken.ipynb", nbs)
    shutil.copy(paths.NOTEBOOKS / "summary.ipynb", nbs)
    cfg = RunConfig.from_params(out=str(tmp_path / "out"))

    first = run_pipeline(cfg, notebooks_dir=nbs, figures_dir=None, pdf=False)
    assert first.exit_code == 2  # a stage raised
    broken = read_result(first.run_dir / "results" / "broken.json")
    assert broken.status == "error"
    assert broken.error["type"] == "RuntimeError"
    assert "planted failure" in broken.error["message"] and broken.error["cell"] is not None
    assert first.results["environment"].status == "passed"  # the other stage still ran
    html = first.html.read_text()
    assert "report-alert" in html and "planted failure in the broken fixture stage" in html
    assert "output before the failure" in html  # what the stage produced before failing is kept
    assert "Broken fixture" in html and "1. Environment" in html
    # the markdown export is written too; what the run could not measure says so
    md = (first.run_dir / "adaptation-report.md").read_text()
    assert "## Key figures" in md and "| not measured | stage accuracy_parity not run |" in md

    before = first.html.read_bytes()
    second = run_pipeline(cfg, notebooks_dir=nbs, figures_dir=None, pdf=False)
    assert second.run_dir != first.run_dir
    assert first.html.read_bytes() == before  # an earlier run's report is never touched
    latest = tmp_path / "out" / "latest"
    assert latest.is_symlink() and latest.resolve() == second.run_dir.resolve()


@pytest.mark.parametrize("chromium, needle", [
    ("/nonexistent/chromium", "no Chromium found"),  # not installed: the summary says why
    ("/bin/false", "PDF rendering failed"),  # installed but broken: the HTML says so
])
def test_missing_or_failing_pdf_keeps_the_html_and_says_why(tmp_path, monkeypatch, chromium, needle):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    shutil.copy(FIXTURES / "02_broken.ipynb", nbs)
    shutil.copy(paths.NOTEBOOKS / "summary.ipynb", nbs)
    monkeypatch.setenv("CHROMIUM", chromium)
    out = run_pipeline(RunConfig.from_params(out=str(tmp_path / "out")), notebooks_dir=nbs,
                       figures_dir=None, pdf=True)
    assert out.pdf is None and out.html.is_file()
    assert not (out.run_dir / "adaptation-report.pdf").exists()
    html = out.html.read_text()
    assert "No PDF" in html and needle in html


def test_relative_model_dir_reaches_stages_as_an_absolute_path(tmp_path, monkeypatch):
    # stage notebooks run with notebooks/ as their working directory, so a MODEL_DIR given
    # relative to the caller's directory must be resolved before it is handed on
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    shutil.copy(FIXTURES / "01_params.ipynb", nbs)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights" / "gpa").mkdir(parents=True)  # MODEL_DIR must exist before a run
    cfg = RunConfig.from_strings({"MODEL_DIR": "weights/gpa", "OUT": "out"})
    out = run_pipeline(cfg, notebooks_dir=nbs, figures_dir=None, pdf=False)
    got = read_result(out.run_dir / "results" / "params.json").metrics
    assert got == {"model_dir": str(tmp_path / "weights" / "gpa"), "profile": "real"}
