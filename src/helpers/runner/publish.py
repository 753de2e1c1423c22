"""Publishing: merge a run's executed notebooks into one offline HTML (inputs hidden, banners
stripped, a table of contents, failures at the top) and print that same HTML to an A4 PDF
with headless Chromium."""

from __future__ import annotations

import html as htmllib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import nbformat

from helpers.records import StageResult, read_json, write_json
from helpers.runner.rundir import SUMMARY_NOTEBOOK, load_run

TEMPLATES = Path(__file__).parent / "templates"
REPORT_NAME = "adaptation-report"
_DROP_TAGS = {"parameters", "injected-parameters", "papermill-error-cell-tag"}
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PDF_TIMEOUT_S = 240


def find_chromium() -> str | None:
    """$CHROMIUM if set, else the first Chromium/Chrome on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in _CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing_chromium_reason(pdf_requested: bool = True) -> str:
    if not pdf_requested:
        return "PDF not requested (--no-pdf)"
    return ("no Chromium found (looked for $CHROMIUM and " + ", ".join(_CHROMIUM_NAMES)
            + "): install it with `make setup` as root or `apt-get install chromium "
            "fonts-noto-cjk`, then `make report` again; the HTML is complete without it")


# ---- merge ------------------------------------------------------------------------------

def _md(text: str, **meta: Any) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata.update(meta)
    return cell


def _clean_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """Drop parameter and papermill banner cells and stderr noise; keep every other output."""
    cells = []
    for cell in nb.cells:
        if _DROP_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.output_type == "stream" and o.get("name") == "stderr")]
            if not cell.outputs:
                continue  # inputs are hidden in the report; an empty code cell shows nothing
        cells.append(cell)
    return cells


def _error_box(res: StageResult) -> str:
    err = res.error or {}
    where = f" in cell {err['cell']}" if err.get("cell") is not None else ""
    tb = err.get("traceback") or ""
    pre = f"<details><summary>traceback</summary><pre>{htmllib.escape(tb)}</pre></details>" if tb else ""
    return (f'<div class="report-alert"><b>Stage {htmllib.escape(res.title or res.stage)} raised '
            f'{htmllib.escape(str(err.get("type", "an error")))}{where}</b>: '
            f'{htmllib.escape(str(err.get("message", "")))}{pre}</div>')


def _header(manifest: dict[str, Any], results: dict[str, StageResult]) -> str:
    cfg = manifest.get("config", {})
    git = manifest.get("git", {})
    env = results.get("environment")
    target = env.metrics.get("device", {}).get("selected") if env else None
    target = target or cfg.get("device")
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    toc = "\n".join(
        f'<li><a href="#stage-{n}">{htmllib.escape(r.title or n)}</a> &mdash; {r.status}</li>'
        for n, r in results.items())
    errors = "".join(_error_box(r) for r in results.values() if r.status == "error")
    summary_err = manifest.get("summary_error")
    if summary_err:
        errors += (f'<div class="report-alert"><b>The summary notebook raised '
                   f'{htmllib.escape(summary_err.get("type", ""))}</b>: '
                   f'{htmllib.escape(summary_err.get("message", ""))}</div>')
    if manifest.get("pdf_missing_reason") or manifest.get("pdf_error"):
        why = manifest.get("pdf_error") or manifest.get("pdf_missing_reason")
        errors += f'<div class="report-note"><b>No PDF for this run</b>: {htmllib.escape(why)}</div>'
    return (
        f"# Accelerator adaptation report: {cfg.get('model')} ({cfg.get('profile')}) "
        f"on {target}\n\n"
        f"Run `{manifest.get('run_id')}`, started {manifest.get('started')}, "
        f"commit `{str(git.get('commit', 'unknown'))[:12]}`{dirty}.\n\n"
        f'{errors}\n\n<div class="report-toc"><b>Contents</b><ol>'
        f'<li><a href="#stage-summary">Summary</a></li>{toc}</ol></div>\n'
    )


def merge(run_dir: Path) -> nbformat.NotebookNode:
    """One notebook: header with contents and failures, the summary, then every stage."""
    manifest, results = load_run(run_dir)
    merged = nbformat.v4.new_notebook()
    merged.metadata["title"] = f"Adaptation report {manifest.get('run_id', '')}"
    merged.cells.append(_md(_header(manifest, results)))

    nb_dir = run_dir / "notebooks"
    summary = nb_dir / SUMMARY_NOTEBOOK
    merged.cells.append(_md('<a id="stage-summary"></a>'))
    if summary.is_file():
        merged.cells.extend(_clean_cells(nbformat.read(summary, as_version=4)))
    else:
        merged.cells.append(_md("# Summary\n\nThe summary notebook produced no output; "
                                "see the failures above."))
    by_name = {s["name"]: s["notebook"] for s in manifest.get("stages", [])}
    for name, res in results.items():
        merged.cells.append(_md(f'<div class="report-stage"><a id="stage-{name}"></a></div>'))
        path = nb_dir / by_name.get(name, f"{name}.ipynb")
        if res.status == "error":
            merged.cells.append(_md(_error_box(res)))
        if path.is_file():
            merged.cells.extend(_clean_cells(nbformat.read(path, as_version=4)))
        else:
            merged.cells.append(_md(f"# {res.title or name}\n\nNo executed notebook was saved."))
    return merged


# ---- render -----------------------------------------------------------------------------

def _atomic_write(dest: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the report is meant to be shared
    os.replace(tmp, dest)
    return dest


def render_html(nb: nbformat.NotebookNode, dest: Path) -> Path:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="report", extra_template_basedirs=[str(TEMPLATES)])
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": nb.metadata.get("title", REPORT_NAME)}})
    return _atomic_write(dest, body.encode("utf-8"))


def render_pdf(html_path: Path, dest: Path, chromium: str) -> Path:
    """Print the HTML to PDF with headless Chromium (A4 from the page's @page rule)."""
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        tmp_pdf = Path(profile) / "out.pdf"
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-quic", "--disable-extensions", "--mute-audio",
            f"--user-data-dir={profile}", "--no-pdf-header-footer",
            "--virtual-time-budget=20000", f"--print-to-pdf={tmp_pdf}", html_path.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PDF_TIMEOUT_S)
        if not tmp_pdf.is_file() or tmp_pdf.read_bytes()[:5] != b"%PDF-":
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise RuntimeError(f"{chromium} exited {proc.returncode} without a PDF: "
                               + " | ".join(tail))
        return _atomic_write(dest, tmp_pdf.read_bytes())


def publish(run_dir: Path, chromium: str | None) -> tuple[Path, Path | None, str | None]:
    """Write <run>/adaptation-report.html, then the PDF; a PDF failure keeps the HTML and is
    stated at the top of the HTML (which is then written again)."""
    html_path = run_dir / f"{REPORT_NAME}.html"
    pdf_path = run_dir / f"{REPORT_NAME}.pdf"
    render_html(merge(run_dir), html_path)
    if chromium is None:
        return html_path, None, None
    try:
        render_pdf(html_path, pdf_path, chromium)
        return html_path, pdf_path, None
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        reason = f"PDF rendering failed: {exc}"
        manifest = read_json(run_dir / "run.json")
        manifest["pdf_error"] = reason
        write_json(run_dir / "run.json", manifest)
        render_html(merge(run_dir), html_path)
        return html_path, None, reason
