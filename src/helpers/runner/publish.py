"""Publishing a run: the merged notebook (helpers.runner.merge) as one offline HTML, that HTML
as a PDF (helpers.runner.pdf), and the markdown export (helpers.runner.markdown)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat

from helpers import i18n
from helpers.profiling import Profile
from helpers.records import read_json, write_bytes, write_json
from helpers.runner.markdown import render_markdown
from helpers.runner.merge import css_string, merge
from helpers.runner.pdf import render_pdf

TEMPLATES = Path(__file__).parent / "templates"
REPORT_NAME = "adaptation-report"


def render_html(nb: nbformat.NotebookNode, dest: Path) -> Path:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="report", extra_template_basedirs=[str(TEMPLATES)])
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.embed_images = True
    footer = nb.metadata.get("report_footer", {})
    resources = {"metadata": {"name": nb.metadata.get("title", REPORT_NAME)},
                 "report_footer_left": css_string(footer.get("left", "")),
                 "report_footer_right": footer.get("right", 'counter(page) " / " counter(pages)'),
                 "report_lang": footer.get("lang", i18n.DEFAULT)}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return write_bytes(dest, body.encode("utf-8"))


def publish(run_dir: Path, chromium: str | None,
            profile: Profile | None = None) -> tuple[Path, Path | None, str | None]:
    """Write <run>/adaptation-report.html, then the PDF; a PDF failure keeps the HTML and is
    stated at the top of the HTML (which is then written again). `profile` receives the cost
    of each step."""
    prof = profile or Profile()
    html_path = run_dir / f"{REPORT_NAME}.html"
    pdf_path = run_dir / f"{REPORT_NAME}.pdf"
    with prof.part("merge"):
        merged = merge(run_dir)
    with prof.part("HTML"):
        render_html(merged, html_path)
    with prof.part("markdown"):
        render_markdown(run_dir, run_dir / f"{REPORT_NAME}.md")
    if chromium is None:
        return html_path, None, None
    try:
        with prof.part("PDF (Chromium)"):
            render_pdf(html_path, pdf_path, chromium)
        return html_path, pdf_path, None
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        reason = f"PDF rendering failed: {exc}"
        manifest = read_json(run_dir / "run.json")
        manifest["pdf_error"] = reason
        write_json(run_dir / "run.json", manifest)
        render_html(merge(run_dir), html_path)
        return html_path, None, reason
