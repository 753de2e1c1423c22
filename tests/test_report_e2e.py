"""The whole pipeline on the embedded default: every stage, the HTML and the PDF."""

import html as htmllib
import re
import shutil
import subprocess
from html.parser import HTMLParser

import nbformat
import pytest

from helpers import i18n, paths
from helpers.records import VERDICTS, read_json, write_json
from helpers.runner import pdf, publish
from helpers.runner.pipeline import discover_stages
from helpers.tables import show_value

pytestmark = pytest.mark.e2e


class _Urls(HTMLParser):
    """Collects URL-bearing attributes of the elements that fetch something."""

    TAGS = {"script", "link", "img", "source", "audio", "video", "iframe", "embed"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.TAGS:
            self.found += [v for k, v in attrs if k in ("src", "href", "srcset") and v]


def _title(nb_path):
    first = next(c for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == "markdown")
    return first.source.splitlines()[0].lstrip("# ").strip()


@pytest.fixture(scope="module")
def run(default_run):
    """The session's default run (tests/conftest.py): every stage, the HTML, the PDF."""
    return default_run


def test_every_stage_ran_without_raising(run):
    assert not [r for r in run.results.values() if r.error], \
        {k: v.error for k, v in run.results.items() if v.error}
    # 0 when every check passed, 1 when one failed (a busy host can fail the timer's 5% check)
    failed = [c.name for r in run.results.values() for c in r.checks if c.passed is False]
    assert run.exit_code == (1 if failed else 0), failed
    for spec in discover_stages():
        data = read_json(run.run_dir / "results" / f"{spec.name}.json")
        assert set(data) >= {"stage", "status", "seconds", "metrics", "checks"}
        assert data["status"] in ("passed", "failed", "skipped")
        for check in data["checks"]:
            assert set(check) >= {"name", "value", "threshold", "passed", "verdict", "source"}
            assert check["source"], check
            # one verdict vocabulary in every stage's results
            assert check["verdict"] == VERDICTS.of(check["passed"]), check


def test_html_has_every_stage_the_verdicts_and_no_network(run):
    html = run.html.read_text()
    for spec in discover_stages():
        assert _title(spec.path) in html
    assert "Verdicts" in html and ("verdict-pass" in html or "verdict-fail" in html)
    assert 'class="report-toc"' in html
    parser = _Urls()
    parser.feed(html)
    remote = [u for u in parser.found if re.match(r"(?i)\s*(https?:)?//", u)]
    assert remote == []
    assert "injected-parameters" not in html and "An Exception was encountered" not in html
    assert (run.run_dir.parent / "latest").resolve() == run.run_dir.resolve()


def test_pdf_is_a4_and_carries_the_stage_titles(run):
    if run.pdf is None:
        pytest.skip("no Chromium on this machine: " + pdf.missing_chromium_reason())
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) not installed")
    info = subprocess.run(["pdfinfo", str(run.pdf)], capture_output=True, text=True).stdout
    pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
    assert pages > 0 and "(A4)" in info
    text = subprocess.run(["pdftotext", "-layout", str(run.pdf), "-"], capture_output=True,
                          text=True).stdout
    flat = " ".join(text.split())
    for spec in discover_stages():
        assert _title(spec.path) in flat


def test_figures_of_the_run_are_copied(run):
    made = sorted(p.name for p in (run.run_dir / "figures").glob("*.png"))
    copied = sorted(p.name for p in (run.run_dir.parent / "figures").glob("*.png"))
    assert made == copied


# ---- the published write-up: first page, formatting, print, languages, markdown ------------


def _pdf_text(pdf) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


def _squash(text: str) -> str:
    return "".join(text.split())


def _need_pdf(run) -> None:
    if run.pdf is None:
        pytest.skip("no Chromium on this machine: " + pdf.missing_chromium_reason())
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) not installed")


def _expected_key_figures(run_dir) -> dict[str, str]:
    """Key figures as the results files hold them, formatted by the one formatter."""
    res = {p.stem: read_json(p) for p in (run_dir / "results").glob("*.json")}

    def check(stage, prefix):
        return next(c["value"] for c in res[stage]["checks"] if c["name"].startswith(prefix))

    perf = res["performance"]["metrics"]["latency"]
    return {
        "cosine": show_value(check("accuracy_parity", "logits: cosine"), 4),
        "top-1": show_value(check("accuracy_parity", "logits: top-1"), 4),
        "tok/s": show_value(check("performance", "decode throughput"), 4),
        "p99": show_value(perf["e2e"]["stats"]["p99"], 4) + " s",
        "ttft": show_value(res["performance"]["metrics"]["ttft_s"], 4) + " s",
        "snr": show_value(next(c["value"] for stage in ("tasks", *res)
                               for c in res.get(stage, {}).get("checks", [])
                               if "SNR" in c["name"]), 4),
    }


def _key_figures_html(html: str) -> str:
    start = html.index("Key figures</caption>")
    return html[start:html.index("</table>", start)]


def test_first_page_holds_the_verdict_and_the_key_figures_of_the_results_files(run):
    expected = _expected_key_figures(run.run_dir)
    assert expected["cosine"] not in ("1", "1.0")  # 0.99997875 keeps its digits
    cells = _key_figures_html(run.html.read_text())
    for name, value in expected.items():
        assert f">{value}<" in cells, (name, value)
    for area in ("accuracy", "performance", "operators", "audio"):
        assert f">{area}<" in cells  # (a figure no stage measures: tests/test_pipeline.py)
    _need_pdf(run)
    page1 = _pdf_text(run.pdf).split("\f")[0]
    assert "Verdict:" in page1 and "Key figures" in page1 and "torch" in page1
    for name, value in expected.items():
        assert value in page1, (name, value)


def test_no_python_repr_in_any_table_cell(run):
    html = run.html.read_text()
    assert re.findall(r"<td\b[^>]*>\s*(None|True|False)\s*</td>", html) == []


def _widest_printed_tables(html: str, n: int = 4) -> list[tuple[int, list[str]]]:
    """The n tables with the most columns outside folded <details> (which print closed):
    (columns, the last column's cell texts)."""
    unfolded = re.sub(r"<details\b.*?</details>", "", html, flags=re.S)
    found = []
    for m in re.finditer(r"<table\b.*?</table>", unfolded, re.S):
        rows = re.findall(r"<tr\b.*?</tr>", m.group(0), re.S)
        head = len(re.findall(r"<th[\s>]", rows[0])) if rows else 0
        last = [re.sub(r"<[^>]+>", "", re.findall(r"<td\b.*?</td>", r, re.S)[-1])
                for r in rows[1:] if "<td" in r]
        found.append((head, [htmllib.unescape(t).strip() for t in last if t.strip()]))
    return sorted(found, key=lambda f: -f[0])[:n]


def test_wide_tables_keep_their_last_column_in_the_pdf_and_every_footer_counts(run):
    _need_pdf(run)
    html = run.html.read_text()
    text = _pdf_text(run.pdf)
    flat = _squash(text)
    widest = _widest_printed_tables(html)
    assert widest and widest[0][0] >= 10
    for columns, last in widest:
        for value in last[:3]:
            assert _squash(value)[:24] in flat, (columns, value)
    assert "Rows that need attention" in html and "scroll" not in text.lower()
    pages = text.split("\f")[:-1]
    for i, page in enumerate(pages, 1):
        assert f"Page {i} of {len(pages)}" in page and run.run_dir.name in _squash(page), i
    assert re.search(r"Table \d+\. Rows that need attention", text)
    assert re.search(r"Figure \d+\.", text)


def test_markdown_export_has_the_same_key_figures_and_its_figures_beside_it(run):
    md_path = run.run_dir / "adaptation-report.md"
    md = md_path.read_text()
    assert md.startswith("# Accelerator adaptation report: gpa (tiny)")
    key = md[md.index("## Key figures"):md.index("## Verdicts")]
    for name, value in _expected_key_figures(run.run_dir).items():
        assert f"| {value} |" in key, (name, value)
    assert "| area | figure | value | threshold | verdict | source |" in key
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert links and all((run.run_dir / link).is_file() for link in links)
    assert "<div" not in md and "<table" not in md  # plain GitHub / Gitee markdown


@pytest.fixture(scope="module")
def zh(run, tmp_path_factory):
    """The same run published in Chinese: its folder copied with REPORT_LANG=zh, the summary
    notebook executed again (the first page is written in the run's language) and the HTML,
    PDF and markdown published from it, as `make report REPORT_LANG=zh` publishes them."""
    import papermill

    dst = tmp_path_factory.mktemp("zh") / run.run_dir.name
    shutil.copytree(run.run_dir, dst, symlinks=True)
    manifest = read_json(dst / "run.json")
    manifest["config"]["report_lang"] = "zh"
    write_json(dst / "run.json", manifest)
    papermill.execute_notebook(str(paths.NOTEBOOKS / "summary.ipynb"),
                               str(dst / "notebooks" / "summary.ipynb"),
                               parameters={"run_dir": str(dst)}, kernel_name="python3",
                               progress_bar=False, cwd=str(paths.NOTEBOOKS))
    return publish.publish(dst, pdf.find_chromium() if run.pdf else None)


def test_zh_report_has_every_heading_and_header_translated(zh):
    html_path, _, _ = zh
    html = html_path.read_text()
    cjk = re.compile(r"[\u3400-\u9fff]")
    heads = [htmllib.unescape(re.sub(r"<[^>]+>", "", h)).strip("¶ \n")
             for h in re.findall(r"<h[1-4]\b[^>]*>(.*?)</h[1-4]>", html, re.S)]
    identifier = re.compile(r"^[a-z0-9_.\-]+$")  # a fixture or component name stays as is
    assert [h for h in heads if not cjk.search(h) and not identifier.match(h)] == []
    headers = {htmllib.unescape(re.sub(r"<[^>]+>", "", h)).strip()
               for h in re.findall(r"<th\b[^>]*>(.*?)</th>", html, re.S)}
    kept = set(i18n.catalog("zh").values())  # entries that keep a unit or a name: "MiB"
    untranslated = sorted(h for h in headers if h and not cjk.search(h) and "_" not in h
                          and h not in kept and i18n.lookup(h, "zh") is None)
    assert untranslated == []  # add an entry to data/i18n/zh.json for each header listed
    assert "加速器适配报告" in html and ">通过<" in html and ">PASS<" not in html


def test_zh_pdf_and_markdown_carry_chinese_and_the_same_figures(run, zh):
    html_path, pdf_path, _ = zh
    md = (html_path.parent / "adaptation-report.md").read_text()
    assert "## 关键数字" in md and "| 方面 | 指标 | 数值 | 阈值 | 结论 | 来源 |" in md
    for value in _expected_key_figures(run.run_dir).values():
        assert f"| {value} |" in md
    _need_pdf(run)
    text = _pdf_text(pdf_path)
    assert "关键数字" in text and "第 1 页" in text and "摘要" in text
    assert _expected_key_figures(run.run_dir)["cosine"] in text.split("\f")[0]
