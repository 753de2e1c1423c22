"""Command line: `python -m helpers.report [KEY=VALUE ...]` runs the whole report.

Keys are the run parameters (case-insensitive): MODEL, MODEL_DIR, PROFILE, DEVICE, DTYPE,
DEVICE_MAP, STAGES, EXTRA_STAGES, OUT, SEED, STRICT, REPORT_LANG (en or zh: the language
of the published report); and stage knobs, STAGE.KNOB=VALUE (stage
by name or number, e.g. performance.new_tokens=32 4.golden=off). `make report MODEL=gpa
DEVICE=npu:0 performance.new_tokens=32` passes its variables through unchanged. Everything is
checked before a run folder is made; a bad value exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from helpers.config import ConfigError, RunConfig
from helpers.errors import ReportError

# jsonschema, which nbformat imports (papermill and the publishing here use it), compiles the
# grammar of rfc3987_syntax at import when that package is installed (jupyterlab's
# dependencies bring it): 1.3 s of CPU for its "iri" format checks. nbformat validates with
# no format checker, so this process never uses them: the import is declined.
_UNUSED_IMPORTS = ("rfc3987_syntax",)


def parse_assignments(items: list[str]) -> dict[str, str]:
    """KEY=VALUE words to a dict; anything else is an error that shows the expected form."""
    raw: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE or STAGE.KNOB=VALUE, got {item!r}; "
                              f"valid keys:\n{RunConfig.help()}")
        raw[key] = value
    return raw


def main(argv: list[str] | None = None) -> int:
    for name in _UNUSED_IMPORTS:
        sys.modules.setdefault(name, None)  # an import of it raises ImportError
    parser = argparse.ArgumentParser(
        prog="python -m helpers.report",
        description="Run the adaptation report stages and publish HTML + PDF.",
        epilog="parameters (KEY=VALUE):\n" + RunConfig.help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--no-pdf", action="store_true", help="build the HTML only")
    parser.add_argument("--list-stages", action="store_true",
                        help="print the stages (with EXTRA_STAGES: theirs too) and where each "
                             "comes from, and exit")
    parser.add_argument("--list-knobs", action="store_true",
                        help="print every stage's knobs with type and default, and exit")
    parser.add_argument("--fit", action="store_true",
                        help="print what each side of this run needs in memory against what "
                             "is free now, load nothing, and exit (1 when a side does not fit)")
    parser.add_argument("--prune", action="store_true",
                        help="remove the run folders under OUT that did not finish "
                             "(interrupted or killed; a run in progress is kept), and exit")
    args = parser.parse_args(argv)

    from helpers.runner import rundir
    from helpers.runner.pipeline import discover_stages, run_pipeline

    try:
        cfg = RunConfig.from_strings(parse_assignments(args.assignments))
        if args.list_stages or args.list_knobs:
            stages = discover_stages(extra_stages=cfg.extra_stages)
            if args.list_stages:
                list_stages(stages)
            if args.list_knobs:
                list_knobs(stages)
            return 0
        if args.fit:
            from helpers.stages import kit

            text = kit.fit_report(cfg.absolute())
            print(text)
            return 1 if "short by" in text else 0
        if args.prune:
            for folder in rundir.prune(cfg.out):
                print(f"removed {folder}")
            return 0
        outcome = run_pipeline(cfg, pdf=not args.no_pdf)
    except ReportError as exc:  # bad input of any kind: one message, nothing run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return outcome.exit_code


def _where(spec: Any) -> str:
    if spec.origin == "built-in":
        return f"built-in  notebooks/{spec.path.name}"
    return f"extra     {spec.path}"


def list_stages(stages: list[Any]) -> None:
    """One line per stage: number, name, where its notebook comes from."""
    for spec in stages:
        print(f"{spec.number:2d} {spec.name:<20} {_where(spec)}")


def list_knobs(stages: list[Any]) -> None:
    """Every stage's knobs (set as STAGE.KNOB=VALUE): name, type, default, help."""
    for spec in stages:
        knobs = spec.knobs()
        print(f"{spec.number:2d} {spec.name}  ({_where(spec).split()[0]}, {spec.path.name})"
              + ("" if knobs else ": no knobs"))
        for k in knobs.values():
            line = f"     {spec.name + '.' + k.name:<38} {k.kind or 'not settable':<12} {k.default_text}"
            print(f"{line}  # {k.help}" if k.help else line)


if __name__ == "__main__":
    sys.exit(main())
