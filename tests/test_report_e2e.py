"""The whole pipeline on the embedded default: every stage, the HTML and the PDF."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import nbformat
import pytest

from helpers.config import RunConfig
from helpers.records import VERDICTS, read_json
from helpers.runner import publish
from helpers.runner.pipeline import discover_stages, run_pipeline

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
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    want_pdf = bool(publish.find_chromium())
    if os.environ.get("REQUIRE_PDF") and not want_pdf:
        pytest.fail("REQUIRE_PDF is set but no Chromium was found: `make setup` installs it")
    outcome = run_pipeline(RunConfig.from_params(out=str(out)), figures_dir=out / "figures",
                           pdf=want_pdf)
    return outcome


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
        pytest.skip("no Chromium on this machine: " + publish.missing_chromium_reason())
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
