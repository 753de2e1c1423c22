"""Every shipped notebook runs as-is, on its own defaults, as a researcher opens it in
JupyterLab: no parameters injected, results in the lab folder, the summary included."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

from helpers import outputs, paths
from helpers.records import VERDICTS, read_json, read_result
from helpers.runner.pipeline import discover_stages
from helpers.stages.kit import LAB_ENV

pytestmark = pytest.mark.e2e


def _run(nb: Path, out: Path) -> nbformat.NotebookNode:
    papermill.execute_notebook(str(nb), str(out), kernel_name="python3", progress_bar=False,
                               cwd=str(nb.parent))
    return nbformat.read(out, as_version=4)


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            parts.append(str(data.get("text/html", "")) + str(data.get("text/markdown", ""))
                         + str(data.get("text/plain", "")) + str(o.get("text", "")))
    return "\n".join(parts)


def test_summary_alone_on_an_empty_lab_folder_says_nothing_ran(tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setenv(LAB_ENV, str(tmp_path / "lab"))
    nb = _run(paths.NOTEBOOKS / "summary.ipynb", tmp_path / "summary.ipynb")
    assert "No stage has run" in _text(nb)


@pytest.mark.usefixtures("default_run")  # the run whose reference cache this one reads
def test_every_notebook_runs_on_its_own_defaults(tmp_path: Path, monkeypatch, model_cache: Path,
                                                 default_reference_cache: Path) -> None:
    lab = tmp_path / "lab"
    monkeypatch.setenv(LAB_ENV, str(lab))  # the kernels inherit it: nothing lands in report/
    # as a researcher's notebooks after a `make report` of the same settings: the CPU sides of
    # stages 4 and 6 come from that run's reference cache (computed there: tests/conftest.py)
    monkeypatch.setenv(outputs.CACHE_ENV, str(default_reference_cache))
    specs = discover_stages()
    for spec in specs:
        _run(spec.path, tmp_path / spec.path.name)  # raises if any cell raises
        res = read_result(lab / "results" / f"{spec.name}.json")
        assert res.status in ("passed", "failed", "skipped"), (spec.name, res.error)
        assert all(c.verdict in VERDICTS.WORDS for c in res.checks)
    manifest = read_json(lab / "run.json")
    assert [s["name"] for s in manifest["stages"]] == [s.name for s in specs]
    assert manifest["config"]["model"] == "gpa" and manifest["config"]["profile"] == "tiny"
    summary = _text(_run(paths.NOTEBOOKS / "summary.ipynb", tmp_path / "summary.ipynb"))
    assert f"**{len(specs)} stages**" in summary
    for spec in specs:
        assert read_result(lab / "results" / f"{spec.name}.json").title in summary
