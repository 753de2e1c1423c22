"""The markdown export: a run's first page and key tables as adaptation-report.md for a
model-zoo README (GitHub and Gitee flavour; figures as the files beside it)."""

from __future__ import annotations

import html as htmllib
import re
from pathlib import Path
from typing import Any

from helpers import i18n
from helpers.records import load_run, read_json, write_bytes
from helpers.runner import merge


def _md_cell(text: str, lang: str) -> str:
    return i18n.cell(str(text), lang).replace("|", "\\|").replace("\n", " ").strip() or "-"


def md_table(columns: list[str], rows: list[list[Any]], lang: str) -> str:
    """A GitHub / Gitee pipe table: headers and verdict words in `lang`, cells as they are."""
    head = "| " + " | ".join(i18n.t(c, lang).replace("|", "\\|") for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_md_cell(v, lang) for v in row) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _md_plain(html_text: str) -> str:
    """A note written for HTML as markdown: <b> as bold, other tags dropped."""
    text = re.sub(r"</?b>", "**", html_text)
    return htmllib.unescape(re.sub(r"<[^>]+>", "", text))


def markdown_report(run_dir: Path) -> str:
    """The first page and the key tables of a run as markdown (GitHub and Gitee flavour):
    title, run line, verdict, environment table, caveats, verdict per stage, key figures,
    every check grouped by stage, and the figures, linked as figures/<name>.png."""
    manifest, results = load_run(run_dir)
    lang = merge.report_lang(manifest)
    out = [f"# {merge.title(manifest, results)}", "", merge.run_line(manifest), ""]
    page_file = run_dir / merge.FIRST_PAGE_FILE
    page = read_json(page_file) if page_file.is_file() else None
    if page is None:
        out += [i18n.t("The summary produced no first page; the HTML report shows what ran.",
                       lang), ""]
        page = {"stack": [], "notes": [], "groups": []}
    else:
        out += [page["verdict"], ""]
    if page["stack"]:
        out += [f"## {i18n.t('Environment', lang)}", "",
                md_table([i18n.t("item", lang), i18n.t("value", lang)], page["stack"], lang), ""]
    for note in page["notes"]:
        out += [f"> {_md_plain(note)}", ""]
    for key, heading in (("stages", i18n.t("Verdict per stage", lang)),
                         ("figures", i18n.t("Key figures", lang))):
        if key in page:
            out += [f"## {heading}", "",
                    md_table(page[key]["columns"], page[key]["rows"], lang), ""]
    if page["groups"]:
        out += [f"## {i18n.t('Verdicts', lang)}", ""]
        for group in page["groups"]:
            out += [f"### {group['title']}", "", md_table(group["columns"], group["rows"], lang), ""]
    figures = [(r, f) for r in results.values() for f in r.figures
               if (run_dir / "figures" / f).is_file()]
    if figures:
        out += [f"## {i18n.t('Figures', lang)}", ""]
        for n, (res, name) in enumerate(figures, 1):
            what = Path(name).stem.removeprefix(f"{res.stage}-").replace("-", " ")
            cap = i18n.t("Figure {n}", lang, n=n) + f". {i18n.t(res.title or res.stage, lang)}: {what}"
            out += [f"![{cap}](figures/{name})", "", f"*{cap}*", ""]
    return "\n".join(out).rstrip() + "\n"


def render_markdown(run_dir: Path, dest: Path) -> Path:
    return write_bytes(dest, markdown_report(run_dir).encode("utf-8"))
