"""One formatter for every table cell: digits that carry the meaning, readable notation for
very small and very large values, never a Python repr."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from helpers import tables


def test_a_value_near_a_whole_number_keeps_the_digits_that_tell_them_apart() -> None:
    assert tables.number(0.99997875, 4) == "0.99998"  # a cosine, never "1"
    assert tables.number(0.9999999, 4) == "0.9999999"
    assert tables.number(2.0000001, 4) == "2.0000001"
    assert tables.number(1.0, 4) == "1" and tables.number(100.0, 4) == "100"
    assert tables.number(0.6519514, 4) == "0.652" and tables.number(398.34388, 4) == "398.3"


def test_very_small_and_very_large_values_use_scientific_notation() -> None:
    assert tables.number(1.812e-05, 4) == "1.812e-05"
    assert tables.number(5.565478e-07, 4) == "5.565e-07"
    assert tables.number(-0.0001234, 4) == "-1.234e-04"
    assert tables.number(12345678.9, 4) == "1.235e+07"
    assert tables.number(0.004371, 4) == "0.004371" and tables.number(12345.6, 4) == "12,346"
    assert tables.number(0.0, 4) == "0" and tables.number(math.inf) == "inf"


def test_show_value_never_prints_a_repr() -> None:
    values = [None, True, False, np.bool_(True), np.int64(7), np.float32(0.5), [1, 2.5],
              {"a": None}, pd.NA]
    assert [tables.show_value(v) for v in values] == ["-", "yes", "no", "yes", "7", "0.5",
                                                   "1, 2.5", "a: -", "-"]


def test_every_table_cell_and_a_callers_significant_digits_go_through_it() -> None:
    df = pd.DataFrame({"cosine": [0.99997875, math.nan], "ok": [True, None], "n": [1234, 5]})
    html = tables.table(df).to_html()
    assert ">0.99998<" in html and ">yes<" in html and ">-<" in html and ">1,234<" in html
    assert ">True<" not in html and ">None<" not in html
    # a stage asking for 4 significant digits ("{:.4g}" would print 1) gets the same formatter
    asked = tables.table(df).format("{:.4g}", subset=["cosine"], na_rep="").to_html()
    assert ">0.99998<" in asked and ">1<" not in asked
