"""Where the project's folders are, found from this package's location (editable install)."""

from __future__ import annotations

from pathlib import Path


def _find_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "notebooks").is_dir():
            return parent
    raise RuntimeError(
        f"cannot find the project root above {here}: install the package in editable mode "
        "from a checkout (`make setup`, or `pip install -e .`)"
    )


ROOT: Path = _find_root()
NOTEBOOKS: Path = ROOT / "notebooks"
DATA: Path = ROOT / "data"
FIGURES: Path = ROOT / "figures"
REPORT: Path = ROOT / "report"
TOKENIZER: Path = DATA / "tokenizer"  # the tiny byte-level BPE (scripts/build_tokenizer.py)
