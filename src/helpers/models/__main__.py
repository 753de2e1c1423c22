"""Describe a recipe without allocating: `python -m helpers.models describe NAME --profile P`.

    python -m helpers.models list
    python -m helpers.models describe covo-audio-chat --profile full-shape
    python -m helpers.models describe hf --profile real --model-dir /path/to/model --json

Components, parameter counts and bytes per dtype, all counted on the meta device.
"""

from __future__ import annotations

import argparse
import json
import sys

from helpers import models
from helpers.grammar import RUN_DTYPES
from helpers.models.base import human, total_row
from helpers.models.weights import ModelLoadError


def table(rows: list[dict]) -> str:
    """Fixed-width text table: component, class, parameters, GB per dtype."""
    head = ["component", "class", "parameters", *(f"GB {dt}" for dt in RUN_DTYPES)]
    body = [[r["component"], r["class"], f"{r['parameters']:,} ({human(r['parameters'])})",
             *(f"{r[f'bytes_{dt}'] / 1e9:.3f}" for dt in RUN_DTYPES)] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.models", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the registered recipes")
    d = sub.add_parser("describe", help="components, parameters, bytes per dtype (meta device)")
    d.add_argument("name", help=f"recipe: {', '.join(models.names())}")
    d.add_argument("--profile", default="",
                   help="tiny, full-shape or real (default: full-shape, or real for hf)")
    d.add_argument("--model-dir", default="", help="model directory for --profile real")
    d.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for name in models.names():
            r = models.get(name)
            print(f"{name:<16} {r.title}  (profiles: {', '.join(r.profiles)})")
        return 0
    try:
        recipe = models.get(args.name)
        profile = args.profile or ("full-shape" if "full-shape" in recipe.profiles else "real")
        rows = recipe.describe(profile, args.model_dir)
    except (KeyError, ModelLoadError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    rows.append(total_row(rows))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{recipe.title}, profile {profile} (counted on the meta device, nothing allocated)")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
