"""Comparing runs: `make compare A=<run> B=<run>` (C=..., or RUNS="a b c" for a trend) reads
two or more finished run folders of one model and publishes, in a folder of its own, what
differs between them, every check side by side, every headline metric with its change,
performance ratios with ModelZoo's rating, and the two devices against each other.

Modules: runs (opening and checking run folders), identity (one model, the same weights and
inputs), sections (the tables), build (one comparison, shown by notebooks/compare/compare.ipynb),
publish (the folder: HTML, PDF, markdown), cli (`python -m helpers.compare`).
"""

from helpers.compare.build import COMPARISON_FILE, Comparison, build, load
from helpers.compare.runs import RunFolder, open_run, open_runs

__all__ = ["COMPARISON_FILE", "Comparison", "RunFolder", "build", "load", "open_run",
           "open_runs"]
