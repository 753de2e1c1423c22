"""The one table formatter of the report: every cell through show_value (counts with
separators, floats with the digits that carry their meaning, yes / no, a dash for missing),
tables without an index, long ones folded, and the one checks table with coloured verdicts."""

from __future__ import annotations

import math
import numbers
import re
from html import escape
from typing import Any

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from helpers.records import VERDICTS, Check

# A report shows values whole: no "..." in table cells, no row/column elision.
pd.set_option("display.max_colwidth", None)
pd.set_option("display.max_rows", 500)
pd.set_option("display.max_columns", 50)

CHECK_COLUMNS = ["check", "verdict", "value", "threshold", "source", "detail"]


def number(value: float, digits: int = 4) -> str:
    """A float with the digits that carry its meaning: at least `digits` significant ones,
    more when fewer would round it to a whole number it is not (a cosine of 0.99997875 shows
    as 0.99998, never 1); scientific notation below 1e-3 and from 1e6 up (1.812e-05)."""
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    if v == 0:
        return "0"
    d = max(1, digits)
    if v != round(v):
        while d < 15 and float(f"{v:.{d}g}") == round(v):
            d += 1
    a = abs(v)
    if a < 1e-3 or a >= 1e6:
        mantissa, exp = f"{v:.{d - 1}e}".split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{exp}"
    decimals = max(0, d - 1 - math.floor(math.log10(a)))
    text = f"{v:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def show_value(value: Any, digits: int = 6) -> str:
    """The one formatter of table cells and values: counts with separators, floats by
    number() (at least `digits` significant digits), booleans as yes / no, a missing value
    as a dash, lists and mappings item by item; never a Python repr."""
    if value is None or value is pd.NA:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return number(float(value), digits)
    if isinstance(value, (list, tuple)):
        return ", ".join(show_value(v, digits) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {show_value(v, digits)}" for k, v in value.items()) or "-"
    return str(value)


_SIG = re.compile(r"^\{:\.(\d+)g\}$")


class ReportStyler(Styler):
    """A Styler whose cells go through show_value; a caller's `"{:.Ng}"` format asks for N
    significant digits and gets them from the same formatter (so no table rounds a cosine
    of 0.99997875 to 1)."""

    def format(self, formatter: Any = None, subset: Any = None, na_rep: str | None = None,
               **kw: Any) -> ReportStyler:
        if isinstance(formatter, str) and _SIG.match(formatter):
            digits = int(_SIG.match(formatter).group(1))
            blank = "-" if na_rep is None else na_rep

            def formatter(v: Any, digits: int = digits, blank: str = blank) -> str:
                missing = v is None or (isinstance(v, float) and math.isnan(v))
                return blank if missing else show_value(v, digits)

        return super().format(formatter, subset=subset, na_rep=na_rep, **kw)


def table(df: pd.DataFrame, precision: int = 4) -> Any:
    """A DataFrame as the report shows it: no index column, every cell through show_value
    (floats with at least `precision` significant digits)."""
    return ReportStyler(df).hide(axis="index").format(lambda v: show_value(v, precision))


def collapsible(df: pd.DataFrame, summary: str, precision: int = 4) -> Any:
    """A long table folded under a one-line summary: open on screen with a click; the PDF
    prints the summary line only (the full rows stay in the results JSON / CSV)."""
    from IPython.display import HTML

    inner = table(df, precision).to_html()
    return HTML(f'<details class="report-details"><summary>{escape(summary)} '
                f"({len(df)} rows; click to open)</summary>{inner}</details>")


def checks_frame(checks: list[Check]) -> pd.DataFrame:
    """The one checks table of the report: verdict (PASS / FAIL / info), value, threshold,
    source and detail, in the order the checks were made."""
    return pd.DataFrame([{"check": c.name, "verdict": c.verdict, "value": show_value(c.value),
                          "threshold": c.threshold or "-", "source": c.source,
                          "detail": c.detail} for c in checks], columns=CHECK_COLUMNS)


def checks_table(checks: list[Check]) -> Any:
    """checks_frame styled, with each verdict coloured through the report's CSS classes."""
    frame = checks_frame(checks)
    return verdict_style(table(frame), frame)


def verdict_style(styler: Any, frame: pd.DataFrame, column: str = "verdict") -> Any:
    """Colour a verdict column (PASS / FAIL / info) through the report's CSS classes."""
    if column not in frame.columns:
        return styler
    classes = pd.DataFrame([[VERDICTS.css(v) if col == column else "" for col in frame.columns]
                            for v in frame[column]], index=frame.index, columns=frame.columns)
    return styler.set_td_classes(classes)
