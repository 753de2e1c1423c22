"""The timing protocol and its statistics: the one implementation every measurement uses.

Protocol (one `measure` call):
  1. warmup runs, each timed on its own and kept apart: the first call (which pays for lazy
     initialisation, kernel selection and any graph compilation) is reported separately and
     never enters the statistics; with `settle` > 0 warmup goes on past `warmup` runs until two
     consecutive runs agree within that relative tolerance (at most `max_warmup` runs; the
     result says whether the figure settled);
  2. timed runs until BOTH `min_iters` runs and `min_seconds` of timed work are reached (or
     `max_iters` / `max_seconds` stop it first, which the result says); with `ci` > 0 they go
     on until the estimate is stable too: the 95% confidence interval of the mean (Student's
     t) within +/- `ci` of it, a relative half-width every result reports; the caps then
     bound only those added runs, never the floor;
  3. every run is bracketed by the device backend's timer (helpers.device: synchronize before
     and after, device events where the backend has them), so no queued device work leaks
     from one sample into the next;
  4. raw samples are kept; statistics in float64 (helpers.records.LatencyStats).
A run made of many equal steps (a decode run of N tokens holds N - 1 decode steps) may hand
`measure` its per-step seconds: the stable-mean rule then reads the CI of the mean step over
every timed step, so one long run can be enough. Its warmup may be a shorter run of the same
work (`warm`), which the result names.

Events inside one run (each decoded token, a task's first audio) are stamped by Clock: the
host clock read after the backend's synchronize, from a synchronized start.

Nothing here knows cpu / cuda / npu: the backend's timer does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from helpers.device import Backend
from helpers.errors import BenchError
from helpers.records import LatencyStats

PERCENTILES = (50, 90, 99)



@dataclass(frozen=True)
class Protocol:
    """How many runs to make. Every field is a stage parameter of the performance notebook."""

    warmup: int = 1  # runs before timing; the first one is reported as first_call_s
    min_iters: int = 5  # at least this many timed runs ...
    min_seconds: float = 1.0  # ... and at least this much timed work (seconds)
    max_iters: int = 1000  # hard stop on the number of timed runs
    max_seconds: float = 120.0  # hard stop on timed work, for slow runs on slow devices
    settle: float = 0.0  # > 0: warm up until two consecutive runs agree within this fraction ...
    max_warmup: int = 10  # ... but at most this many warmup runs
    ci: float = 0.0  # > 0: time on until the mean's 95% CI half-width is within this fraction

    def __post_init__(self) -> None:
        _check_int("warmup", self.warmup, 0)
        _check_int("max_warmup", self.max_warmup, 1)
        _check_number("settle", self.settle)
        if self.settle >= 1:
            raise BenchError(f"settle is a relative tolerance below 1 (e.g. 0.05 = 5%), got "
                             f"{self.settle!r}", "use 0 for a fixed number of warmup runs")
        _check_number("ci", self.ci)
        if self.ci >= 1:
            raise BenchError(f"ci is a relative half-width below 1 (e.g. 0.05 = +/-5%), got "
                             f"{self.ci!r}", "use 0 to stop at min_iters and min_seconds")
        _check_int("min_iters", self.min_iters, 1)
        _check_int("max_iters", self.max_iters, 1)
        _check_number("min_seconds", self.min_seconds)
        _check_number("max_seconds", self.max_seconds)
        if self.max_iters < self.min_iters:
            raise BenchError(f"max_iters ({self.max_iters}) must be >= min_iters "
                             f"({self.min_iters}); raise max_iters or lower min_iters")

    def with_(self, **changes: Any) -> Protocol:
        """A copy with some fields changed (validated again)."""
        return Protocol(**{**asdict(self), **changes})

    def describe(self) -> str:
        stable = (f" and the mean's 95% CI within +/-{self.ci:.0%}" if self.ci > 0 else "")
        return (f"{self.warmup_rule()}, then timed runs until >= "
                f"{self.min_iters} runs and >= {self.min_seconds:g} s of timed work{stable} "
                f"(stop at {self.max_iters} runs or {self.max_seconds:g} s)")


    def warmup_rule(self) -> str:
        if self.settle > 0 and self.warmup > 0:
            return (f"warmup kept apart: at least {self.warmup} run(s), until two consecutive "
                    f"runs agree within {self.settle:.0%} (at most {max(self.max_warmup, self.warmup)})")
        return f"{self.warmup} warmup run(s) kept apart"


def settled(a: float, b: float, tolerance: float) -> bool:
    """Whether two consecutive run times agree: |a - b| <= tolerance x the smaller one."""
    return abs(a - b) <= tolerance * min(a, b)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BenchError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or math.isinf(value):
        raise BenchError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


# ---- statistics -------------------------------------------------------------------------


def stats(samples: Sequence[float], unit: str = "s") -> LatencyStats:
    """count, mean, p50, p90, p99, min, max and sample stdev (ddof=1) of `samples`, in float64."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise BenchError(f"statistics need a non-empty list of numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise BenchError(f"samples contain NaN or Inf: {x.tolist()}; the timer did not run")
    p50, p90, p99 = (float(v) for v in np.percentile(x, PERCENTILES))
    return LatencyStats(
        count=int(x.size), mean=float(x.mean()), p50=p50, p90=p90, p99=p99,
        min=float(x.min()), max=float(x.max()),
        stdev=float(x.std(ddof=1)) if x.size > 1 else None, unit=unit,
    )


def ci_half_width(samples: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t), relative to the
    mean: how stable the estimate is; inf for fewer than two samples or a zero mean."""
    from scipy.special import stdtrit  # Student's t quantile; scipy.stats costs a second to import

    x = np.asarray(samples, dtype=np.float64)
    if x.size < 2 or not x.mean() > 0:
        return math.inf
    half = stdtrit(x.size - 1, 0.975) * x.std(ddof=1) / math.sqrt(x.size)
    return float(half / x.mean())


# ---- one run's events ----------------------------------------------------------------------


class Clock:
    """Seconds from a synchronized start to each event, on the host clock.

    start() and every stamp() synchronize the backend (every device of its placement) first,
    so work queued on a device is counted where it ends. Without a backend (a CPU-only
    caller) nothing is queued and the stamps are plain perf_counter readings.
    """

    def __init__(self, be: Backend | None = None) -> None:
        self.be = be
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def stamp(self) -> float:
        """Seconds since start(), after the device has finished what was queued."""
        self._sync()
        return time.perf_counter() - self._t0

    def _sync(self) -> None:
        if self.be is not None:
            self.be.synchronize()


# ---- measurement ------------------------------------------------------------------------


@dataclass
class Measurement:
    """Result of one protocol run: warmup times apart, raw timed samples, their statistics."""

    name: str
    protocol: Protocol
    timer: str  # how the backend timed each run (device events, perf_counter ...)
    warmup_s: list[float]  # one entry per warmup run; warmup_s[0] is the first call
    samples: list[float]  # timed runs, seconds
    host_samples: list[float]  # the same runs by perf_counter on the host
    stopped_by: str  # "min_iters+min_seconds" | "max_iters" | "max_seconds"
    settled: bool | None = None  # settle warmup: the last two warmup runs agreed (None: not asked)
    warmup_of: str = ""  # what a warmup run did when shorter than a timed one ("" = the same)
    steps: list[float] | None = None  # per-step seconds of every timed run (None: not stepped)
    stats: LatencyStats = field(init=False)
    output: Any = field(default=None, repr=False)  # what the last timed run returned

    def __post_init__(self) -> None:
        self.stats = stats(self.samples)

    @property
    def first_call_s(self) -> float | None:
        return self.warmup_s[0] if self.warmup_s else None

    @property
    def first_full_call_s(self) -> float | None:
        """The first call when it did what a timed run does (None after a shorter warmup)."""
        return None if self.warmup_of else self.first_call_s

    def rate(self, units_per_run: float) -> float:
        """Units per second over the timed runs (total units / total time, not a mean of rates)."""
        return units_per_run / self.stats.mean

    def describe(self) -> str:
        """The protocol as it actually ran, in one sentence for the report."""
        first = (f"first call {self.first_call_s:.4g} s" if self.warmup_s
                 else "no warmup: the first call is among the samples")
        of = f" of {self.warmup_of}" if self.warmup_of and self.warmup_s else ""
        settle = ""
        stable = ", stability not estimated (one run)"
        if math.isfinite(self.ci) and self.steps is not None:
            stable = (f", mean step +/-{self.ci:.1%} (95% CI over {len(self.steps)} timed "
                      "steps; drift between runs is not in it)")
        elif math.isfinite(self.ci):
            stable = f", mean +/-{self.ci:.1%} (95% CI)"
        if self.settled is not None:
            tol = f"{self.protocol.settle:.0%}"
            settle = (f", settled: the last two agreed within {tol}" if self.settled
                      else f", NOT settled within {tol} after {len(self.warmup_s)} runs")
        return (f"{len(self.warmup_s)} warmup run(s){of} kept apart ({first}{settle}); "
                f"{self.stats.count} timed runs, {sum(self.samples):.3g} s of timed work"
                f"{stable}, stopped by {self.stopped_by}; each run: {self.timer}")

    @property
    def ci(self) -> float:
        """Relative half-width of the mean's 95% confidence interval (ci_half_width): of the
        mean step over every timed step where the runs were stepped, else of the mean run."""
        return ci_half_width(self.steps if self.steps is not None else self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "protocol": asdict(self.protocol), "timer": self.timer,
            "first_call_s": self.first_call_s, "warmup_s": self.warmup_s,
            "stats": self.stats.to_dict(), "samples": self.samples,
            "host_samples": self.host_samples, "stopped_by": self.stopped_by,
            "settled": self.settled, "ci_rel_half_width": _finite(self.ci),
            "warmup_of": self.warmup_of, "steps": self.steps, "described": self.describe(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(name=data["name"], protocol=Protocol(**data["protocol"]), timer=data["timer"],
                   warmup_s=list(data["warmup_s"]), samples=list(data["samples"]),
                   host_samples=list(data["host_samples"]), stopped_by=data["stopped_by"],
                   settled=data.get("settled"), warmup_of=data.get("warmup_of", ""),
                   steps=data.get("steps"))


def timed(be: Backend, fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run fn once under the backend's synchronized timer: (result, seconds, host seconds)."""
    with be.timer() as t:
        out = fn()
    return out, float(t.seconds), float(t.host_seconds)


def measure(fn: Callable[[], Any], be: Backend, protocol: Protocol | None = None,
            name: str = "", *, warm: tuple[Callable[[], Any], str] | None = None,
            steps: Callable[[Any], Sequence[float]] | None = None) -> Measurement:
    """Time fn() by the protocol on backend `be` (a helpers.device.Backend).

    warm: (a shorter run of the same work, what it does): the warmup runs call it in place of
    fn. steps(output of one run): that run's per-step seconds; the stable-mean rule then reads
    the mean step's CI over every timed step.
    """
    protocol = protocol or Protocol()
    warm_fn, warmup_of = warm if warm is not None else (fn, "")
    warmed, settled_ = warm_up(warm_fn, be, protocol)
    samples: list[float] = []
    host: list[float] = []
    per_step: list[float] | None = [] if steps is not None else None
    out: Any = None
    total = 0.0
    while True:
        out, seconds, host_seconds = timed(be, fn)
        samples.append(seconds)
        host.append(host_seconds)
        if per_step is not None and steps is not None:
            per_step.extend(float(x) for x in steps(out))
        total += seconds
        stop = _stop_reason(protocol, samples, total, per_step)
        if stop:
            break
    return Measurement(name=name or getattr(fn, "__name__", "run"), protocol=protocol,
                       timer=be.timer_protocol, warmup_s=warmed, samples=samples,
                       host_samples=host, stopped_by=stop, settled=settled_, output=out,
                       warmup_of=warmup_of, steps=per_step)


def warm_up(fn: Callable[[], Any], be: Backend, protocol: Protocol) -> tuple[list[float], bool | None]:
    """The protocol's warmup runs: (their times, whether they settled; None when not asked)."""
    warm: list[float] = []
    for _ in range(protocol.warmup):
        warm.append(timed(be, fn)[1])
    if protocol.settle <= 0 or protocol.warmup == 0:
        return warm, None
    limit = max(protocol.max_warmup, protocol.warmup)
    while True:
        if len(warm) >= 2 and settled(warm[-2], warm[-1], protocol.settle):
            return warm, True
        if len(warm) >= limit:
            return warm, False
        warm.append(timed(be, fn)[1])


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _stop_reason(p: Protocol, samples: Sequence[float], total: float,
                 steps: Sequence[float] | None = None) -> str:
    """Why to stop after these samples ("" = go on). With `ci` the floor (min_iters and
    min_seconds) always holds: the caps bound only the runs added for a stable mean, which is
    the mean step's where the runs are stepped."""
    count = len(samples)
    floor = count >= p.min_iters and total >= p.min_seconds
    if floor and p.ci <= 0:
        return "min_iters+min_seconds"
    if floor and ci_half_width(steps if steps is not None else samples) <= p.ci:
        return "min_iters+min_seconds+ci"
    if p.ci > 0 and not floor:
        return ""
    if count >= p.max_iters:
        return "max_iters"
    if total >= p.max_seconds:
        return "max_seconds"
    return ""


# ---- real-time factor ----------------------------------------------------------------------

RTF_COLUMNS = ("component", "side", "audio s", "audio from", "mean s", "p50 s", "p90 s", "RTF",
               "x real time", "runs", "first call s", "protocol")


def rtf(seconds: float, audio_s: float) -> float:
    """Real-time factor: processing seconds / seconds of audio processed (below 1 is faster
    than real time); NaN when there is no audio or no finite time."""
    return seconds / audio_s if audio_s > 0 and math.isfinite(seconds) else math.nan


def real_time_factor(m: Measurement, audio_s: float, component: str, side: str,
                     audio_from: str = "") -> dict[str, Any]:
    """One real-time-factor row, the same in every stage that reports one.

    RTF (rtf) of the mean processing seconds; "x real time" is its inverse. Both come from the
    protocol's timed runs of `m`.
    """
    if not audio_s > 0:
        raise BenchError(f"{component}: audio duration must be > 0 s, got {audio_s!r}",
                         "time a forward over a non-empty clip")
    mean = m.stats.mean
    return {"component": component, "side": side, "audio s": audio_s, "audio from": audio_from,
            "mean s": mean, "p50 s": m.stats.p50, "p90 s": m.stats.p90, "RTF": rtf(mean, audio_s),
            "x real time": audio_s / mean, "runs": m.stats.count,
            "first call s": m.first_call_s, "protocol": m.describe()}
