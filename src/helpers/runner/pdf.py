"""The PDF: the report's HTML printed to A4 by headless Chromium (page numbers and the run id
in every footer come from the HTML's @page rules)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from helpers.records import write_bytes

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
        return write_bytes(dest, tmp_pdf.read_bytes())
