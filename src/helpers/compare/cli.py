"""`python -m helpers.compare A=<run> B=<run> [C=<run> ...] [RUNS="a b c"] [OUT=folder]
[REPORT_LANG=zh] [--no-pdf]`, which `make compare` calls: the comparison report of two or more
finished runs of one model, in its own folder (report/compare-<A>-vs-<B> unless OUT names
one). Exit 0 when published, 2 for bad input (a half-written run folder, runs of other
weights or models) or a compare notebook that raised."""

from __future__ import annotations

import argparse
import string
import sys

from helpers.errors import ConfigError, ReportError

KEYS = ("RUNS", "OUT", "REPORT_LANG")


def assignments(items: list[str]) -> dict[str, str]:
    """KEY=VALUE words to a dict; anything else is an error that shows the expected form."""
    raw = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}",
                              "make compare A=report/<run-a> B=report/<run-b>")
        raw[key] = value
    return raw


def folders(raw: dict[str, str]) -> list[str]:
    """The run folders: RUNS (split on whitespace), else A, B, C ... in letter order."""
    unknown = [k for k in raw if k.upper() not in KEYS and not (
        len(k) == 1 and k.upper() in string.ascii_uppercase)]
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for a comparison",
                          "give A=<run> B=<run> (C=... for more), or RUNS=\"a b c\"; OUT=folder "
                          "and REPORT_LANG=en|zh are optional")
    upper = {k.upper(): v for k, v in raw.items()}
    lettered = [upper[c] for c in string.ascii_uppercase if upper.get(c)]
    if upper.get("RUNS") and lettered:
        raise ConfigError("both RUNS and A=/B=... given", "give the runs one way")
    return upper["RUNS"].split() if upper.get("RUNS") else lettered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.compare",
                                     description="Compare two or more finished runs of one model.")
    parser.add_argument("assignments", nargs="*", metavar="KEY=VALUE",
                        help="A=<run folder> B=<run folder> [C=...], or RUNS=\"a b c\"; "
                             "OUT=<folder>, REPORT_LANG=en|zh")
    parser.add_argument("--no-pdf", action="store_true", help="build the HTML and markdown only")
    args = parser.parse_args(argv)

    from helpers.compare.publish import compare_runs

    try:
        raw = assignments(args.assignments)
        upper = {k.upper(): v for k, v in raw.items()}
        outcome = compare_runs(folders(raw), upper.get("OUT", ""),
                               upper.get("REPORT_LANG") or "en", pdf=not args.no_pdf)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"comparison: {outcome.html}")
    print(f"markdown:   {outcome.markdown}")
    print(f"pdf:        {outcome.pdf or 'not produced: ' + outcome.pdf_note}")
    if outcome.error:
        print(f"the compare notebook raised {outcome.error['type']}: {outcome.error['message']}",
              file=sys.stderr)
        return 2
    return 0
