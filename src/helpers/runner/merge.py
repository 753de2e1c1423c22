"""One notebook of a run: its executed stage notebooks merged (inputs hidden, banners stripped,
failures at the top, the summary's first page, a table of contents, numbered tables and
figures, footers), in the run's REPORT_LANG. helpers.runner.publish renders it."""

from __future__ import annotations

import html as htmllib
import re
from pathlib import Path
from typing import Any

import nbformat

from helpers import i18n
from helpers.records import StageResult, load_run
from helpers.runner.rundir import SUMMARY_NOTEBOOK

FIRST_PAGE_FILE = "first-page.json"  # written by the summary notebook (stages.summary)
_DROP_TAGS = {"parameters", "injected-parameters", "papermill-error-cell-tag"}


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


def report_lang(manifest: dict[str, Any]) -> str:
    """The run's REPORT_LANG (English for a run made before it existed)."""
    lang = str(manifest.get("config", {}).get("report_lang") or i18n.DEFAULT)
    return lang if lang in i18n.LANGS else i18n.DEFAULT


def _error_box(res: StageResult, lang: str = i18n.DEFAULT) -> str:
    err = res.error or {}
    where = i18n.t(" in cell {cell}", lang, cell=err["cell"]) if err.get("cell") is not None else ""
    tb = err.get("traceback") or ""
    pre = f"<details><summary>traceback</summary><pre>{htmllib.escape(tb)}</pre></details>" if tb else ""
    title = htmllib.escape(i18n.t(res.title or res.stage, lang))
    raised = i18n.t("Stage {title} raised {error}{where}", lang, title=title,
                    error=htmllib.escape(str(err.get("type", "an error"))), where=where)
    return (f'<div class="report-alert"><b>{raised}</b>: '
            f'{htmllib.escape(str(err.get("message", "")))}{pre}</div>')


def title(manifest: dict[str, Any], results: dict[str, StageResult]) -> str:
    """The report's title: the model, its profile and the device it ran on."""
    cfg = manifest.get("config", {})
    env = results.get("environment")
    target = env.metrics.get("device", {}).get("selected") if env else None
    return i18n.t("Accelerator adaptation report: {model} ({profile}) on {device}",
                  report_lang(manifest), model=cfg.get("model"), profile=cfg.get("profile"),
                  device=target or cfg.get("device"))


def run_line(manifest: dict[str, Any]) -> str:
    git = manifest.get("git", {})
    lang = report_lang(manifest)
    dirty = i18n.t(" (uncommitted changes)", lang) if git.get("dirty") else ""
    return i18n.t("Run `{run}`, started {started}, commit `{commit}`{dirty}.", lang,
                  run=manifest.get("run_id"), started=manifest.get("started"),
                  commit=str(git.get("commit", "unknown"))[:12], dirty=dirty)


def _header(manifest: dict[str, Any], results: dict[str, StageResult]) -> str:
    lang = report_lang(manifest)
    errors = "".join(_error_box(r, lang) for r in results.values() if r.status == "error")
    summary_err = manifest.get("summary_error")
    if summary_err:
        raised = i18n.t("The summary notebook raised {error}", lang,
                        error=htmllib.escape(summary_err.get("type", "")))
        errors += (f'<div class="report-alert"><b>{raised}</b>: '
                   f'{htmllib.escape(summary_err.get("message", ""))}</div>')
    if manifest.get("pdf_missing_reason") or manifest.get("pdf_error"):
        why = manifest.get("pdf_error") or manifest.get("pdf_missing_reason")
        errors += (f'<div class="report-note"><b>{i18n.t("No PDF for this run", lang)}</b>: '
                   f'{htmllib.escape(why)}</div>')
    return f"# {title(manifest, results)}\n\n{run_line(manifest)}\n\n{errors}\n"


def _toc(manifest: dict[str, Any], results: dict[str, StageResult]) -> str:
    lang = report_lang(manifest)
    items = "\n".join(
        f'<li><a href="#stage-{n}">{htmllib.escape(i18n.t(r.title or n, lang))}</a> &mdash; '
        f'{htmllib.escape(i18n.t(r.status, lang))}</li>' for n, r in results.items())
    return (f'<div class="report-toc"><b>{i18n.t("Contents", lang)}</b><ol>'
            f'<li><a href="#stage-summary">{i18n.t("Summary", lang)}</a></li>{items}</ol></div>\n')


def _translate(cells: list[nbformat.NotebookNode], lang: str) -> list[nbformat.NotebookNode]:
    """Markdown cells block by block; markdown and HTML outputs (table headers, verdict words,
    captions; Python reprs in cells become a dash / yes / no in every language)."""
    for cell in cells:
        if cell.cell_type == "markdown":
            cell.source = i18n.markdown(cell.source, lang)
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "text/markdown" in data:
                data["text/markdown"] = i18n.markdown(_text(data["text/markdown"]), lang)
            if "text/html" in data:
                data["text/html"] = i18n.html(_text(data["text/html"]), lang)
    return cells


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


_HEADING = re.compile(r"^\s*#{1,4}\s+(.+?)\s*$", re.M)
_TABLE_OPEN = re.compile(r"<table\b([^>]*)>")
WIDE_COLUMNS = 7  # a table with more columns prints in a smaller type (class report-wide)
WIDER_COLUMNS = 10


def _plain(text: str) -> str:
    return re.sub(r"<[^>]+>|`|\*\*", "", text).strip()


_TH_OPEN = re.compile(r"<th[\s>]")
LONG_TOKEN = 40  # a cell with an unbroken run this long marks its table wide
_LONG = re.compile(r"<td\b[^>]*>[^<]*?[^\s<]{" + str(LONG_TOKEN) + "}")


def _columns(fragment: str, start: int) -> int:
    """The number of header cells in the first row of the table that starts at `start`."""
    end = fragment.find("</tr>", start)
    return len(_TH_OPEN.findall(fragment, start, end)) if end > 0 else 0


def _long_token(fragment: str, start: int) -> bool:
    end = fragment.find("</table>", start)
    return bool(_LONG.search(fragment, start, end if end > 0 else len(fragment)))


def _number(cells: list[nbformat.NotebookNode], lang: str) -> list[nbformat.NotebookNode]:
    """Number every table and figure of the outputs (`Table 3. <heading>`), the heading being
    the last one above it; mark wide tables so that print shrinks them."""
    heading = ""
    counts = {"table": 0, "figure": 0}

    def caption(kind: str) -> str:
        counts[kind] += 1
        word = (i18n.t("Table {n}", lang, n=counts[kind]) if kind == "table"
                else i18n.t("Figure {n}", lang, n=counts[kind]))
        return f"{word}. {htmllib.escape(heading)}" if heading else word

    def tag(m: re.Match[str], fragment: str) -> str:
        attrs = m.group(1)
        ncols = _columns(fragment, m.end())
        wide = (" report-wider" if ncols >= WIDER_COLUMNS else " report-wide"
                if ncols >= WIDE_COLUMNS or _long_token(fragment, m.end()) else "")
        if wide:
            attrs = (re.sub(r'class="', f'class="{wide.strip()} ', attrs, count=1)
                     if 'class="' in attrs else f'{attrs} class="{wide.strip()}"')
        return (f'<table{attrs}><caption class="report-caption">{caption("table")}'
                f"</caption>")

    for cell in cells:
        if cell.cell_type == "markdown":
            found = _HEADING.findall(cell.source)
            heading = _plain(found[-1]) if found else heading
            continue
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "text/markdown" in data:
                found = _HEADING.findall(_text(data["text/markdown"]))
                heading = _plain(found[-1]) if found else heading
            if "text/html" in data:
                fragment = _text(data["text/html"])
                data["text/html"] = _TABLE_OPEN.sub(lambda m, f=fragment: tag(m, f), fragment)
            outputs.append(out)
            if "image/png" in data:
                outputs.append(nbformat.v4.new_output(
                    "display_data", {"text/html": f'<div class="report-caption">'
                                                  f'{caption("figure")}</div>'}))
        if "outputs" in cell:
            cell.outputs = outputs
    return cells


def merge(run_dir: Path) -> nbformat.NotebookNode:
    """One notebook in the run's language: header with failures, the summary's first page,
    the contents, the rest of the summary, then every stage; tables and figures numbered."""
    manifest, results = load_run(run_dir)
    lang = report_lang(manifest)
    merged = nbformat.v4.new_notebook()
    merged.metadata["title"] = title(manifest, results)
    merged.cells.append(_md(_header(manifest, results)))

    nb_dir = run_dir / "notebooks"
    summary = nb_dir / SUMMARY_NOTEBOOK
    merged.cells.append(_md('<a id="stage-summary"></a>'))
    toc = [_md('<div class="report-page-break"></div>\n\n' + _toc(manifest, results))]
    if summary.is_file():
        cells = _clean_cells(nbformat.read(summary, as_version=4))
        ends = [i for i, c in enumerate(cells)
                if "first-page-end" in c.get("metadata", {}).get("tags", [])]
        cut = ends[0] + 1 if ends else 0
        merged.cells.extend(cells[:cut] + toc + cells[cut:])
    else:
        merged.cells.extend(toc + [_md("# " + i18n.t("Summary", lang) + "\n\n" + i18n.t(
            "The summary notebook produced no output; see the failures above.", lang))])
    by_name = {s["name"]: s["notebook"] for s in manifest.get("stages", [])}
    for name, res in results.items():
        merged.cells.append(_md(f'<div class="report-stage"><a id="stage-{name}"></a></div>'))
        path = nb_dir / by_name.get(name, f"{name}.ipynb")
        if res.status == "error":
            merged.cells.append(_md(_error_box(res, lang)))
        if path.is_file():
            merged.cells.extend(_clean_cells(nbformat.read(path, as_version=4)))
        else:
            merged.cells.append(_md(f"# {i18n.t(res.title or name, lang)}\n\n"
                                    + i18n.t("No executed notebook was saved.", lang)))
    merged.cells = _number(_translate(merged.cells, lang), lang)
    merged.metadata["report_footer"] = footer(
        f"{title(manifest, results)} · {manifest.get('run_id', '')}", lang)
    return merged


def report_cells(nb: nbformat.NotebookNode, lang: str) -> list[nbformat.NotebookNode]:
    """An executed notebook's cells as a report shows them (the compare report's): parameter
    and banner cells dropped, in `lang`, tables and figures numbered."""
    return _number(_translate(_clean_cells(nb), lang), lang)


def footer(left: str, lang: str) -> dict[str, str]:
    """A report's print footer: `left` on the left, 'Page 3 of 42' in `lang` on the right."""
    return {"left": left, "right": _page_counter(lang), "lang": lang}


def css_string(text: str) -> str:
    """Text as a CSS string literal (the footer's content)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _page_counter(lang: str) -> str:
    """CSS content for 'Page 3 of 42' in `lang`: the catalog's words around the counters."""
    parts = re.split(r"(\{page\}|\{pages\})", i18n.t("Page {page} of {pages}", lang))
    css = {"{page}": "counter(page)", "{pages}": "counter(pages)"}
    return " ".join(css.get(p, css_string(p)) for p in parts if p)
