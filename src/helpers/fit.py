"""Will it fit? `python -m helpers.fit MODEL=... PROFILE=... DTYPE=...` (make fit): what each
side of a run needs in memory against what is free now, before anything is loaded. Takes the
run parameters `make report` takes; exits 1 when a side does not fit."""

from __future__ import annotations

import sys

from helpers.config import RunConfig
from helpers.errors import ReportError


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    try:
        raw = dict(w.split("=", 1) for w in words)
    except ValueError:
        print(f"error: parameters are NAME=VALUE words, got {words}", file=sys.stderr)
        return 2
    try:
        from helpers.stages import kit

        text = kit.fit_report(RunConfig.from_strings(raw).absolute())
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 1 if "does not fit" in text or "short by" in text else 0


if __name__ == "__main__":
    sys.exit(main())
