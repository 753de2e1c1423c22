"""Typed result records and the one JSON reader/writer; the only thing that passes between stages.

Contract of report/<run-id>/results/<stage>.json:
  stage, title, status (passed | failed | error | skipped), seconds, metrics (object),
  checks (list of {name, value, threshold, passed, verdict, source, detail}; verdict is
  PASS / FAIL / info), error (object or null).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("passed", "failed", "error", "skipped")


class Verdicts:
    """The one verdict vocabulary: PASS and FAIL for judged checks, info for measured rows."""

    PASS = "PASS"
    FAIL = "FAIL"
    INFO = "info"
    WORDS = (PASS, FAIL, INFO)
    _CSS = {PASS: "verdict-pass", FAIL: "verdict-fail", INFO: "verdict-info"}

    def of(self, passed: bool | None) -> str:
        """True -> PASS, False -> FAIL, None (measured, not judged) -> info."""
        return self.INFO if passed is None else self.PASS if passed else self.FAIL

    def css(self, word: str) -> str:
        """The report's CSS class for a verdict word ("" for anything else)."""
        return self._CSS.get(word, "")


VERDICTS = Verdicts()
_OPS = {
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "==": lambda v, t: v == t,
}


@dataclass(frozen=True)
class Check:
    """One verdict: a measured value held against a threshold that names its source.

    passed is None for an informational row (measured, not judged).
    """

    name: str
    value: Any
    threshold: str
    passed: bool | None
    source: str
    detail: str = ""

    @classmethod
    def judge(cls, name: str, value: float | int | bool, op: str, limit: Any, source: str,
              detail: str = "", unit: str = "") -> Check:
        """Compare value `op` limit; a NaN or missing value never passes."""
        if op not in _OPS:
            raise ValueError(f"unknown comparison {op!r}; use one of {', '.join(_OPS)}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            passed = False
        else:
            passed = bool(_OPS[op](value, limit))
        return cls(name, value, f"{op} {limit}{unit}", passed, source, detail)

    @property
    def verdict(self) -> str:
        """PASS, FAIL or info (see Verdicts)."""
        return VERDICTS.of(self.passed)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of timing samples (float64): count, mean, p50, p90, p99, min, max, stdev.

    Percentiles interpolate linearly between order statistics (numpy's default); stdev is the
    sample standard deviation (ddof=1), None with fewer than two samples. Built by
    helpers.bench.stats; here only the record and its JSON round trip.
    """

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    stdev: float | None
    unit: str = "s"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class StageResult:
    stage: str
    status: str
    seconds: float
    title: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: dict[str, Any] | None = None
    figures: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)  # the stage's own cost (helpers.profiling)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        fields = Check.__dataclass_fields__
        self.checks = [c if isinstance(c, Check) else Check(**{k: v for k, v in c.items()
                                                              if k in fields})
                       for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; each check also carries its verdict word (PASS / FAIL / info)."""
        out = asdict(self)
        for check, raw in zip(self.checks, out["checks"], strict=True):
            raw["verdict"] = check.verdict
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        missing = {"stage", "status", "seconds"} - set(data)
        if missing:
            raise ValueError(f"stage result lacks {', '.join(sorted(missing))}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def status_from_checks(checks: list[Check]) -> str:
    return "failed" if any(c.passed is False for c in checks) else "passed"


def _default(obj: Any) -> Any:
    # numpy / torch scalars and paths reach here; keep them as plain JSON values
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a file atomically (temp file + rename): a reader never sees half a file. The one
    writer of every file a run leaves (results, run.json, the HTML, PDF and markdown)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (write_bytes)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=_default) + "\n"
    return write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_result(results_dir: str | Path, result: StageResult) -> Path:
    return write_json(Path(results_dir) / f"{result.stage}.json", result.to_dict())


def read_result(path: str | Path) -> StageResult:
    return StageResult.from_dict(read_json(path))


def read_results(results_dir: str | Path) -> dict[str, StageResult]:
    """All stage results of a run, keyed by stage name."""
    out: dict[str, StageResult] = {}
    for p in sorted(Path(results_dir).glob("*.json")):
        res = read_result(p)
        out[res.stage] = res
    return out


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, StageResult]]:
    """The run manifest and its stage results, in the manifest's stage order."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "run.json")
    found = read_results(run_dir / "results")
    order = [s["name"] for s in manifest.get("stages", [])]
    ordered = {n: found[n] for n in order if n in found}
    ordered.update({n: r for n, r in found.items() if n not in ordered})
    return manifest, ordered


def metric_at(results: dict[str, Any], stage: str, path: str) -> Any:
    """A value of results/<stage>.json's metrics (`results`: stage -> StageResult) by its
    '/'-separated path; None if absent."""
    res = results.get(stage)
    value: Any = res.metrics if res else None
    for key in path.split("/"):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value
