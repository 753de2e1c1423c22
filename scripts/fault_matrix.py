"""The planted-fault matrix: does the report FAIL a broken port, and PASS a correct one, here?

Runs the accuracy-parity and tasks stages (the real pipeline: papermill notebooks, results
files) once with nothing planted and once per fault of helpers.faults, each at every DTYPE
asked for, and tabulates the checks that failed. A fault row should name at least one failed
check; an honest-difference row and the clean row should name none. Run it on the machine
whose PASS you are about to trust (`make fault-matrix`); it writes report/fault-matrix.json
and prints a markdown table.

    .venv/bin/python scripts/fault_matrix.py --dtypes float32,bfloat16 [--model gpa]

Exit codes: 0 every fault caught and every honest difference passed; 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from helpers import faults
from helpers.config import RunConfig
from helpers.records import load_run, write_json
from helpers.runner.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("accuracy_parity", "tasks")


def run_one(model: str, dtype: str, fault: str, out: Path, device: str) -> dict[str, Any]:
    """One pipeline run of the two judging stages; the failed checks by stage."""
    cfg = RunConfig.from_params(model=model, dtype=dtype, device=device, fault=fault,
                                stages=STAGES, out=str(out), strict=False)
    outcome = run_pipeline(cfg, pdf=False)
    _, results = load_run(outcome.run_dir)
    failed = {name: [c.name for c in r.checks if c.passed is False] for name, r in
              results.items() if name in STAGES}
    raised = [name for name, r in results.items() if r.status == "raised"]
    return {"fault": fault or "(none)", "dtype": dtype, "failed": failed, "raised": raised,
            "run_dir": str(outcome.run_dir)}


def verdict(row: dict[str, Any]) -> bool:
    """A fault is caught when a check failed; nothing planted or an honest difference must
    pass every check; a stage that raised is never a pass."""
    caught = any(row["failed"].values())
    fault = faults.FAULTS.get(row["fault"])
    if row["raised"]:
        return False
    return caught if fault is not None and not fault.honest else not caught


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| planted | kind | dtype | magnitude | failed checks | as expected |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        f = faults.FAULTS.get(row["fault"])
        names = "; ".join(f"{stage}: {name}" for stage, names in row["failed"].items()
                          for name in names) or "none"
        lines.append(f"| {row['fault']} | {f.kind if f else 'clean run'} | {row['dtype']} | "
                     f"{f.magnitude if f else '-'} | {names} | "
                     f"{'yes' if verdict(row) else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpa")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--faults", default="", help="comma-separated; empty: all")
    ap.add_argument("--out", default=str(ROOT / "report" / "fault-matrix"))
    args = ap.parse_args(argv)
    names = [n for n in args.faults.split(",") if n] or list(faults.FAULTS)
    for n in names:
        faults.get(n)  # an unknown name fails before any run
    rows = [run_one(args.model, dtype, fault, Path(args.out), args.device)
            for dtype in args.dtypes.split(",") for fault in ["", *names]]
    write_json(Path(args.out) / "fault-matrix.json", {"rows": rows})
    print(markdown(rows))
    return 0 if all(verdict(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
