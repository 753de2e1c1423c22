"""Every shipped notebook runs as-is, on its own defaults, as a researcher opens it in
JupyterLab: no parameters injected, results in the lab folder, the summary included.

Each notebook's full execution happens once, in the session's default run (tests/conftest.py):
the runner gives each notebook its own defaults except where to write (run_dir), and a notebook
uses run_dir only to choose its folder (Stage, summary.load). The lab folder, the other choice,
is proven by the cheap notebooks run on their own here, with the summary over their folder."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from helpers import paths
from helpers.config import RunConfig
from helpers.knobs import RUNNER_PARAMETERS
from helpers.records import VERDICTS, read_json, read_result
from helpers.runner.pipeline import discover_stages
from helpers.stages.kit import LAB_ENV

pytestmark = pytest.mark.e2e

SUMMARY = paths.NOTEBOOKS / "summary.ipynb"
# where a notebook's run_dir may appear: the one call that picks its folder (the run's, or the
# lab folder when run_dir is empty: helpers.stages.kit.run_dir_or_lab)
FOLDER_CHOICE = re.compile(r"Stage\(\"\w+\", run_dir, |summary\.load\(run_dir\)")


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


def _assigned(nb: nbformat.NotebookNode, tag: str) -> dict[str, Any]:
    """The names a tagged cell sets, each to its plain literal."""
    cell = next(c for c in nb.cells if tag in c.metadata.get("tags", []))
    return {node.targets[0].id: ast.literal_eval(node.value)
            for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)}


def _code(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code"
                     and "parameters" not in c.metadata.get("tags", []))


def test_summary_alone_on_an_empty_lab_folder_says_nothing_ran(tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setenv(LAB_ENV, str(tmp_path / "lab"))
    nb = _run(SUMMARY, tmp_path / "summary.ipynb")
    assert "No stage has run" in _text(nb)


def test_the_default_run_executed_every_notebook_on_its_own_defaults(default_run) -> None:
    """What papermill injected into each notebook of `make report` (its injected-parameters
    cell) sets every parameter to the notebook's own default, run_dir aside; a run parameter
    may be spelled resolved (profile auto -> tiny) when the config it builds is the same."""
    specs = discover_stages()
    for nb_path in [s.path for s in specs] + [SUMMARY]:
        nb = nbformat.read(default_run.run_dir / "notebooks" / nb_path.name, as_version=4)
        own, given = _assigned(nb, "parameters"), _assigned(nb, "injected-parameters")
        assert set(given) <= set(own), nb_path.name
        assert set(given) & set(RUNNER_PARAMETERS) == {"run_dir"}, nb_path.name
        respelled = {k for k, v in given.items() if k != "run_dir" and v != own[k]}
        assert respelled <= set(RunConfig.field_names()), (nb_path.name, respelled)
        if respelled:
            assert (RunConfig.from_notebook({**own, **given})
                    == RunConfig.from_notebook(own)), (nb_path.name, respelled)
        # run_dir only picks the folder: the same notebook writes to the lab folder on its own
        source = nbformat.read(nb_path, as_version=4)
        assert _code(source).count("run_dir") == len(FOLDER_CHOICE.findall(_code(source))) == 1
    for spec in specs:
        res = default_run.results[spec.name]
        assert res.status in ("passed", "failed", "skipped"), (spec.name, res.error)
        assert all(c.verdict in VERDICTS.WORDS for c in res.checks)
    manifest = read_json(default_run.run_dir / "run.json")
    assert [s["name"] for s in manifest["stages"]] == [s.name for s in specs]
    summary = _text(nbformat.read(default_run.run_dir / "notebooks" / SUMMARY.name, 4))
    assert f"**{len(specs)} stages**" in summary
    assert all(default_run.results[s.name].title in summary for s in specs)


def test_notebooks_on_their_own_write_to_the_lab_folder_that_the_summary_reads(
        tmp_path: Path, monkeypatch, model_cache: Path) -> None:
    """No parameters injected: results land in the lab folder, whose run.json lists the stages
    in the order they ran and the config the notebooks built; the summary run on its own reads
    that folder. The two cheapest stages stand for all (each picks its folder the same way)."""
    lab = tmp_path / "lab"
    monkeypatch.setenv(LAB_ENV, str(lab))  # the kernels inherit it: nothing lands in report/
    specs = discover_stages()[:2]
    assert [s.name for s in specs] == ["environment", "model_loading"]
    for spec in specs:
        _run(spec.path, tmp_path / spec.path.name)  # raises if any cell raises
        res = read_result(lab / "results" / f"{spec.name}.json")
        assert res.status in ("passed", "failed", "skipped"), (spec.name, res.error)
        assert all(c.verdict in VERDICTS.WORDS for c in res.checks)
    manifest = read_json(lab / "run.json")
    assert [s["name"] for s in manifest["stages"]] == [s.name for s in specs]
    assert manifest["config"]["model"] == "gpa" and manifest["config"]["profile"] == "tiny"
    summary = _text(_run(SUMMARY, tmp_path / "summary.ipynb"))
    assert f"**{len(specs)} stages**" in summary
    for spec in specs:
        assert read_result(lab / "results" / f"{spec.name}.json").title in summary
