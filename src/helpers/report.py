"""Command line: `python -m helpers.report [KEY=VALUE ...]` runs the whole report.

Keys are the run parameters (case-insensitive): MODEL, MODEL_DIR, PROFILE, DEVICE, DTYPE,
DEVICE_MAP, STAGES, OUT, SEED, STRICT. `make report MODEL=gpa DEVICE=npu:0` passes its
variables through unchanged.
"""

from __future__ import annotations

import argparse
import sys

from helpers.config import ConfigError, RunConfig


def parse_assignments(items: list[str]) -> dict[str, str]:
    """KEY=VALUE words to a dict; anything else is an error that shows the expected form."""
    raw: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}; valid keys:\n{RunConfig.help()}")
        raw[key] = value
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.report",
        description="Run the adaptation report stages and publish HTML + PDF.",
        epilog="parameters (KEY=VALUE):\n" + RunConfig.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--no-pdf", action="store_true", help="build the HTML only")
    parser.add_argument("--list-stages", action="store_true", help="print the stages and exit")
    args = parser.parse_args(argv)

    from helpers.pipeline import discover_stages, run_pipeline

    if args.list_stages:
        for spec in discover_stages():
            print(f"{spec.number:2d} {spec.name:<20} notebooks/{spec.path.name}")
        return 0
    try:
        cfg = RunConfig.from_strings(parse_assignments(args.assignments))
        outcome = run_pipeline(cfg, pdf=not args.no_pdf)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
