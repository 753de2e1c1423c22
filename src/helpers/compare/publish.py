"""Publishing a comparison in a folder of its own: the compare notebook executed by papermill
(as the stages are), then the run report's own publishing path: one offline HTML
(runner.publish.render_html), its PDF (runner.pdf) and a markdown export (runner.markdown's
tables) read from comparison.json."""

from __future__ import annotations

import html as htmllib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from helpers import i18n, paths
from helpers.compare.build import COMPARISON_FILE, load
from helpers.compare.runs import RunFolder
from helpers.records import read_json, write_bytes
from helpers.runner import merge
from helpers.runner.markdown import md_table
from helpers.runner.pdf import find_chromium, missing_chromium_reason, render_pdf
from helpers.runner.pipeline import execute_notebook
from helpers.runner.publish import render_html
from helpers.runner.rundir import check_out

NOTEBOOK = paths.NOTEBOOKS / "compare" / "compare.ipynb"
REPORT_NAME = "comparison-report"
MAX_NAMED = 3  # a default folder names up to this many run ids, else the first and the last


@dataclass
class CompareOutcome:
    folder: Path
    html: Path
    markdown: Path
    pdf: Path | None
    pdf_note: str  # why there is no PDF ('' when there is one)
    error: dict[str, Any] | None  # the notebook's error, when it raised


def default_folder(runs: list[RunFolder], out: str | Path = "") -> Path:
    """OUT when given, else report/compare-<A>-vs-<B>[-vs-<C>] (or <first>-to-<last>-<n>-runs)."""
    if out:
        return Path(out).expanduser().resolve()
    ids = [r.run_id for r in runs]
    name = ("-vs-".join(ids) if len(ids) <= MAX_NAMED
            else f"{ids[0]}-to-{ids[-1]}-{len(ids)}-runs")
    return paths.REPORT / f"compare-{name}"


def _execute(folders: list[str], dest: Path, lang: str) -> dict[str, Any] | None:
    """Run the compare notebook into dest/compare.ipynb as the runner runs a stage; None, or
    the error it raised (cell, type, message)."""
    params = {"runs": folders, "out_dir": str(dest), "report_lang": lang}
    return execute_notebook(NOTEBOOK, dest / NOTEBOOK.name, params, NOTEBOOK.parent)


def _merged(dest: Path, lang: str, error: dict[str, Any] | None) -> nbformat.NotebookNode:
    data = read_json(dest / COMPARISON_FILE) if (dest / COMPARISON_FILE).is_file() else {}
    title = data.get("title") or i18n.t("Comparison of runs", lang)
    nb = nbformat.v4.new_notebook()
    nb.metadata["title"] = title
    if error:
        raised = i18n.t("The compare notebook raised {error}", lang,
                        error=htmllib.escape(str(error["type"])))
        nb.cells.append(nbformat.v4.new_markdown_cell(
            f'<div class="report-alert"><b>{raised}</b>: '
            f'{htmllib.escape(str(error["message"]))}</div>'))
    executed = dest / NOTEBOOK.name
    if executed.is_file():  # absent when the kernel never started
        nb.cells.extend(merge.report_cells(nbformat.read(executed, as_version=4), lang))
    nb.metadata["report_footer"] = merge.footer(title, lang)
    return nb


def markdown_report(dest: Path) -> str:
    """comparison.json as GitHub / Gitee markdown: title, headline, every table with its notes."""
    data = read_json(dest / COMPARISON_FILE)
    lang = data["lang"]
    out = [f"# {data['title']}", "", data["summary"], ""]
    out += [f"> {i18n.markdown(note, lang)}" for note in data["notes"]]
    for tab in data["tables"]:
        out += ["", f"## {i18n.t(tab['title'], lang)}", ""]
        out += [i18n.markdown(note, lang) + "\n" for note in tab["notes"]]
        if tab["rows"]:
            out.append(md_table(tab["columns"], tab["rows"], lang))
    return "\n".join(out).rstrip() + "\n"


def compare_runs(folders: list[str], out: str | Path = "", report_lang: str = i18n.DEFAULT,
                 pdf: bool = True) -> CompareOutcome:
    """Check the runs (before any folder is made), execute the compare notebook into its
    folder, and publish HTML, markdown and (with Chromium) PDF there."""
    lang = i18n.check(report_lang)
    runs, _ = load(folders)
    dest = check_out(default_folder(runs, out))
    error = _execute([str(r.dir) for r in runs], dest, lang)
    html = render_html(_merged(dest, lang, error), dest / f"{REPORT_NAME}.html")
    md = dest / f"{REPORT_NAME}.md"
    if (dest / COMPARISON_FILE).is_file():
        write_bytes(md, markdown_report(dest).encode("utf-8"))
    chromium = find_chromium() if pdf else None
    if chromium is None:
        return CompareOutcome(dest, html, md, None, missing_chromium_reason(pdf), error)
    try:
        pdf_path = render_pdf(html, dest / f"{REPORT_NAME}.pdf", chromium)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return CompareOutcome(dest, html, md, None, f"PDF rendering failed: {exc}", error)
    return CompareOutcome(dest, html, md, pdf_path, "", error)
